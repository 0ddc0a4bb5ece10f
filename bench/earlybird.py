"""Early-Bird training against dense training at the same epoch budget (digits, menndl networks).

For each network: dense = train the full network for ``--epochs`` epochs; Early-Bird = train it
with the detector (pruning ratio ``--ratio``, eps 0.1, window 5, optional gamma L1 ``--sparsity``
in both arms) until the ticket is drawn, prune it to a physically smaller network (kept weights
copied), then train the ticket for the remaining epochs of the same budget. Both arms start from
the same initial weights and seed. Prints, per network: training seconds (wall, this process,
one thread; test evaluation excluded in both arms), best validation and test accuracy, parameters and peak activation (computed from
the exported ONNX), the epoch the ticket was drawn, and the time ratio dense / Early-Bird.

Usage: ``python bench/earlybird.py [--epochs 40] [--ratio 0.5] [--seed 0]``.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from search.training.data import load_dataset  # noqa: E402
from search.training.exporting import export_onnx  # noqa: E402
from search.memory import peak_activation_kb  # noqa: E402
from search.spaces.base import TrainHParams  # noqa: E402
from search.spaces.menndl import ConvGene, HeadGene, MenndlGenome, MenndlSpace, PoolGene  # noqa: E402
from search.training.train import train_candidate  # noqa: E402
from search.training.earlybird import (EarlyBirdCallback, EarlyBirdDetector, EarlyBirdSettings,  # noqa: E402
                                       add_gamma_sparsity, build_ticket)

HP = TrainHParams(learning_rate=0.05, batch_size=64, epochs=40, weight_decay=5e-4, optimizer="sgd")
NETWORKS = {
    "plain3x64": MenndlGenome((ConvGene(64), ConvGene(64), PoolGene(), ConvGene(64)), HeadGene(grid=2), HP),
    "res4x96": MenndlGenome((ConvGene(96), ConvGene(96, skip_from=1), PoolGene(), ConvGene(96),
                             ConvGene(96, skip_from=3)), HeadGene(hidden=64, grid=2), HP),
    "wide2x128": MenndlGenome((ConvGene(128, kernel=5), PoolGene(), ConvGene(128)), HeadGene(grid=2), HP),
}


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40, help="epoch budget of both arms")
    ap.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio p")
    ap.add_argument("--sparsity", type=float, default=1e-4, help="L1 on BN gammas (0: off), both arms")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load: {os.getloadavg()} (1/5/15 min), torch threads 1, digits, budget {args.epochs} epochs, "
          f"p={args.ratio}, eps=0.1, window=5, gamma L1={args.sparsity}")
    splits = load_dataset("digits", seed=args.seed)
    space = MenndlSpace(max_filters=256, max_epochs=1000)
    rows = []
    for name, genome in NETWORKS.items():
        hp = replace(genome.hparams, epochs=args.epochs)
        torch.manual_seed(args.seed)
        dense = space.build(genome, splits.task)
        init = copy.deepcopy(dense.state_dict())
        if args.sparsity:
            add_gamma_sparsity(dense, args.sparsity)
        d = train_candidate(dense, splits, hp, seed=args.seed, patience=args.epochs, evaluate_test=True)

        eb_net = space.build(genome, splits.task)
        eb_net.load_state_dict(init)
        handles = add_gamma_sparsity(eb_net, args.sparsity) if args.sparsity else []
        cb = EarlyBirdCallback(detector=EarlyBirdDetector(EarlyBirdSettings(ratio=args.ratio)))
        s = train_candidate(eb_net, splits, hp, seed=args.seed, patience=args.epochs, restore_best=False,
                            callbacks=[cb])
        for h in handles:
            h.remove()
        drawn = cb.detector.drawn_at
        t0 = time.perf_counter()
        small_genome, ticket = build_ticket(genome, eb_net, cb.detector.mask, splits.task)
        eb_time = s.train_time_s + time.perf_counter() - t0  # search phase + pruning
        left = args.epochs - s.epochs
        if left > 0:
            t = train_candidate(ticket, splits, replace(hp, epochs=left), seed=args.seed, patience=left,
                                evaluate_test=True)
            eb_val, eb_test = t.val_accuracy, t.test_accuracy
            eb_time += t.train_time_s
        else:  # never drawn: the whole budget went to the dense search phase
            from search.training.train import evaluate
            eb_val, eb_test = s.val_accuracy, evaluate(ticket, splits.test)
        pk_d = peak_activation_kb(export_onnx(dense, (1, 1, 8, 8)))
        pk_t = peak_activation_kb(export_onnx(ticket, (1, 1, 8, 8)))
        widths = [g.filters for g in small_genome.layers if isinstance(g, ConvGene)]
        rows.append((name, d.train_time_s, eb_time, d.val_accuracy, eb_val, d.test_accuracy, eb_test,
                     _params(dense), _params(ticket), pk_d, pk_t, drawn, widths))
        print(f"{name}: dense {d.train_time_s:.1f}s val {d.val_accuracy:.4f} test {d.test_accuracy:.4f} "
              f"params {_params(dense)} peak {pk_d:.1f} kB | EB drawn at epoch {drawn} "
              f"(distances {[round(x, 3) for x in cb.detector.distances[-6:]]}), ticket widths {widths}, "
              f"{eb_time:.1f}s val {eb_val:.4f} test {eb_test:.4f} params {_params(ticket)} "
              f"peak {pk_t:.1f} kB | time ratio dense/EB {d.train_time_s / eb_time:.2f}x", flush=True)
    print("\nnetwork     dense_s  eb_s  ratio  dense_val eb_val  dense_test eb_test  params d/t  drawn")
    for r in rows:
        print(f"{r[0]:<11} {r[1]:7.1f} {r[2]:5.1f} {r[1] / r[2]:5.2f}x  {r[3]:.4f}   {r[4]:.4f}  {r[5]:.4f}     "
              f"{r[6]:.4f}   {r[7]}/{r[8]}  {r[11]}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
