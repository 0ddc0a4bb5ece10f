"""The command line of a supernet training, shared by ``hwnas supernet train`` and
``python -m search.training.supernet_train``; torch is imported only when training starts."""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a supernet training (``hwnas supernet train`` and ``python -m``)."""
    p.add_argument("--dataset", default="digits")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True, help="checkpoint path (resumed when it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--phase-epochs", default="4,2,2,2,2",
                   help="epochs per phase: full, kernel, depth, expand, width (progressive shrinking)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; resume later to continue")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--space", default="mobile", choices=["mobile"], help="the space the supernet covers")
    p.add_argument("--space-options", default="{}", metavar="JSON",
                   help="keyword arguments of the space, as the search's [search].space_options")


def run(a: argparse.Namespace) -> Any:
    """Train (or resume) the supernet the parsed options describe (its ``SupernetTrainResult``);
    ValueError on bad options."""
    from search.spaces.base import get_space
    from search.training.supernet_train import SupernetTrainConfig, train_supernet

    try:
        space = get_space(a.space, **json.loads(a.space_options))
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--space-options: {exc}") from None
    cfg = SupernetTrainConfig(dataset=a.dataset, limit=a.limit, seed=a.seed, batch_size=a.batch_size,
                              learning_rate=a.lr, time_budget_s=a.time_budget,
                              phase_epochs=tuple(int(e) for e in a.phase_epochs.split(",")))
    res = train_supernet(cfg, checkpoint=a.out, space=space, resume=not a.no_resume, log=print)
    print(f"{'done' if res.done else 'stopped in phase ' + res.phase}: {res.steps} steps, "
          f"{res.train_time_s:.0f} s, checkpoint {res.checkpoint}")
    return res
