"""Cost first and fidelity rungs at equal wall time, on the shared CIFAR-10 copy (issue 11).

The search of ``bench/menndl_cifar10.py`` (MENNDL space, NSGA-II, objectives accuracy, latency
on the local agent and parameter count, CIFAR-10 subset, short schedules) run twice for the same
wall time (``[search] max_wall_s``: no new candidate after it, those in flight finish), with a
latency constraint that part of the space violates:

- ``plain``: every candidate trained for its genome's epochs, then measured; a violator is found
  out after its training;
- ``cheap``: ``cost_first`` (the untrained network is measured first, a violator is recorded
  ``infeasible`` and never trained) and fidelity rungs (``--rungs``, eta ``--eta``: asynchronous
  successive halving, promoted candidates continue from their weights).

Printed per arm: candidates evaluated (done + infeasible), trainings and training epochs spent,
and the hypervolume of the front on test accuracy (each Pareto member's, evaluated once after the
search) vs latency, with reference point (accuracy 0.1 = chance, latency = the constraint's bound).
Target: the cheap arm evaluates >= 3x the candidates with a hypervolume at least as large.
One pair of runs, one after the other (not interleaved): the machine's load is printed beside
each; on this noisy VM a single pair is one sample, not a distribution.

Usage: ``python bench/cheap_search.py [--quick] [--minutes 15] [--bound 0.15] [--rungs 1,3]``
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.menndl_cifar10 import FULL, QUICK, _load, study_config  # noqa: E402
from search import config as cfgmod  # noqa: E402


def arm_config(data: str, p: dict, *, cheap: bool, minutes: float, bound: float, rungs: tuple[int, ...],
               eta: int) -> cfgmod.SearchConfig:
    cfg = dataclasses.replace(study_config(data, p), budget=100000, max_wall_s=minutes * 60,
                              constraints=(f"latency_ms <= {bound}",))
    if cheap:
        cfg = dataclasses.replace(cfg, cost_first=True, fidelity=cfgmod.FidelitySettings(rungs=rungs, eta=eta))
    return cfg.validate()


def figures(run: Path, bound: float) -> dict:
    """Candidates, trainings, epochs trained and the front's hypervolume of one finished run."""
    from search.pareto import hypervolume
    from search.reporting.results import collect

    results = collect(run)
    done = [r for r in results if r["status"] == "done"]
    infeasible = [r for r in results if r["status"] == "infeasible"]
    trained = [r for r in results if (r.get("train") or {}).get("history")]
    epochs = sum(len(r["train"]["history"]) for r in trained)
    front = []
    for r in results:
        if not r["pareto"] or r.get("test_accuracy") is None:
            continue
        lat = next(v for k, v in (r["objectives"] or {}).items() if k.split("@")[0] == "latency_ms")
        front.append((1.0 - r["test_accuracy"], lat))
    hv = hypervolume(front, ref=(0.9, bound)) if front else 0.0
    best = max((1.0 - f[0] for f in front), default=float("nan"))
    return {"evaluated": len(done) + len(infeasible), "done": len(done), "infeasible": len(infeasible),
            "failed": sum(r["status"] == "failed" for r in results), "trainings": len(trained),
            "epochs": epochs, "front": len(front), "hv": hv, "best_test": best}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 minutes an arm on 600 images (says nothing)")
    ap.add_argument("--data", default=str(cfgmod.shared_data_dir() / "cifar10" / "CIFAR-10-images.tar"))
    ap.add_argument("--minutes", type=float, help="wall time of each arm (default 15; --quick 2)")
    ap.add_argument("--bound", type=float, default=0.15,
                    help="latency_ms constraint (ms on this CPU; about half the space is slower)")
    ap.add_argument("--rungs", default="1,3", help="the cheap arm's rungs in epochs")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--out", help="folder for the two runs (default: a new temporary one)")
    args = ap.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    minutes = args.minutes or (2.0 if args.quick else 15.0)
    rungs = tuple(int(r) for r in args.rungs.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="hwnas-cheap-"))
    from search.loop.runner import SearchRunner

    print(f"{minutes:g} minutes an arm, latency_ms <= {args.bound}, rungs {rungs} eta {args.eta}, "
          f"subset {p['subset']}, epochs {p['min_epochs']}-{p['max_epochs']}; runs in {out}", flush=True)
    rows = {}
    for name in ("plain", "cheap"):
        cfg = arm_config(args.data, p, cheap=name == "cheap", minutes=minutes, bound=args.bound,
                         rungs=rungs, eta=args.eta)
        print(f"{name}: load before {_load()}", flush=True)
        t0 = time.perf_counter()
        summary = SearchRunner(config=cfg, run_dir=out / name, progress=True).run()
        wall = time.perf_counter() - t0
        rows[name] = {**figures(out / name, args.bound), "wall_s": wall, "stopped_by": summary.get("stopped_by")}
        print(f"{name}: {rows[name]}; load after {_load()}", flush=True)
    print(f"\n{'arm':6s} {'wall s':>7s} {'evaluated':>9s} {'done':>5s} {'infeas.':>7s} {'failed':>6s} "
          f"{'trainings':>9s} {'epochs':>6s} {'front':>5s} {'best test':>9s} {'HV':>9s}")
    for name, r in rows.items():
        print(f"{name:6s} {r['wall_s']:7.0f} {r['evaluated']:9d} {r['done']:5d} {r['infeasible']:7d} "
              f"{r['failed']:6d} {r['trainings']:9d} {r['epochs']:6d} {r['front']:5d} {r['best_test']:9.4f} "
              f"{r['hv']:9.5f}")
    a, b = rows["plain"], rows["cheap"]
    ratio = b["evaluated"] / a["evaluated"] if a["evaluated"] else float("inf")
    print(f"\ncheap / plain: {ratio:.2f}x the candidates evaluated (target >= 3x), hypervolume "
          f"{b['hv']:.5f} vs {a['hv']:.5f} (target: at least as large); wall {b['wall_s']:.0f} s vs "
          f"{a['wall_s']:.0f} s (the limit stops proposals; candidates in flight finish)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
