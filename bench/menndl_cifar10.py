"""The MENNDL study's experiment at this machine's scale, on the shared CIFAR-10 copy.

1. A search (MENNDL space: small CNNs and their training hyperparameters; NSGA-II) with the
   objectives accuracy (validation split), latency on the local agent (ONNX Runtime CPU) and
   parameter count, on a training subset with short schedules and a per-candidate time budget.
2. Final training of the most accurate Pareto members with their full schedule
   (``hwnas train-final``), test accuracy evaluated once each.
3. The near-best table on test accuracy (``search.reporting.report.near_best``): the most
   accurate network, and for the networks within 1 and 2 points of it, how many times lower
   their latency and parameter count are.

Targets (issue 10): best test accuracy >= 75 % (80 % stretch); within 1 point, a network >= 2x
cheaper in latency or parameters. The full run is sized for ~60 minutes of search and ~30 of
final training on 2 CPU cores; ``--quick`` runs the same pipeline for a few minutes (a tiny
budget and subset; its accuracies say nothing about the targets).

Usage: ``python bench/menndl_cifar10.py [--quick] [--data PATH] [--out DIR]``; PATH is the
CIFAR-10 copy (default ``$HWNAS_SHARED_DATA/cifar10/CIFAR-10-images.tar``), read through the
``cifar10:PATH`` dataset form.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import config as cfgmod  # noqa: E402

#: (search budget, training subset, epoch range, time budget s, final top-K, final epochs)
FULL = dict(budget=40, subset=10000, min_epochs=1, max_epochs=3, time_budget_s=90.0, top=3, final_epochs=8)
QUICK = dict(budget=4, subset=600, min_epochs=1, max_epochs=1, time_budget_s=15.0, top=1, final_epochs=1)


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
        print(f"note: this hwnas has no dataset subset option; the search trains on the whole split",
              file=sys.stderr)
    return cfg.validate()


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny budget and subset")
    ap.add_argument("--data", default=str(Path(os.environ.get("HWNAS_SHARED_DATA", "/work/shared/data"))
                                          / "cifar10" / "CIFAR-10-images.tar"))
    ap.add_argument("--out", help="run folder (default: a new temporary one)")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    out = Path(args.out or tempfile.mkdtemp(prefix="hwnas-menndl-"))
    from search.loop.runner import SearchRunner
    from search.reporting.report import near_best
    from search.reporting.results import collect, run_objectives
    from search.loop.store import Store
    from search.training.final import train_final

    print(f"mode {'quick' if args.quick else 'full'}: {p}\nrun folder {out}\nload before: {_load()}", flush=True)
    cfg = study_config(args.data, p)
    t0 = time.perf_counter()
    summary = SearchRunner(config=cfg, run_dir=out, progress=True).run()
    t_search = time.perf_counter() - t0
    print(json.dumps(summary, indent=1, default=str), flush=True)
    t1 = time.perf_counter()
    final = train_final(out, top=p["top"], epochs=p["final_epochs"])
    t_final = time.perf_counter() - t1
    results = collect(out)
    st = Store(out)
    objectives, _ = run_objectives(st)
    st.close()
    rows = near_best(results, objectives)
    print(f"\nsearch {t_search / 60:.1f} min ({summary['done']} done, {summary['failed']} failed), "
          f"final training {t_final / 60:.1f} min ({len(final)} networks)")
    for f in final:
        print(f"  #{f['id']}: {f['epochs']} epochs: test {f['test_accuracy']:.4f} (search: val "
              f"{f['search']['val_accuracy']:.4f}, test {f['search']['test_accuracy']})")
    if rows:
        print(f"\nnear-best table on {rows[0]['accuracy_kind']} (most accurate #{rows[0]['best_id']}: "
              f"{100 * rows[0]['best_accuracy']:.2f} %)")
        print(f"{'within':>7s} {'metric':28s} {'cheapest':>9s} {'drop (pt)':>10s} {'x cheaper':>10s}")
        for r in rows:
            print(f"{r['tolerance_points']:6g}  {r['metric']:28s} #{r['cheapest_id']:<8d} "
                  f"{r['accuracy_drop_points']:10.2f} {r['ratio']:9.2f}x")
    print(f"load after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
