"""Training a candidate for accuracy: real PyTorch training with early stopping and a budget.

``train_candidate(model, splits, hparams)`` trains with every hyperparameter the genome carries
(SGD with momentum, Nesterov SGD, Adam or AdamW; cosine, step, one-cycle or constant schedule
with linear warm-up; weight decay; label smoothing; augmentation strength), keeps the weights of
the epoch with the best validation accuracy (restored into ``model`` at the end), stops early
after ``patience`` epochs without improvement or once ``time_budget_s`` is spent, and raises
:class:`TrainingError` when the loss diverges.

On ``cuda`` it trains with mixed precision (fp16 autocast and a gradient scaler), channels_last
memory format and pinned host batches (cudnn autotuning is the worker's, see
:mod:`search.training.devices`). It is deterministic for a seed given the same initial weights
on one thread; the thread count is the caller's (``torch.set_num_threads``).
``on_epoch(record)`` is called after every epoch with the epoch's history record (epoch,
epochs, images/s, validation accuracy): the progress a person follows.

It reads ``splits.train`` and ``splits.val`` only; ``splits.test`` only with ``evaluate_test``,
which the search never passes (test accuracy is measured once, after the search).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from search.spaces.base import TrainHParams
from search.training.augment import AugmentSettings, augment_batch


class EpochCallback(Protocol):
    """A per-epoch hook: ``on_epoch_end(model, epoch)`` returns True to stop training."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> bool: ...


class TrainingError(RuntimeError):
    """Training failed in a way that makes the candidate unusable (e.g. the loss diverged)."""


@dataclass
class TrainResult:
    """Outcome of training one candidate; ``val_accuracy`` (0..1) is that of the best epoch."""

    val_accuracy: float
    val_loss: float
    epochs: int
    best_epoch: int
    train_time_s: float
    early_stopped: bool
    stop_reason: str  # "completed" | "patience" | "time_budget" | "callback"
    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    #: training images per second over the whole run (validation excluded), and where it ran
    images_per_s: float = 0.0
    train_images: int = 0
    device: str = "cpu"
    amp: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (stored with the candidate)."""
        return asdict(self)


def _batches(ds: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``ds``; in-memory datasets (``get_batch``) skip the DataLoader."""
    if hasattr(ds, "get_batch"):
        n = len(ds)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            yield ds.get_batch(order[i:i + batch_size])  # type: ignore[attr-defined]
    else:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


@dataclass(frozen=True)
class _Placement:
    """Where and how batches run: device, mixed precision, memory format, input resize."""

    device: torch.device
    resize_to: int | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cuda:  # pinned host memory makes the copy asynchronous
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.resize_to is not None and x.shape[-1] != self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def autocast(self) -> Any:
        """fp16 autocast on CUDA; a no-op context on CPU (fp32)."""
        return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.cuda)


def genome_augment(strength: float, image_size: int, *, flip: bool) -> AugmentSettings | None:
    """The augmentation of a genome's strength (0..1): random crop with ``round(strength *
    size / 8)`` pixels of padding (4 at full strength on 32x32), and horizontal flips where the
    dataset allows them; None at strength 0."""
    if strength <= 0:
        return None
    return AugmentSettings(crop_padding=round(strength * image_size / 8), flip=flip, cutout=0)


def _image_size(ds: Any) -> int:
    x = getattr(ds, "x", None)
    return int(x.shape[-1]) if x is not None else int(ds[0][0].shape[-1])


@torch.no_grad()
def _eval(model: nn.Module, data: Dataset | Iterable, place: _Placement, batch_size: int = 512
          ) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    batches = _batches(data, batch_size, shuffle=False, generator=None) if isinstance(data, Dataset) else data
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in batches:
        x, y = place.prepare(x, y)
        with place.autocast():
            out = model(x)
        loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    if total == 0:
        raise TrainingError("evaluation data is empty")
    return correct / total, loss_sum / total


def evaluate(model: nn.Module, loader: Dataset | Iterable, *, device: str | torch.device = "cpu",
             resize_to: int | None = None) -> float:
    """Accuracy (0..1) of ``model`` on a dataset or an iterable of ``(x, y)`` batches."""
    model.to(device)
    return _eval(model, loader, _Placement(torch.device(device), resize_to))[0]


def _optimizer(model: nn.Module, hp: TrainHParams) -> torch.optim.Optimizer:
    name = hp.optimizer.lower()
    lr, wd = float(hp.learning_rate), float(hp.weight_decay)
    if name in ("sgd", "sgd-nesterov"):
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd,
                               nesterov=name == "sgd-nesterov")
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}; known: sgd, sgd-nesterov, adam, adamw")


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """The learning rate at ``step`` of ``total`` as a fraction of the genome's: linear warm-up
    over ``warmup`` steps, then the schedule (one-cycle brings its own warm-up: 30 % of the
    steps from 1/25 up, then cosine down to 1/25,000, as ``torch.optim.lr_scheduler.OneCycleLR``)."""
    if schedule == "onecycle":
        up = max(1, round(0.3 * total))
        if step < up:
            return 0.04 + 0.96 * 0.5 * (1.0 - math.cos(math.pi * step / up))
        t = min(1.0, (step - up) / max(1, total - up))
        return 4e-5 + (1.0 - 4e-5) * 0.5 * (1.0 + math.cos(math.pi * t))
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if schedule == "step":  # x0.1 at 50 % and 75 % of training
        return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule {schedule!r}; known: cosine, step, onecycle, constant")


