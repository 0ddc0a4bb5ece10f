"""Rank fidelity of the cheap accuracy methods on NAS-Bench-201 (issue 11).

NAS-Bench-201 networks, built by the ``nb201`` space (cell from the architecture string, ``--C``
channels, ``--N`` cells per stage: a reduced proxy of the published C=16, N=5 network when
smaller) and trained here on a seeded stratified subset of the shared CIFAR-10 copy
(``--subset`` images per split), are scored by each cheap method and compared with the published
200-epoch CIFAR-10 test accuracy (``c10_test_200ep`` of the shared ``nb201_tables.csv.gz``):
Kendall tau and Spearman rho (scipy.stats) over the networks, and CPU seconds per network
(``time.process_time`` of this process, torch on one thread, data loading excluded).

Methods (each network trained once per arm, seeded by its index):
- ``rung@E``: validation accuracy after E epochs in total, for every E of ``--rungs``; one training
  continues from its weights from rung to rung, as the search's fidelity rungs do (cost cumulative);
- ``early-bird``: trained until its Early-Bird ticket is drawn (``--eb-window`` mask distances
  below ``--eb-eps``) or the last rung's epochs, accuracy when it stopped;
- ``inherit@E0``: networks in sample order; each one after the first starts from the rung-1
  weights of the already-trained network whose cell differs on the fewest edges (tensors where
  name and shape agree, as ``[train] inherit_weights``), then trains the first rung's epochs.
  Compare with ``rung@E0`` (same cost, from scratch).

Default: a seeded sample of 50 spread over the accuracy range (one per quantile bin of the
published accuracy). ``--quick``: 10 networks, C=8 N=1, 1200 images per split (960 train /
240 validation), rungs 1,3, Early-Bird window 1.

Usage: ``python bench/rank_fidelity.py [--archs FILE] [--quick] [--n 50] [--rungs 1,3,9]``
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from search.config import shared_data_dir  # noqa: E402
from search.spaces.base import TrainHParams  # noqa: E402
from search.spaces.nb201 import NB201Genome, NB201Space  # noqa: E402
from search.training.data import load_dataset  # noqa: E402
from search.training.earlybird import EarlyBirdCallback, EarlyBirdDetector, EarlyBirdSettings  # noqa: E402
from search.training.train import train_candidate  # noqa: E402

SHARED = shared_data_dir()
TABLE = SHARED / "nb201" / "nb201_tables.csv.gz"
CIFAR = f"cifar10:{SHARED / 'cifar10' / 'CIFAR-10-images.tar'}"
#: the NAS-Bench-201 recipe's optimiser (SGD, Nesterov, lr 0.1, wd 5e-4, cosine), batch 64
HP = TrainHParams(learning_rate=0.1, batch_size=64, epochs=1, weight_decay=5e-4, optimizer="sgd-nesterov")


def published() -> dict[str, float]:
    """Architecture string -> published 200-epoch CIFAR-10 test accuracy (%)."""
    with gzip.open(TABLE, "rt") as f:
        return {r["arch_str"]: float(r["c10_test_200ep"]) for r in csv.DictReader(f)}


def spread_sample(table: dict[str, float], n: int, seed: int) -> list[str]:
    """One architecture per quantile bin of the published accuracy (seeded)."""
    ranked = sorted(table, key=table.get)
    rng = random.Random(seed)
    bins = [ranked[i * len(ranked) // n:(i + 1) * len(ranked) // n] for i in range(n)]
    return [rng.choice(b) for b in bins]


def _train(model, splits, epochs: int, seed: int, callbacks=()) -> tuple[float, float, int]:
    """Train ``epochs`` more epochs; (best validation accuracy, CPU seconds, epochs run)."""
    t0 = time.process_time()
    res = train_candidate(model, splits, dataclasses.replace(HP, epochs=epochs), max_epochs=epochs,
                          seed=seed, patience=epochs, callbacks=callbacks)
    return res.val_accuracy, time.process_time() - t0, res.epochs


def _rank(name: str, scores: list[float], truth: list[float], cpu: list[float]) -> dict:
    tau, rho = kendalltau(scores, truth)[0], spearmanr(scores, truth)[0]
    return {"method": name, "kendall_tau": float(tau), "spearman_rho": float(rho),
            "cpu_s_per_net": sum(cpu) / len(cpu), "n": len(scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", help="file of NAS-Bench-201 architecture strings, one a line")
    ap.add_argument("--quick", action="store_true",
                    help="10 networks, C=8 N=1, 1200 images per split, rungs 1,3, Early-Bird window 1")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--rungs", default="1,3,9")
    ap.add_argument("--subset", type=int, default=5000, help="images per split (stratified, seeded)")
    ap.add_argument("--C", type=int, default=16)
    ap.add_argument("--N", type=int, default=5)
    ap.add_argument("--eb-window", type=int, default=2)
    ap.add_argument("--eb-eps", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.quick:
        a.n, a.rungs, a.subset, a.C, a.N, a.eb_window = 10, "1,3", 1200, 8, 1, 1
    rungs = [int(r) for r in a.rungs.split(",")]
    torch.set_num_threads(1)
    table = published()
    archs = ([s.strip() for s in Path(a.archs).read_text().splitlines() if s.strip()] if a.archs
             else spread_sample(table, a.n, a.seed))
    missing = [s for s in archs if s not in table]
    if missing:
        raise SystemExit(f"not in the NAS-Bench-201 table: {missing[:3]}")
    t_load = time.perf_counter()
    splits = load_dataset(CIFAR, subset=a.subset, seed=a.seed)
    print(f"data: {splits.source}, train {len(splits.train)} / val {len(splits.val)} images, "
          f"loaded in {time.perf_counter() - t_load:.0f} s; networks: {len(archs)}, C={a.C} N={a.N}, rungs {rungs}")
    space = NB201Space(C=a.C, N=a.N)
    truth = [table[s] for s in archs]
    rung_acc = {e: [] for e in rungs}
    rung_cpu = {e: [] for e in rungs}
    eb_acc, eb_cpu, eb_epochs = [], [], []
    first_weights: dict[int, dict] = {}
    inh_acc, inh_cpu, inh_truth = [], [], []
    for i, arch in enumerate(archs):
        g = NB201Genome.from_str(arch)
        torch.manual_seed(a.seed + i)
        model = space.build(g, splits.task)
        done, cpu = 0, 0.0
        for e in rungs:  # one training, continued from rung to rung
            acc, c, _ = _train(model, splits, e - done, a.seed + i + done)
            done, cpu = e, cpu + c
            rung_acc[e].append(acc)
            rung_cpu[e].append(cpu)
            if e == rungs[0]:
                first_weights[i] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(a.seed + i)
        model = space.build(g, splits.task)
        det = EarlyBirdDetector(settings=EarlyBirdSettings(eps=a.eb_eps, window=a.eb_window))
        acc, c, ep = _train(model, splits, rungs[-1], a.seed + i, callbacks=[EarlyBirdCallback(detector=det)])
        eb_acc.append(acc), eb_cpu.append(c), eb_epochs.append(ep)
        if i > 0:  # inherit from the nearest network trained before it
            parent = min(range(i), key=lambda j: sum(x != y for x, y in zip(
                NB201Genome.from_str(archs[j]).ops, g.ops)))
            torch.manual_seed(a.seed + i)
            model = space.build(g, splits.task)
            own = model.state_dict()
            same = {k: v for k, v in first_weights[parent].items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(same, strict=False)
            acc, c, _ = _train(model, splits, rungs[0], a.seed + i)
            inh_acc.append(acc), inh_cpu.append(c), inh_truth.append(truth[i])
        print(f"[{i + 1}/{len(archs)}] {arch} published {truth[i]:.2f}% | "
              + " ".join(f"r{e}={rung_acc[e][-1]:.3f}" for e in rungs)
              + f" eb={eb_acc[-1]:.3f}@{eb_epochs[-1]}ep" + (f" inh={inh_acc[-1]:.3f}" if i > 0 else ""), flush=True)
    rows = [_rank(f"rung@{e}", rung_acc[e], truth, rung_cpu[e]) for e in rungs]
    rows.append(_rank("early-bird", eb_acc, truth, eb_cpu))
    rows.append(_rank(f"inherit@{rungs[0]}", inh_acc, inh_truth, inh_cpu))
    rows.append(_rank(f"rung@{rungs[0]} (same nets)", rung_acc[rungs[0]][1:], inh_truth, rung_cpu[rungs[0]][1:]))
    print(f"\nagainst c10_test_200ep (published, NAS-Bench-201); load average {os.getloadavg()}")
    print(f"{'method':28s} {'n':>3s} {'tau':>7s} {'rho':>7s} {'CPU-s/net':>10s}")
    for r in rows:
        print(f"{r['method']:28s} {r['n']:3d} {r['kendall_tau']:7.3f} {r['spearman_rho']:7.3f} {r['cpu_s_per_net']:10.1f}")
    print(f"early-bird stopped after {sum(eb_epochs) / len(eb_epochs):.1f} epochs on average (max {rungs[-1]})")


if __name__ == "__main__":
    main()
