"""Screening bench (issue 12): trainings and device measurements spent with and without cost-model
screening, for the same front hypervolume.

Three set-ups, each a real search with one local ONNX Runtime agent (gRPC on loopback, the
profiler on for the screening run):

- default: digits, the MENNDL-style space, NSGA-II, real training;
- ``--dataset cifar10:PATH --subset N [--epochs E --time-budget S]``: the same on a CIFAR-10
  subset (issue 7's benchmark data, at a scale this CPU can train twice);
- ``--space nb201``: NAS-Bench-201, accuracy published (the shared table's ``c10_test_200ep``,
  no training: "trainings" then count table look-ups, free), latency measured here on the
  exported network. A table-backed *agent* would not do: it answers a latency by architecture
  key and runs no model, so it gives no per-layer profile to fit the layer-wise model on, and
  per-layer timings from here would not belong to the table's device.

Both runs: objectives accuracy (max) and latency_ms (min), one constraint ``latency_ms <= B``.
B is ``--bound``, or else the median latency of ``--probe`` untrained networks sampled from the
space and timed here in-process with ONNX Runtime (1 thread; ``sess.run`` from Python, about 3x
the agent's timed loop on the tiny digits networks, so this default binds little there: pass
``--bound``). The
reference run has no predictor; the screening run has ``[predictor]`` on (first fit after 10
profiled networks, refit every ``--refit-every``, screening once the held-out MAPE is <= ``--max-mape`` on at least
``--min-heldout`` held-out networks (8: about 40 profiled), 20 %
of screened candidates measured anyway). Both have the same budget of proposals and seed.

Printed: per run, trainings (candidates given to the trainer), device measurements (jobs
answered), candidates screened, final hypervolume of the feasible front (reference point:
accuracy 0, latency B); and, for the same hypervolume (``--hv-share`` x the reference run's
final), how many trainings and measurements each run had spent when its front first reached it,
and the saving. The load of the machine is printed with the figures.

Run: ``python -m bench.screening [--budget 36] [--probe 12 | --bound MS] [--max-mape 25] [--refit-every 8]
[--epochs 1] [--algorithm nsga2] [--keep DIR] [--dataset D --subset N --time-budget S | --space nb201]``
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def probe_bound(cfg: Any, n: int, seed: int) -> float:
    """Median ORT (1 thread) latency in ms of ``n`` untrained networks sampled from the space."""
    import numpy as np
    import onnxruntime as ort

    from search.loop.setup import make_space
    from search.training.data import load_dataset
    from search.training.exporting import export_onnx

    space = make_space(cfg)
    if cfg.accuracy_table:
        from search.training.evaluator import TABLE_TASK as task
    else:
        task = load_dataset(cfg.dataset, seed=cfg.seed).task
    rng = random.Random(seed)
    lat = []
    for _ in range(n):
        g = space.sample(rng)
        shape = space.input_shape(g, task)
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(export_onnx(space.build(g, task), shape), so, providers=["CPUExecutionProvider"])
        x = {sess.get_inputs()[0].name: np.zeros(shape, np.float32)}
        for _ in range(20):
            sess.run(None, x)
        ts = []
        for _ in range(100):
            t0 = time.perf_counter()
            sess.run(None, x)
            ts.append((time.perf_counter() - t0) * 1e3)
        lat.append(statistics.median(ts))
    return statistics.median(lat)


def spent_curve(run_dir: Path, objectives: list, bound: float) -> dict[str, Any]:
    """Trainings, measurements and feasible-front hypervolume after each finished candidate."""
    from search.loop.store import Store
    from search.objectives import total_violation
    from search.pareto import hypervolume, minimization_matrix, pareto_members
    from search.reporting.results import run_objectives

    st = Store(run_dir)
    try:
        cons = run_objectives(st)[1]
        events = st.events()
        meas_t = sorted(m["created"] for m in st.measurements())
        cands = st.candidates()
        ref = [0.0, bound]  # minimised: -accuracy <= 0, latency <= the bound
        proposed = screened = 0
        done: list[dict[str, float]] = []
        curve = []
        for e in events:
            if e["kind"] == "candidate_proposed":
                proposed += 1
            elif e["kind"] == "candidate_screened":
                screened += 1
            elif e["kind"] == "candidate_done":
                vals = next(c for c in cands if c["id"] == e["candidate_id"])["objectives"]
                if total_violation(cons, vals) == 0:
                    done.append(vals)
                hv = 0.0
                if done:
                    mask = pareto_members(done, objectives)
                    hv = hypervolume(minimization_matrix([d for d, m in zip(done, mask) if m], objectives), ref)
                measured = sum(1 for t in meas_t if t <= e["time"])
                curve.append({"hv": hv, "trainings": proposed - screened, "measurements": measured})
        counts = st.count()
        return {"curve": curve, "trainings": sum(1 for c in cands if c["status"] != "screened"),
                "measurements": len(meas_t), "screened": counts.get("screened", 0),
                "final_hv": curve[-1]["hv"] if curve else 0.0,
                "checked": [e["detail"] for e in st.events("prediction_checked")],
                "fits": [e["detail"] for e in st.events("predictor_fitted")]}
    finally:
        st.close()


def reach(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first point of ``curve`` whose hypervolume reaches ``target`` (None: never)."""
    return next((p for p in curve if p["hv"] >= target - 1e-12), None)


