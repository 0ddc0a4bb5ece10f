"""Training a candidate for accuracy: real PyTorch training with early stopping and a budget.

``train_candidate(model, splits, hparams)`` trains with the genome's hyperparameters (SGD with
momentum / Nesterov, Adam or AdamW; cosine or step learning-rate schedule; weight decay), keeps
the weights of the epoch with the best validation accuracy (restored into ``model`` at the
end), stops early after ``patience`` epochs without improvement or once ``time_budget_s`` is
spent, and raises :class:`TrainingError` when the loss diverges. It is deterministic for a
seed given the same initial weights; thread count is the caller's (``torch.set_num_threads``).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence

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

    def to_dict(self) -> dict[str, Any]:
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


def _prepare(x: torch.Tensor, device: str | torch.device, resize_to: int | None) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if resize_to is not None and x.shape[-1] != resize_to:
        x = F.interpolate(x, size=(resize_to, resize_to), mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def _eval(model: nn.Module, data: Dataset | Iterable, *, device: str | torch.device = "cpu",
          batch_size: int = 512, resize_to: int | None = None) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    batches = _batches(data, batch_size, shuffle=False, generator=None) if isinstance(data, Dataset) else data
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in batches:
        x, y = _prepare(x, device, resize_to), y.to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    if total == 0:
        raise TrainingError("evaluation data is empty")
    return correct / total, loss_sum / total


def evaluate(model: nn.Module, loader: Dataset | Iterable, *, device: str | torch.device = "cpu",
             resize_to: int | None = None) -> float:
    """Accuracy (0..1) of ``model`` on a dataset or an iterable of ``(x, y)`` batches."""
    return _eval(model, loader, device=device, resize_to=resize_to)[0]


def _optimizer(model: nn.Module, hp: TrainHParams) -> torch.optim.Optimizer:
    name = hp.optimizer.lower()
    lr, wd = float(hp.learning_rate), float(hp.weight_decay)
    momentum = float(getattr(hp, "momentum", 0.9))
    if name in ("sgd", "sgd-nesterov", "nesterov"):
        nesterov = bool(getattr(hp, "nesterov", name != "sgd" or momentum > 0))
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd,
                               nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}; known: sgd, sgd-nesterov, adam, adamw")


def _lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if schedule == "step":  # x0.1 at 50 % and 75 % of training
        return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
    if schedule in ("constant", "none"):
        return 1.0
    raise ValueError(f"unknown lr schedule {schedule!r}; known: cosine, step, constant")


def train_candidate(model: nn.Module, splits: Any, hparams: TrainHParams, *,
                    max_epochs: int | None = None, time_budget_s: float | None = None,
                    seed: int = 0, device: str | torch.device = "cpu", patience: int = 2,
                    resize_to: int | None = None, evaluate_test: bool = False,
                    restore_best: bool = True, callbacks: Sequence[EpochCallback] = (),
                    augment: AugmentSettings | None = None) -> TrainResult:
    """Train ``model`` on ``splits.train``, validate on ``splits.val`` after every epoch.

    max_epochs caps ``hparams.epochs``; time_budget_s stops training (mid-epoch too) once spent,
    after which the partial epoch is still validated; patience: epochs without a better
    validation accuracy before stopping; resize_to resizes inputs (e.g. 8x8 digits for a space
    built for 32x32). With ``restore_best`` the best epoch's weights end up in ``model``.
    callbacks: each one's ``on_epoch_end(model, epoch)`` runs after every validated epoch; any
    True stops training with stop reason ``"callback"`` (e.g. an Early-Bird ticket was drawn).
    augment: tensor augmentation applied to every training batch on ``device`` (seeded by ``seed``).
    Raises :class:`TrainingError` if the loss becomes NaN or infinite.
    """
    epochs = int(hparams.epochs if max_epochs is None else min(hparams.epochs, max_epochs))
    if epochs < 1:
        raise ValueError(f"need at least one epoch, got {epochs}")
    n_train = len(splits.train)
    batch_size = max(1, min(int(hparams.batch_size), n_train))
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = str(getattr(hparams, "lr_schedule", "cosine"))
    warmup = int(getattr(hparams, "warmup_epochs", 0)) * steps_per_epoch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # its own stream, so switching augmentation on leaves the batch order unchanged
    aug_gen = torch.Generator().manual_seed(seed + 1)
    model.to(device)
    model.train()
    opt = _optimizer(model, hparams)
    base_lrs = [g["lr"] for g in opt.param_groups]
    _lr_factor(schedule, 0, total_steps, warmup)  # validate the schedule name up front

    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    best_acc, best_loss, best_epoch, best_state = -1.0, math.inf, 0, None
    stop_reason, step, since_best = "completed", 0, 0
    for epoch in range(1, epochs + 1):
        loss_sum, correct, seen, out_of_time = 0.0, 0, 0, False
        for x, y in _batches(splits.train, batch_size, shuffle=True, generator=gen):
            f = _lr_factor(schedule, step, total_steps, warmup)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * f
            x, y = _prepare(x, device, resize_to), y.to(device)
            if augment is not None:
                x = augment_batch(x, augment, generator=aug_gen)
            out = model(x)
            loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"training diverged: loss is {loss.item()} at epoch {epoch}, step {step} "
                    f"(lr {hparams.learning_rate}, optimizer {hparams.optimizer})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                out_of_time = True
                break
        val_acc, val_loss = _eval(model, splits.val, device=device, resize_to=resize_to)
        if not math.isfinite(val_loss):
            raise TrainingError(f"training diverged: validation loss is {val_loss} at epoch {epoch}")
        history.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                        "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc,
                        "val_loss": val_loss, "lr": opt.param_groups[0]["lr"],
                        "time_s": time.perf_counter() - t0, "partial": float(out_of_time)})
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
        if epoch < epochs and since_best >= patience:
            stop_reason = "patience"
            break
    train_time = time.perf_counter() - t0
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    test_acc = None
    if evaluate_test and getattr(splits, "test", None) is not None:
        test_acc = evaluate(model, splits.test, device=device, resize_to=resize_to)
    return TrainResult(val_accuracy=best_acc, val_loss=best_loss, epochs=len(history),
                       best_epoch=best_epoch, train_time_s=train_time,
                       early_stopped=stop_reason != "completed", stop_reason=stop_reason,
                       history=history, test_accuracy=test_acc, hparams=asdict(hparams))
