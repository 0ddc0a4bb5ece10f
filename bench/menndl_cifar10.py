"""The MENNDL study's experiment at this machine's scale, on the shared CIFAR-10 copy.

1. A search (MENNDL space: small CNNs and their training hyperparameters; NSGA-II) with the
   objectives accuracy (validation split), latency on the local agent (ONNX Runtime CPU) and
   parameter count, on a training subset with short schedules and a per-candidate time budget.
2. Final training (``hwnas train-final``) of the most accurate Pareto member(s) on the whole
   training split, for as many epochs as fit ``--final-minutes`` at the throughput the search
   measured for it; test accuracy evaluated once each.
3. The near-best table on test accuracy (``search.reporting.report.near_best``): the most
   accurate network, and for the networks within 1 and 2 points of it, how many times lower
   their latency and parameter count are.
4. Early-Bird in final training (issue 11): the most accurate member trained on copies of the
   run, dense and with ``--early-bird``, for ``--eb-epochs`` on ``--eb-subset`` images: training
   time and test accuracy of each (target: >= 2x less time at <= 0.5 points).

Targets (issue 10): best test accuracy >= 75 % (80 % stretch); within 1 point, a network >= 2x
cheaper in latency or parameters. The full run is sized for ~60 minutes of search and ~30 of
final training on 2 CPU cores; ``--quick`` runs the same pipeline for a few minutes (a tiny
budget and subset; its accuracies say nothing about the targets).

Usage: ``python bench/menndl_cifar10.py [--quick] [--data PATH] [--out DIR] [--phase all|search|final]``;
PATH is the CIFAR-10 copy (default ``$HWNAS_SHARED_DATA/cifar10/CIFAR-10-images.tar``), read
through the ``cifar10:PATH`` dataset form; ``--phase final`` continues a searched ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import config as cfgmod  # noqa: E402

#: search budget, training subset, epoch range, time budget s; final: top-K, minutes, subset (0: all);
#: Early-Bird comparison: epochs, subset
FULL = dict(budget=40, subset=10000, min_epochs=1, max_epochs=3, time_budget_s=90.0, top=1, final_minutes=30.0,
            final_subset=0, eb_epochs=15, eb_subset=10000)
QUICK = dict(budget=4, subset=600, min_epochs=1, max_epochs=1, time_budget_s=15.0, top=1, final_minutes=0.5,
             final_subset=600, eb_epochs=3, eb_subset=600)


def study_config(data: str, p: dict) -> cfgmod.SearchConfig:
    """The search's config: MENNDL space bounded for CIFAR-10 on 2 cores, NSGA-II, three objectives."""
    base = cfgmod.SearchConfig()
    opts = {"max_layers": 6, "max_filters": 64, "min_epochs": p["min_epochs"], "max_epochs": p["max_epochs"],
            "lr_range": [0.005, 0.2]}
    cfg = dataclasses.replace(
        base, space="menndl", space_options=opts, algorithm="nsga2", budget=p["budget"],
        population_size=max(2, min(12, p["budget"] // 3)), objectives=("accuracy", "latency_ms", "params"),
        dataset=f"cifar10:{data}", train_workers=1, torch_threads=2,
        train=cfgmod.TrainSettings(max_epochs=p["max_epochs"], time_budget_s=p["time_budget_s"], patience=2))
    # the training subset: a dataset option of the dataset readers, where this version has one
    names = {f.name for f in dataclasses.fields(cfgmod.SearchConfig)}
    for field in ("subset", "data_subset"):
        if field in names:
            cfg = dataclasses.replace(cfg, **{field: p["subset"]})
            break
    else:
        print("note: this hwnas has no dataset subset option; the search trains on the whole split",
              file=sys.stderr)
    return cfg.validate()


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _final_epochs(run: Path, top: int, minutes: float, subset: int) -> int:
    """Epochs that fit ``minutes`` for the ``top`` most accurate members at the throughput the
    search measured for them, on ``subset`` training images (0: the whole train split)."""
    from search.reporting.results import collect
    from search.training.final import choose

    chosen = choose(collect(run), top=top, ids=None)
    ips = min(c["train"]["images_per_s"] for c in chosen if (c.get("train") or {}).get("images_per_s"))
    n_train = subset or 45000  # the tar's 50,000 training images less the validation split
    if not subset:
        from search.loop.setup import stored_config
        from search.loop.store import Store
        from search.training.workers import load_splits

        st = Store(run)
        cfg = dataclasses.replace(stored_config(st, token_given=True), subset=0)
        st.close()
        n_train = len(load_splits(cfg).train)
    epochs = max(1, int(minutes * 60 * ips / (n_train * len(chosen))))
    print(f"final training: {len(chosen)} network(s) at the search's {ips:.0f} images/s, {n_train} training "
          f"images: {epochs} epochs fit {minutes:g} minutes", flush=True)
    return epochs


def _early_bird_compare(run: Path, p: dict) -> None:
    """Dense vs Early-Bird final training of the most accurate member, each on its own copy of the run."""
    import shutil

    from search.training.final import train_final

    rows = {}
    for arm in ("dense", "early-bird"):
        copy = run.parent / f"{run.name}-eb-{arm}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("final", "run.lock"))
        t0 = time.perf_counter()
        (rec,) = train_final(copy, top=1, epochs=p["eb_epochs"], subset=p["eb_subset"], early_bird=arm != "dense")
        rows[arm] = (rec, time.perf_counter() - t0)
    (d, dw), (e, ew) = rows["dense"], rows["early-bird"]
    eb = e["early_bird"] or {}
    print(f"\nEarly-Bird in final training (#{d['id']}, {p['eb_epochs']} epochs on {p['eb_subset']} images, "
          f"p={eb.get('ratio')}, eps={eb.get('eps')}, window={eb.get('window')}):")
    print(f"  dense:      train {d['train_time_s']:.1f} s (wall {dw:.1f} s), test {d['test_accuracy']:.4f}, "
          f"params {d['params']:,}")
    print(f"  early-bird: train {e['train_time_s']:.1f} s (wall {ew:.1f} s), test {e['test_accuracy']:.4f}, "
          f"params {e['params']:,}; ticket drawn at epoch {eb.get('drawn_at_epoch')} "
          f"(dense phase {eb.get('dense_phase_s', 0):.1f} s, ticket {eb.get('ticket_train_s', 0):.1f} s)")
    print(f"  time ratio dense/early-bird {d['train_time_s'] / e['train_time_s']:.2f}x, test accuracy "
          f"{100 * (e['test_accuracy'] - d['test_accuracy']):+.2f} points (target >= 2x at >= -0.5 points)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny budget and subset")
    ap.add_argument("--data", default=str(cfgmod.shared_data_dir() / "cifar10" / "CIFAR-10-images.tar"))
    ap.add_argument("--out", help="run folder (default: a new temporary one)")
    ap.add_argument("--phase", choices=("all", "search", "final"), default="all",
                    help="search only, final training + tables of a searched --out only, or both")
    ap.add_argument("--final-minutes", type=float, help="final-training budget (default: the mode's)")
    ap.add_argument("--no-early-bird", action="store_true", help="skip the Early-Bird comparison")
    args = ap.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    if args.final_minutes is not None:
        p["final_minutes"] = args.final_minutes
    if args.phase == "final" and not args.out:
        ap.error("--phase final needs the searched run's --out")
    out = Path(args.out or tempfile.mkdtemp(prefix="hwnas-menndl-"))
    from search.loop.runner import SearchRunner
    from search.reporting.report import near_best
    from search.reporting.results import collect, run_objectives
    from search.loop.store import Store
    from search.training.final import train_final

    print(f"mode {'quick' if args.quick else 'full'}: {p}\nrun folder {out}\nload before: {_load()}", flush=True)
    t_search, summary = 0.0, None
    if args.phase in ("all", "search"):
        cfg = study_config(args.data, p)
        t0 = time.perf_counter()
        summary = SearchRunner(config=cfg, run_dir=out, progress=True).run()
        t_search = time.perf_counter() - t0
        print(json.dumps(summary, indent=1, default=str), flush=True)
        print(f"search {t_search / 60:.1f} min ({summary['done']} done, {summary['failed']} failed); load {_load()}",
              flush=True)
        if args.phase == "search":
            return 0
    t1 = time.perf_counter()
    epochs = _final_epochs(out, p["top"], p["final_minutes"], p["final_subset"])
    final = train_final(out, top=p["top"], epochs=epochs, subset=p["final_subset"])
    t_final = time.perf_counter() - t1
    results = collect(out)
    st = Store(out)
    objectives, _ = run_objectives(st)
    st.close()
    # the study's comparison: every front member with the same (search) training, test accuracy
    # measured once after the search; then the report's table, where final training counts
    searched = near_best([{**r, "final": None} for r in results], objectives)
    rows = near_best(results, objectives)
    print(f"\nfinal training {t_final / 60:.1f} min ({len(final)} networks, {epochs} epochs, "
          f"{'all' if not p['final_subset'] else p['final_subset']} training images); load {_load()}")
    for f in final:
        print(f"  #{f['id']}: {f['epochs']} epochs: test {f['test_accuracy']:.4f} (search: val "
              f"{f['search']['val_accuracy']:.4f}, test {f['search']['test_accuracy']})")
    for title, table in (("after the search (the same training for every member)", searched),
                         ("as the report shows it (after final training where there was one)", rows)):
        if not table:
            print(f"\nnear-best table {title}: empty (no front member with a test accuracy)")
            continue
        print(f"\nnear-best table {title}, on {table[0]['accuracy_kind']} (most accurate "
              f"#{table[0]['best_id']}: {100 * table[0]['best_accuracy']:.2f} %)")
        print(f"{'within':>7s} {'metric':28s} {'cheapest':>9s} {'drop (pt)':>10s} {'x cheaper':>10s}")
        for r in table:
            print(f"{r['tolerance_points']:6g}  {r['metric']:28s} #{r['cheapest_id']:<8d} "
                  f"{r['accuracy_drop_points']:10.2f} {r['ratio']:9.2f}x")
    if not args.no_early_bird:
        _early_bird_compare(out, p)
    print(f"load after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