def train_candidate(model: nn.Module, splits: Any, hparams: TrainHParams, *,
                    max_epochs: int | None = None, time_budget_s: float | None = None,
                    seed: int = 0, device: str | torch.device = "cpu", patience: int | None = 2,
                    resize_to: int | None = None, evaluate_test: bool = False,
                    restore_best: bool = True, flip: bool = False,
                    on_epoch: Callable[[dict[str, float]], None] | None = None,
                    callbacks: Sequence[EpochCallback] = (),
                    augment: AugmentSettings | None = None) -> TrainResult:
    """Train ``model`` on ``splits.train``, validate on ``splits.val`` after every epoch.

    max_epochs caps ``hparams.epochs``; time_budget_s stops training (mid-epoch too) once spent,
    after which the partial epoch is still validated; patience: epochs without a better
    validation accuracy before stopping (None: never); resize_to resizes inputs (e.g. 8x8
    digits for a space built for 32x32); flip: horizontal flips are part of the augmentation
    (not for digits). With ``restore_best`` the best epoch's weights end up in ``model``.
    callbacks: each one's ``on_epoch_end(model, epoch)`` runs after every validated epoch; any
    True stops training with stop reason ``"callback"`` (e.g. an Early-Bird ticket was drawn).
    augment: tensor augmentation applied to every training batch on ``device`` (seeded by
    ``seed``); default: the genome's strength (``hparams.augment``, see :func:`genome_augment`).
    Raises :class:`TrainingError` if the loss becomes NaN or infinite.
    """
    epochs = int(hparams.epochs if max_epochs is None else min(hparams.epochs, max_epochs))
    if epochs < 1:
        raise ValueError(f"need at least one epoch, got {epochs}")
    n_train = len(splits.train)
    batch_size = max(1, min(int(hparams.batch_size), n_train))
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = hparams.schedule
    warmup = int(hparams.warmup_epochs) * steps_per_epoch
    lr_factor(schedule, 0, total_steps, warmup)  # validate the schedule name up front

    place = _Placement(torch.device(device), resize_to)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # its own stream, so switching augmentation on leaves the batch order unchanged
    aug_gen = torch.Generator().manual_seed(seed + 1)
    if augment is None:
        augment = genome_augment(hparams.augment, resize_to or _image_size(splits.train), flip=flip)
    model.to(place.device)
    if place.cuda:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = _optimizer(model, hparams)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(schedule, s, total_steps, warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=place.cuda)

    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    best_acc, best_loss, best_epoch, best_state = -1.0, math.inf, 0, None
    stop_reason, step, since_best, images, train_s = "completed", 0, 0, 0, 0.0
    for epoch in range(1, epochs + 1):
        loss_sum, correct, seen, out_of_time = 0.0, 0, 0, False
        t_epoch = time.perf_counter()
        lr_now = opt.param_groups[0]["lr"]
        for x, y in _batches(splits.train, batch_size, shuffle=True, generator=gen):
            x, y = place.prepare(x, y)
            if augment is not None:
                x = augment_batch(x, augment, generator=aug_gen)
            with place.autocast():
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=hparams.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"training diverged: loss is {loss.item()} at epoch {epoch}, step {step} "
                    f"(lr {hparams.learning_rate}, optimizer {hparams.optimizer})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lr_now = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                out_of_time = True
                break
        epoch_s = time.perf_counter() - t_epoch
        images, train_s = images + seen, train_s + epoch_s
        val_acc, val_loss = _eval(model, splits.val, place)
        if not math.isfinite(val_loss):
            raise TrainingError(f"training diverged: validation loss is {val_loss} at epoch {epoch}")
        record = {"epoch": epoch, "epochs": epochs, "train_loss": loss_sum / max(seen, 1),
                  "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc, "val_loss": val_loss,
                  "lr": lr_now, "images_per_s": seen / epoch_s if epoch_s > 0 else 0.0,
                  "time_s": time.perf_counter() - t0, "partial": float(out_of_time)}
        history.append(record)
        if on_epoch is not None:
            on_epoch(dict(record))
        if val_acc > best_acc:
            best_acc, best_loss, best_epoch, since_best = val_acc, val_loss, epoch, 0
            if restore_best:
                best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if out_of_time:
            stop_reason = "time_budget"
            break
        # every callback sees every epoch (no short-circuit), so detectors keep full histories
        if any([cb.on_epoch_end(model, epoch) for cb in callbacks]):
            stop_reason = "callback"
            break
        if patience is not None and epoch < epochs and since_best >= patience:
            stop_reason = "patience"
            break
    train_time = time.perf_counter() - t0
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    test_acc = None
    if evaluate_test and getattr(splits, "test", None) is not None:
        test_acc = _eval(model, splits.test, place)[0]
    return TrainResult(val_accuracy=best_acc, val_loss=best_loss, epochs=len(history),
                       best_epoch=best_epoch, train_time_s=train_time,
                       early_stopped=stop_reason != "completed", stop_reason=stop_reason,
                       history=history, test_accuracy=test_acc, hparams=asdict(hparams),
                       images_per_s=images / train_s if train_s > 0 else 0.0, train_images=images,
                       device=str(place.device),
                       amp=place.cuda)
