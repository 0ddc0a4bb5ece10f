"""Training a :class:`~search.training.supernet.MobileSupernet` by progressive shrinking, and
scoring sub-networks with inherited weights.

Progressive shrinking (Once-for-All), at this project's scale: phase ``full`` trains the largest
network (SE on everywhere) at a random resolution of the space per step; then each phase makes
one more dimension elastic, keeping the earlier ones elastic: ``kernel`` (and SE on/off),
``depth``, ``expand`` (channels sorted by importance first), ``width``. Every step of an elastic
phase is a sandwich (BigNAS/OFA): the phase's largest sub-network learns from the labels, its
smallest and ``n_random`` random ones from the labels plus the largest's soft predictions
(in-place distillation, weight ``distill``). Each phase has its own cosine learning-rate
schedule and optimizer.

Everything random in a step is seeded by ``(seed, phase, epoch, batch)``, so a run stopped at
any step (``time_budget_s``, ``max_steps``, a crash after a checkpoint) and resumed from its
checkpoint ends with the same weights as an uninterrupted one. Checkpoints are written
atomically (temporary file, then ``os.replace``).

Scoring (:class:`SupernetAccuracy`): extract the genome's network with the inherited weights,
recalibrate its batch-norm statistics on ``recalibration_images`` training images (cumulative
average, as Once-for-All does) and measure accuracy on the validation split, no training.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from search.training.data import DatasetSplits, load_dataset
from search.spaces.base import TaskSpec
from search.spaces.mobile import MobileBlock, MobileGenome, MobileSpace
from search.training.train import evaluate
from search.training.supernet import MobileSupernet, space_settings

FORMAT = "hwnas-supernet/1"


@dataclass(frozen=True)
class SupernetTrainConfig:
    """Settings of one supernet training run; ``phase_epochs`` per phase of :data:`PHASES`."""

    dataset: str = "digits"
    limit: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 64
    learning_rate: float = 0.05
    weight_decay: float = 3e-5
    phase_epochs: tuple[int, ...] = (4, 2, 2, 2, 2)
    #: later phases start at this fraction of the learning rate (OFA lowers it too)
    elastic_lr_factor: float = 0.5
    n_random: int = 1
    distill: float = 1.0
    recalibration_images: int = 512
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if len(self.phase_epochs) != len(PHASES) or any(e < 0 for e in self.phase_epochs):
            raise ValueError(f"phase_epochs needs {len(PHASES)} non-negative counts ({', '.join(PHASES)})")
        if self.batch_size < 1 or self.learning_rate <= 0 or self.n_random < 0:
            raise ValueError("batch_size >= 1, learning_rate > 0 and n_random >= 0 are required")


#: the phases in order; each makes one more dimension elastic
PHASES = ("full", "kernel", "depth", "expand", "width")


@dataclass
class SupernetTrainResult:
    """Where a run ended: its checkpoint, whether all phases finished, steps and seconds."""

    checkpoint: str
    done: bool
    phase: str
    steps: int
    train_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def _choices(space: MobileSpace, phase: int) -> dict[str, tuple]:
    """The values each dimension may take in phase ``phase`` (largest only until elastic)."""
    top = lambda xs: (max(xs),)  # noqa: E731
    return {"kernels": tuple(space.kernels) if phase >= 1 else top(space.kernels),
            "se": (True, False) if phase >= 1 else (True,),
            "depths": tuple(range(space.min_depth, space.max_depth + 1)) if phase >= 2 else (space.max_depth,),
            "expands": tuple(space.expands) if phase >= 3 else top(space.expands),
            "widths": tuple(space.widths) if phase >= 4 else top(space.widths)}


def _genome(space: MobileSpace, ch: dict[str, tuple], pick: Callable[[tuple], Any], resolution: int) -> MobileGenome:
    stages = tuple(tuple(MobileBlock(kernel=pick(ch["kernels"]), expand=pick(ch["expands"]), se=pick(ch["se"]))
                         for _ in range(pick(ch["depths"]))) for _ in space.channels)
    return MobileGenome(resolution, pick(ch["widths"]), stages)


def sandwich(space: MobileSpace, phase: int, rng: random.Random, n_random: int) -> list[MobileGenome]:
    """The step's sub-networks: largest first (the teacher), then smallest and random ones."""
    ch = _choices(space, phase)
    if phase == 0:
        return [_genome(space, ch, max, rng.choice(space.resolutions))]
    out = [_genome(space, ch, max, max(space.resolutions)), _genome(space, ch, min, min(space.resolutions))]
    return out + [_genome(space, ch, rng.choice, rng.choice(space.resolutions)) for _ in range(n_random)]


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize to ``resolution`` (as the candidate trainer does)."""
    if x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A supernet checkpoint's contents; ``ValueError`` (one line) if it is missing or not one."""
    try:
        saved = torch.load(Path(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling raises many kinds
        raise ValueError(f"cannot read supernet checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a supernet checkpoint ({FORMAT})")
    return saved


def _optimizer(model: nn.Module, cfg: SupernetTrainConfig, phase: int) -> torch.optim.Optimizer:
    lr = cfg.learning_rate * (1.0 if phase == 0 else cfg.elastic_lr_factor)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def train_supernet(config: SupernetTrainConfig, *, checkpoint: str | Path, space: MobileSpace | None = None,
                   splits: DatasetSplits | None = None, resume: bool = True, max_steps: int | None = None,
                   device: str | torch.device = "cpu", log: Callable[[str], None] | None = None
                   ) -> SupernetTrainResult:
    """Train (or resume) a supernet of ``space`` (default: the ``mobile`` space's defaults).

    ``splits`` overrides loading ``config.dataset`` (then scoring needs the same splits passed
    to :class:`SupernetAccuracy`). Stops after all phases, after ``config.time_budget_s``
    seconds, or after ``max_steps`` steps in this call; the checkpoint is written at every
    epoch's end and on stopping. ``device``: where to train (``cuda`` untested here). With
    ``resume`` an existing checkpoint is continued; its settings must match ``config`` (the
    time budget aside).
    """
    path = Path(checkpoint)
    space = space or MobileSpace()
    saved = load_checkpoint(path) if resume and path.exists() else None
    if saved is not None:
        mine = asdict(replace(config, time_budget_s=None))
        theirs = {**saved["config"], "time_budget_s": None, "phase_epochs": tuple(saved["config"]["phase_epochs"])}
        if mine != theirs or saved["space"] != space_settings(space):
            raise ValueError(f"{path} was trained with other settings; pass resume=False or a new path")
    if splits is None:
        splits = load_dataset(config.dataset, seed=config.seed, val_fraction=config.val_fraction, limit=config.limit)
    torch.manual_seed(config.seed)  # initial weights
    model = MobileSupernet(space=space, task=splits.task)
    phase, epoch, batch, history, elapsed = 0, 0, 0, [], 0.0
    opt_state = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        phase, epoch, batch, history = saved["phase"], saved["epoch"], saved["batch"], saved["history"]
        opt_state, elapsed = saved["optimizer"], saved["train_time_s"]
    model.to(device)
    n = len(splits.train)
    bs = min(config.batch_size, n)
    per_epoch = math.ceil(n / bs)
    t0, steps = time.perf_counter() - elapsed, 0

    def state(opt: torch.optim.Optimizer | None, done: bool) -> dict[str, Any]:
        return {"format": FORMAT, "config": asdict(config), "space": space_settings(space),
                "task": asdict(splits.task), "data": splits.summary(), "model": model.state_dict(),
                "optimizer": None if opt is None else opt.state_dict(), "phase": phase, "epoch": epoch,
                "batch": batch, "done": done, "history": history, "train_time_s": time.perf_counter() - t0}

    stopped = False
    while phase < len(PHASES) and not stopped:
        epochs = config.phase_epochs[phase]
        if epoch == 0 and batch == 0 and PHASES[phase] == "expand":
            model.reorganize_channels()
        opt = _optimizer(model, config, phase)
        base_lr = opt.param_groups[0]["lr"]  # before loading a state that holds the scheduled lr
        if opt_state is not None:
            opt.load_state_dict(opt_state)
            opt_state = None
        total = max(1, epochs * per_epoch)
        model.train()
        while epoch < epochs and not stopped:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                config.seed * 1_000_003 + phase * 1009 + epoch))
            loss_sum = 0.0
            while batch < per_epoch:
                step = epoch * per_epoch + batch
                for g in opt.param_groups:
                    g["lr"] = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                x, y = (t.to(device) for t in splits.train.get_batch(order[batch * bs:(batch + 1) * bs]))
                rng = random.Random(f"{config.seed}:{phase}:{epoch}:{batch}")
                opt.zero_grad(set_to_none=True)
                teacher = None
                for i, genome in enumerate(sandwich(space, phase, rng, config.n_random)):
                    out = model(resize(x, genome.resolution), genome)
                    loss = F.cross_entropy(out, y)
                    if teacher is not None and config.distill > 0:
                        soft = -(F.softmax(teacher, 1) * F.log_softmax(out, 1)).sum(1).mean()
                        loss = loss + config.distill * soft
                    if i == 0:
                        teacher = out.detach()
                    if not torch.isfinite(loss):
                        raise RuntimeError(f"supernet training diverged in phase {PHASES[phase]}, step {step}")
                    loss.backward()
                    loss_sum += float(loss.detach())
                opt.step()
                batch, steps = batch + 1, steps + 1
                over = config.time_budget_s is not None and time.perf_counter() - t0 > config.time_budget_s
                if over or (max_steps is not None and steps >= max_steps):
                    stopped = True
                    break
            if batch >= per_epoch:
                history.append({"phase": phase, "epoch": epoch, "loss": loss_sum / per_epoch,
                                "time_s": time.perf_counter() - t0})
                if log:
                    log(f"supernet {PHASES[phase]} epoch {epoch + 1}/{epochs}: loss {loss_sum / per_epoch:.3f}, "
                        f"{time.perf_counter() - t0:.0f} s")
                epoch, batch = epoch + 1, 0
            _save(path, state(opt, False))
        if not stopped:
            phase, epoch, batch = phase + 1, 0, 0
            _save(path, state(None, phase >= len(PHASES)))
    return SupernetTrainResult(checkpoint=str(path), done=phase >= len(PHASES), phase=PHASES[min(phase, len(PHASES) - 1)],
                               steps=steps, train_time_s=time.perf_counter() - t0, history=history)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm's running statistics to the exact average over ``batches``.

    Returns the number of images seen; ``model`` is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    seen = 0
    for x in batches:
        model(x)
        seen += len(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return seen


class SupernetAccuracy:
    """Accuracy of mobile-space genomes with weights inherited from a trained supernet checkpoint."""

    def __init__(self, path: str | Path, *, splits: DatasetSplits | None = None,
                 recalibration_images: int | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        saved = load_checkpoint(path)
        cfg = saved["config"]
        self.space = MobileSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["space"].items()})
        self.splits = splits or load_dataset(cfg["dataset"], seed=cfg["seed"], val_fraction=cfg["val_fraction"],
                                             limit=cfg["limit"])
        task = TaskSpec(**saved["task"])
        if self.splits.summary() != saved["data"]:
            # Another split would score on images the supernet trained on.
            raise ValueError(f"supernet was trained on {saved['data']}, not {self.splits.summary()}")
        self.done = bool(saved["done"])
        self.supernet = MobileSupernet(space=self.space, task=task)
        self.supernet.load_state_dict(saved["model"])
        self.supernet.to(device).eval()
        self.device = device
        self.recalibration_images = int(recalibration_images or cfg["recalibration_images"])
        self.batch_size = batch_size
        n = min(self.recalibration_images, len(self.splits.train))
        # A fixed seeded subset, so a genome's score does not depend on what was scored before.
        self._calib = torch.randperm(len(self.splits.train), generator=torch.Generator().manual_seed(cfg["seed"]))[:n]

    def network(self, genome: MobileGenome) -> nn.Module:
        """The genome's stand-alone network with inherited, recalibrated weights (eval mode)."""
        net = self.supernet.extract(self.space.validate(genome))
        chunks = self._calib.split(self.batch_size)
        batches = (resize(self.splits.train.get_batch(c)[0].to(self.device), genome.resolution) for c in chunks)
        recalibrate_bn(net, batches)
        return net

    def score(self, genome: MobileGenome) -> float:
        """Validation accuracy (0..1) of ``genome`` with inherited weights, no training."""
        return evaluate(self.network(genome), self.splits.val, device=self.device, resize_to=genome.resolution)


def main(argv: list[str] | None = None) -> int:
    """``python -m search.training.supernet_train --dataset digits --out supernet.pt``."""
    from search.training.supernet_cli import add_arguments, run

    p = argparse.ArgumentParser(description="Train a once-for-all supernet for the mobile space.")
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        run(a)
    except ValueError as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
