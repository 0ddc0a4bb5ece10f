"""Benchmark the search algorithms on NAS-Bench-201 accuracy-latency tables.

Every algorithm searches the NB201 cell space for CIFAR-10 200-epoch test accuracy
(``c10_test_200ep``, max) and the latency (ms, min) of one device column ``lat_<device>`` of
``nb201_tables.csv.gz``; an evaluation is a table look-up. The true Pareto front of each device
is known from the table, so each run is scored exactly:

- hypervolume regret ``1 - HV(evaluated) / HV(true front)``; both objectives are normalised
  by the true front's ideal (0) and nadir (1) and the reference point is ``(1.1, 1.1)``, the
  nadir pushed out by 10 % of the front's range;
- the share of the true Pareto members (arch strings) that were evaluated.

Each (algorithm, device, seed) is run once to the largest budget; smaller budgets are scored on
the prefix of the same run (every algorithm here proposes without knowing the budget, and the
loop tells each result before the next ask, so the prefix is exactly a run with that budget).
Medians are over seeds.

Run:  ``python -m bench.nb201_search [--quick] [--jobs 2] [--save runs.json]``
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search.algorithms.base import get_algorithm  # noqa: E402
from search.objectives import Objective  # noqa: E402
from search.config import shared_data_dir  # noqa: E402
from search.pareto import hypervolume, normalize, pareto_mask  # noqa: E402

#: ``$HWNAS_SHARED_DATA`` or ``../shared/data`` beside the project root.
DEFAULT_TABLE = shared_data_dir() / "nb201" / "nb201_tables.csv.gz"
ALGORITHMS = ["nsga2", "random", "regevo", "optuna-nsga2", "optuna-tpe"]
BUDGETS = [100, 300, 1000]
ACC = "c10_test_200ep"
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


@dataclass(frozen=True)
class Table:
    """The columns the benchmark needs: arch strings, accuracy, one latency per device."""

    arch: list[str]
    acc: np.ndarray
    lat: dict[str, np.ndarray]


def load_table(path: Path) -> Table:
    """Read ``nb201_tables.csv.gz`` (15,625 rows)."""
    with gzip.open(path, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    devices = [c[4:] for c in rows[0] if c.startswith("lat_")]
    return Table(
        arch=[r["arch_str"] for r in rows],
        acc=np.array([float(r[ACC]) for r in rows]),
        lat={d: np.array([float(r[f"lat_{d}"]) for r in rows]) for d in devices},
    )


def make_space(kind: str):
    """The searched space and a function genome -> NB201 arch string."""
    if kind == "nb201":
        from search.spaces.nb201 import NB201Space  # H3's space

        space = NB201Space()
        return space, space.key
    from search.testing import CategoricalSpace

    space = CategoricalSpace(n=6, k=5)

    def to_str(g) -> str:
        o = [NB201_OPS[v] for v in g]
        return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"

    return space, to_str


def run_one(args: tuple[str, str, int, int, str, str]) -> tuple[list[int], float]:
    """One search; returns the table rows it evaluated, in order, and its seconds."""
    t0 = time.process_time()
    algo_name, device, seed, budget, table_path, space_kind = args
    table = _cached_table(table_path)
    index = _cached_index(table_path)
    space, to_str = make_space(space_kind)
    lat_name = f"latency_ms@{device}"
    algo = get_algorithm(
        algo_name, space=space, seed=seed,
        objectives=[Objective("accuracy", "max"), Objective(lat_name, "min")],
    )
    rows = []
    for _ in range(budget):
        trial = algo.ask()
        i = index[to_str(trial.genome)]
        rows.append(i)
        algo.tell(trial.number, {"accuracy": float(table.acc[i]), lat_name: float(table.lat[device][i])})
    return rows, time.process_time() - t0


_TABLES: dict[str, Table] = {}
_INDEX: dict[str, dict[str, int]] = {}


def _cached_table(path: str) -> Table:
    if path not in _TABLES:
        _TABLES[path] = load_table(Path(path))
    return _TABLES[path]


def _cached_index(path: str) -> dict[str, int]:
    if path not in _INDEX:
        _INDEX[path] = {a: i for i, a in enumerate(_cached_table(path).arch)}
    return _INDEX[path]


class Scorer:
    """Exact scores of a set of evaluated rows against one device's true front."""

    def __init__(self, table: Table, device: str) -> None:
        self.F = np.column_stack([-table.acc, table.lat[device]])
        self.front = np.flatnonzero(pareto_mask(self.F))
        ideal, nadir = self.F[self.front].min(axis=0), self.F[self.front].max(axis=0)
        self.norm = normalize(self.F, ideal, nadir)
        self.ref = np.array([1.1, 1.1])
        self.hv_true = hypervolume(self.norm[self.front], self.ref)
        self.front_set = set(self.front.tolist())

    def regret(self, rows: list[int]) -> float:
        return 1.0 - hypervolume(self.norm[sorted(set(rows))], self.ref) / self.hv_true

    def found(self, rows: list[int]) -> float:
        return len(self.front_set.intersection(rows)) / len(self.front_set)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default=str(DEFAULT_TABLE))
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS)
    p.add_argument("--devices", nargs="+", default=None, help="default: every lat_* column")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--space", choices=["nb201", "categorical"], default="nb201",
                   help="nb201: search.spaces.nb201; categorical: the 6x5 test space (same genome shape)")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 2 devices, budgets 100/300, Optuna capped at 300: about a minute on 2 cores")
    p.add_argument("--save", default=None, help="write every run's evaluated rows to this JSON file")
    p.add_argument("--load", default=None, help="score runs saved by --save (and run only the missing ones)")
    p.add_argument("--report-only", action="store_true", help="with --load: score, run nothing")
    p.add_argument("--cap", nargs="*", default=[], metavar="ALGO=N",
                   help="run ALGO only to N evaluations (e.g. optuna-tpe=300: its cost grows with N)")
    args = p.parse_args(argv)

    if not Path(args.table).exists():
        print(f"table not found: {args.table}", file=sys.stderr)
        return 2
    table = _cached_table(args.table)
    devices = args.devices or sorted(table.lat)
    seeds = args.seeds
    if args.quick:
        devices, seeds = devices[:2], min(seeds, 2)
        args.budgets = [b for b in args.budgets if b <= 300] or [100]
        args.cap = [*args.cap, "optuna-tpe=300", "optuna-nsga2=300"]
    unknown = set(devices) - set(table.lat)
    if unknown:
        print(f"unknown devices {sorted(unknown)}; known: {sorted(table.lat)}", file=sys.stderr)
        return 2
    budget = max(args.budgets)
    caps = {}
    for item in args.cap:
        name, _, n = item.partition("=")
        caps[name] = int(n)

    saved: dict = {"runs": {}, "cpu_seconds": {}}
    if args.load:
        saved = json.loads(Path(args.load).read_text())
    runs, cpu = saved["runs"], saved["cpu_seconds"]
    tasks = [(a, d, s, min(budget, caps.get(a, budget)), args.table, args.space) for a in args.algorithms
             for d in devices for s in range(seeds)
             if len(runs.get(f"{a}|{d}|{s}", [])) < min(budget, caps.get(a, budget))]
    if args.report_only:
        tasks = []
    t0 = time.time()
    if tasks:
        print(f"nb201_search: {len(tasks)} searches ({len(args.algorithms)} algorithms x {len(devices)} devices x "
              f"{seeds} seeds) to {budget} evaluations, {args.jobs} worker(s); expect tens of minutes for the "
              "full run on 2 cores (optuna-tpe dominates: ~20 CPU s per search to 300 evaluations, growing "
              "faster than linearly), 1-2 minutes with --quick; the time left is printed as searches finish",
              flush=True)
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for k, (task, (rows, sec)) in enumerate(zip(tasks, pool.map(run_one, tasks)), 1):
                runs[f"{task[0]}|{task[1]}|{task[2]}"] = rows
                cpu[f"{task[0]}|{task[1]}|{task[2]}"] = sec
                spent = time.time() - t0
                print(f"[{k}/{len(tasks)}] {task[0]} on {task[1]}, seed {task[2]}: {sec:.1f} CPU s; "
                      f"{spent:.0f} s elapsed, about {_time_left(tasks[k:], cpu, args.jobs):.0f} s left",
                      flush=True)
                if args.save:  # keep partial results of long runs
                    Path(args.save).write_text(json.dumps(saved))
    elapsed = time.time() - t0

    report(runs, table, args.algorithms, devices, seeds, sorted(args.budgets))
    print("\nCPU seconds per search (mean): " + ", ".join(
        f"{a} {statistics.mean(v):.1f} s to {max(len(runs[k]) for k in runs if k.startswith(a + '|'))}"
        for a in args.algorithms
        if (v := [cpu[k] for k in cpu if k.startswith(a + "|")])))
    print(f"\n{len(tasks)} searches run in {elapsed:.0f} s with {args.jobs} worker(s); "
          f"space={args.space}, seeds={seeds}, table={args.table}")
    return 0


