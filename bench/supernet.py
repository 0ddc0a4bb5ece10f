"""Rank fidelity of a once-for-all supernet for the ``mobile`` space (issue 11, part 5).

Trains one supernet by progressive shrinking on scikit-learn's digits (8x8, upsampled to the
space's resolutions), then for ``--n`` sampled sub-networks compares the validation accuracy
with inherited weights (BN recalibrated, no training) against the validation accuracy of the
same network trained stand-alone from scratch (``search.training.train.train_candidate``, short budget).
Prints Kendall tau and Spearman rho (scipy), and the CPU seconds of each method.

The space is the ``mobile`` skeleton at this machine's scale (narrower stages, depth 1..3,
resolutions 12/16): a 2-core shared CPU trains the default space's largest network at about
3 s per 64-image batch.

    PYTHONPATH=$PWD python bench/supernet.py --n 20
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau, spearmanr

from search.training.data import load_dataset
from search.spaces.base import TrainHParams
from search.spaces.mobile import MobileSpace
from search.training.train import train_candidate
from search.training.supernet_train import SupernetAccuracy, SupernetTrainConfig, train_supernet


def bench_space() -> MobileSpace:
    """The mobile skeleton, scaled down for a CPU benchmark."""
    return MobileSpace(channels=(16, 24, 32, 48, 64), min_depth=1, max_depth=3, widths=(0.5, 0.75, 1.0),
                       resolutions=(12, 16), head_expand=4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="sub-networks compared")
    p.add_argument("--phase-epochs", default="4,2,2,2,2")
    p.add_argument("--standalone-epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="1 is 4x faster than 2 on the shared 2-core CPU")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1, help="supernet SGD learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="default: a temporary file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"load before: {os.getloadavg()}")
    space = bench_space()
    splits = load_dataset("digits", seed=a.seed)
    print(f"data: {splits.source}; train {len(splits.train)}, val {len(splits.val)}")
    ckpt = Path(a.checkpoint or Path(tempfile.mkdtemp()) / "supernet.pt")
    cfg = SupernetTrainConfig(seed=a.seed, batch_size=a.batch_size, learning_rate=a.lr, phase_epochs=tuple(int(e) for e in a.phase_epochs.split(",")))
    t0 = time.process_time()
    res = train_supernet(cfg, checkpoint=ckpt, space=space, splits=splits, log=print)
    sn_cpu = time.process_time() - t0
    print(f"supernet: {res.steps} steps, {res.train_time_s:.0f} s wall, {sn_cpu:.0f} CPU-s, done={res.done}")
    acc = SupernetAccuracy(ckpt, splits=splits)
    rng = random.Random(a.seed + 1)
    genomes = [space.sample(rng) for _ in range(a.n)]
    inherited, standalone, t_inh, t_sa = [], [], [], []
    # Adam: the short stand-alone budget needs a fast-converging optimizer.
    hp = TrainHParams(learning_rate=3e-3, batch_size=a.batch_size, epochs=a.standalone_epochs,
                      weight_decay=0.0, optimizer="adam")
    for i, g in enumerate(genomes):
        t = time.process_time()
        inherited.append(acc.score(g))
        t_inh.append(time.process_time() - t)
        torch.manual_seed(a.seed + i)
        net = space.build(g, splits.task)
        t = time.process_time()
        r = train_candidate(net, splits, hp, seed=a.seed + i, patience=a.standalone_epochs,
                            resize_to=g.resolution)
        t_sa.append(time.process_time() - t)
        standalone.append(r.val_accuracy)
        print(f"{i:2d} {space.key(g)[:60]:60s} inherited {inherited[-1]:.3f} ({t_inh[-1]:.1f} CPU-s) "
              f"stand-alone {standalone[-1]:.3f} ({t_sa[-1]:.1f} CPU-s)")
    tau, tau_p = kendalltau(inherited, standalone)
    rho, _ = spearmanr(inherited, standalone)
    print(f"Kendall tau {tau:.3f} (p {tau_p:.3f}), Spearman rho {rho:.3f} over {a.n} sub-networks "
          f"(target tau >= 0.6)")
    print(f"accuracy (val, computed): inherited mean {sum(inherited) / a.n:.3f}, "
          f"stand-alone mean {sum(standalone) / a.n:.3f}")
    print(f"CPU-s per sub-network: inherited {sum(t_inh) / a.n:.2f}, stand-alone {sum(t_sa) / a.n:.1f} "
          f"(ratio {sum(t_sa) / max(sum(t_inh), 1e-9):.0f}x); supernet training once {sn_cpu:.0f} CPU-s")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