def configs(args: argparse.Namespace) -> tuple[Any, Any, float]:
    """The reference and the screening run's configs (validated as a new run would be) and the
    latency bound (``args.bound``, or else the probe's median)."""
    from search import config as cfgmod
    from search.loop.setup import check_new_run

    if args.space == "nb201":  # published accuracy (no training), latency measured here
        table = args.accuracy_table or f"{cfgmod.shared_data_dir() / 'nb201' / 'nb201_tables.csv.gz'}:c10_test_200ep"
        source: dict[str, Any] = dict(space="nb201", accuracy_table=table)
    else:
        source = dict(space="menndl", dataset=args.dataset, subset=args.subset,
                      space_options={**cfgmod.DEMO_SPACE_OPTIONS, "min_epochs": args.epochs, "max_epochs": args.epochs})
    budget_s = args.time_budget if args.time_budget is not None else 3.0 * args.epochs
    base = dataclasses.replace(
        cfgmod.SearchConfig(**source), budget=args.budget,
        population_size=8, seed=args.seed, objectives=("accuracy", "latency_ms"), algorithm=args.algorithm,
        train=cfgmod.TrainSettings(max_epochs=args.epochs, time_budget_s=budget_s, patience=args.epochs),
        measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=20, min_duration_s=0.05, warmup_s=0.02))
    bound = args.bound or probe_bound(base, args.probe, args.seed)
    base = dataclasses.replace(base, constraints=(f"latency_ms <= {bound:.5f}",)).validate()
    screen = dataclasses.replace(base, predictor=cfgmod.PredictorConfig(
        enabled=True, min_networks=10, refit_every=args.refit_every, max_heldout_mape_pct=args.max_mape,
        min_heldout=args.min_heldout,
        audit_share=0.2)).validate()
    for cfg in (base, screen):
        check_new_run(cfg)  # what SearchRunner checks first: a bench that cannot start fails here
    return base, screen, bound


def parser() -> argparse.ArgumentParser:
    """The bench's command line."""
    ap = argparse.ArgumentParser(prog="python -m bench.screening")
    ap.add_argument("--budget", type=int, default=36)
    ap.add_argument("--probe", type=int, default=12, help="untrained networks timed to set the bound")
    ap.add_argument("--bound", type=float, help="the latency bound in ms (default: the probe's median)")
    ap.add_argument("--max-mape", type=float, default=25.0, help="held-out MAPE (%%) needed to screen")
    ap.add_argument("--min-heldout", type=int, default=8, help="held-out networks that MAPE must rest on")
    ap.add_argument("--refit-every", type=int, default=8, help="refit after this many more profiled networks")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs per candidate (time budget 3 s each)")
    ap.add_argument("--hv-share", type=float, default=1.0, help="target = this x the reference's final HV")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algorithm", default="nsga2", help="search algorithm of both runs (nsga2, random, ...)")
    ap.add_argument("--keep", help="keep the two run directories here")
    ap.add_argument("--space", choices=("menndl", "nb201"), default="menndl",
                    help="menndl: trained on --dataset; nb201: accuracy from the NAS-Bench-201 table, no training")
    ap.add_argument("--dataset", default="digits", help="menndl's data (e.g. cifar10:PATH)")
    ap.add_argument("--subset", type=int, default=0, help="images of --dataset to use (0: all)")
    ap.add_argument("--time-budget", type=float, help="training seconds per candidate (default 3 x --epochs)")
    ap.add_argument("--accuracy-table", help="nb201: PATH:COLUMN (default: the shared table's c10_test_200ep)")
    return ap



