"""Seconds the Ray executor adds to one training against the local executor, on this machine.

The same candidates (digits, MENNDL genomes drawn with a seed, the search's training budget)
are trained through :class:`ProcessPoolTrainer` (one worker process) and :class:`RayTrainer`
(a Ray instance started in this process, ``num_cpus`` 1 per task), alternating, after one
warm-up training each (worker start, torch import). Each figure is the wall time of
``evaluate()`` as the search loop sees it; the overhead is the median of the per-candidate
differences (Ray minus local): task submission, the object-store read of the splits, the
files shipped back.

Usage: ``python bench/ray_overhead.py [--candidates 6]``; needs Ray (``pip install 'hwnas[ray]'``).
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import config as cfgmod  # noqa: E402
from search.loop.setup import make_space  # noqa: E402
from search.training.evaluator import EvalRequest  # noqa: E402
from search.training.workers import ProcessPoolTrainer, load_splits  # noqa: E402

CFG = dataclasses.replace(cfgmod.load(None), train=cfgmod.TrainSettings(max_epochs=3, time_budget_s=0.0, patience=3))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=6)
    args = ap.parse_args(argv)
    from search.training.ray_executor import RayTrainer

    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    space, rng = make_space(CFG), random.Random(0)
    genomes = [space.sample(rng) for _ in range(args.candidates + 1)]
    reqs = [EvalRequest(candidate_id=i, genome=g, arch_key=space.key(g)) for i, g in enumerate(genomes)]
    ray_cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, executor="ray", ray_num_cpus=1.0))
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        local = ProcessPoolTrainer(config=CFG, run_dir=a, export=True, devices=["cpu"], threads=1)
        ray = RayTrainer(config=ray_cfg, splits=load_splits(CFG), run_dir=b, export=True)
        try:
            local.evaluate(reqs[0])  # warm-up: worker start, imports
            ray.evaluate(reqs[0])
            rows = []
            for i, req in enumerate(reqs[1:]):
                times = {}
                for name, ex in (("local", local), ("ray", ray)) if i % 2 == 0 else (("ray", ray), ("local", local)):
                    t0 = time.perf_counter()
                    ev = ex.evaluate(req)
                    times[name] = (time.perf_counter() - t0, ev.train["train_time_s"])
                rows.append(times)
        finally:
            local.close()
            ray.close()
    print(f"{'cand':>4s} {'local wall s':>12s} {'ray wall s':>10s} {'ray - local':>11s} {'(training s: local / ray)':>26s}")
    for i, t in enumerate(rows, 1):
        print(f"{i:4d} {t['local'][0]:12.2f} {t['ray'][0]:10.2f} {t['ray'][0] - t['local'][0]:11.2f} "
              f"{t['local'][1]:12.2f} / {t['ray'][1]:.2f}")
    diff = statistics.median(t["ray"][0] - t["local"][0] for t in rows)
    print(f"Ray adds {diff:.2f} s per training (median of {len(rows)}; digits, one CPU per training)")
    print("load after: ", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