def _time_left(remaining: list[tuple], cpu: dict[str, float], jobs: int) -> float:
    """Seconds left: each remaining search costs the mean CPU seconds of the finished searches of
    its algorithm (the slowest algorithm's mean when none has finished yet), over ``jobs``."""
    means: dict[str, float] = {}
    for key, sec in cpu.items():
        means.setdefault(key.split("|")[0], []).append(sec)  # type: ignore[arg-type, union-attr]
    means = {a: statistics.mean(v) for a, v in means.items()}  # type: ignore[arg-type]
    worst = max(means.values(), default=0.0)
    return sum(means.get(t[0], worst) for t in remaining) / max(1, jobs)


def report(runs, table, algorithms, devices, seeds, budgets) -> None:
    """Print median regret / share found per algorithm, budget and device, then targets."""
    med: dict[tuple[str, str, int], tuple[float, float]] = {}
    for d in devices:
        sc = Scorer(table, d)
        print(f"\n== {d}: true front {len(sc.front)} members ==")
        print(f"{'algorithm':14s}" + "".join(f" | regret@{b:<5d} found@{b:<5d}" for b in budgets))
        for a in algorithms:
            cells = []
            for b in budgets:
                rs = [runs[f"{a}|{d}|{s}"][:b] for s in range(seeds) if len(runs.get(f"{a}|{d}|{s}", [])) >= b]
                if not rs:
                    cells.append(f" | {'-':>12s} {'-':>11s}")
                    continue
                r = statistics.median(sc.regret(x) for x in rs)
                f = statistics.median(sc.found(x) for x in rs)
                med[(a, d, b)] = (r, f)
                mark = " " if len(rs) == seeds else "*"  # * = fewer seeds than asked
                cells.append(f" | {r:12.4f}{mark}{f:10.2f} ")
            print(f"{a:14s}" + "".join(cells))

    print("\n(* = median over fewer seeds than asked: the run was cut short; '-' = not run)")
    print("\n== summary: median over devices of the per-device medians ==")
    print(f"{'algorithm':14s}" + "".join(f" | regret@{b:<5d} found@{b:<5d}" for b in budgets))
    for a in algorithms:
        cells = []
        for b in budgets:
            vals = [med[(a, d, b)] for d in devices if (a, d, b) in med]
            if not vals:
                cells.append(f" | {'-':>12s} {'-':>11s}")
                continue
            cells.append(f" | {statistics.median(v[0] for v in vals):12.4f} "
                         f"{statistics.median(v[1] for v in vals):11.2f}")
        print(f"{a:14s}" + "".join(cells))

    print("\n== targets (default = nsga2) ==")
    b_mid = 300 if 300 in budgets else budgets[len(budgets) // 2]
    b_max = max(budgets)
    for d in devices:
        checks = []
        n = med.get(("nsga2", d, b_mid))
        if n is None:
            continue
        if ("random", d, b_mid) in med:
            r = med[("random", d, b_mid)][0]
            checks.append(f"regret@{b_mid} <= random/2: {'PASS' if n[0] <= r / 2 else 'FAIL'} "
                          f"({n[0]:.4f} vs {r / 2:.4f})")
        if ("optuna-nsga2", d, b_mid) in med:
            o = med[("optuna-nsga2", d, b_mid)][0]
            checks.append(f"< optuna-nsga2: {'PASS' if n[0] < o else 'FAIL'} ({n[0]:.4f} vs {o:.4f})")
        f = med.get(("nsga2", d, b_max))
        if f is not None:
            checks.append(f"found@{b_max} >= 0.5: {'PASS' if f[1] >= 0.5 else 'FAIL'} ({f[1]:.2f})")
        print(f"{d:10s} " + "; ".join(checks))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