def main(argv: list[str] | None = None) -> int:
    """Run both searches and print the comparison."""
    args = parser().parse_args(argv)

    from search.loop.runner import SearchRunner
    from search.objectives import Objective

    t0 = time.time()
    base, screen, bound = configs(args)
    how = "given" if args.bound else f"median of {args.probe} untrained networks, in-process ORT, 1 thread"
    print(f"bound: latency_ms <= {bound:.4f} ms ({how}); "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hwnas-screen-"))
    res = {}
    for name, cfg in (("reference", base), ("screening", screen)):
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        t1 = time.time()
        summary = SearchRunner(config=cfg, run_dir=out, progress=False).run()
        runner_objs = [Objective(o["name"], o["direction"]) for o in _meta(out, "objectives")]
        res[name] = spent_curve(out, runner_objs, bound)
        res[name]["wall_s"] = time.time() - t1
        print(f"{name:9s}: {summary['candidates']} proposed, {res[name]['trainings']} trained, "
              f"{res[name]['measurements']} measured, {res[name]['screened']} screened, "
              f"{summary['done']} done, final HV {res[name]['final_hv']:.5f}, {res[name]['wall_s']:.0f} s, "
              f"load {os.getloadavg()[0]:.1f}")
    s = res["screening"]
    for f in s["fits"]:
        print(f"  fit on {f['n_networks']} networks: held-out {f['heldout']}")
    if s["checked"]:
        errs = [abs(c["rel_error"]) * 100 for c in s["checked"]]
        inside = sum(c["in_interval"] for c in s["checked"])
        audits = [c for c in s["checked"] if c["audit"]]
        print(f"  predictions checked against measurements: {len(errs)}, MAPE {statistics.fmean(errs):.1f} %, "
              f"{inside} inside the interval; audited screened candidates: {len(audits)}, of which "
              f"{sum(1 for a in audits if a['measured_ms'] > bound)} did violate the bound when measured")
    target = args.hv_share * res["reference"]["final_hv"]
    print(f"target hypervolume {target:.5f} ({args.hv_share:g} x the reference's final)")
    hit = {n: reach(r["curve"], target) for n, r in res.items()}
    for n, h in hit.items():
        print(f"  {n:9s}: " + (f"reached after {h['trainings']} trainings, {h['measurements']} measurements"
                                if h else "never reached it (a miss)"))
    if all(hit.values()):
        r, q = hit["reference"], hit["screening"]
        print(f"saving at that hypervolume: trainings {1 - q['trainings'] / r['trainings']:+.0%}, "
              f"measurements {1 - q['measurements'] / max(r['measurements'], 1):+.0%} (target >= 40 % each)")
    tot_r, tot_s = res["reference"], res["screening"]
    print(f"whole budget: trainings {tot_s['trainings']}/{tot_r['trainings']} "
          f"({1 - tot_s['trainings'] / tot_r['trainings']:+.0%} saved), measurements "
          f"{tot_s['measurements']}/{tot_r['measurements']} ({1 - tot_s['measurements'] / max(tot_r['measurements'], 1):+.0%}"
          f" saved); wall {time.time() - t0:.0f} s")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _meta(run_dir: Path, key: str) -> Any:
    from search.loop.store import Store

    st = Store(run_dir)
    try:
        return st.get_meta(key, [])
    finally:
        st.close()


if __name__ == "__main__":
    raise SystemExit(main())
