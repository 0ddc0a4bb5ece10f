"""Search spaces: genomes, their variation operators and how they build into PyTorch.

A genome is a frozen, hashable value that serialises to JSON (``space.to_json`` /
``space.from_json``). A space is registered by name in :data:`SPACES` (a
:class:`~device_agent.plugins.PluginRegistry`; :func:`register_space` is its decorator) and built
through :func:`get_space`, so the CLI and the conformance suite enumerate every registered space.
"""
from __future__ import annotations

import dataclasses
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Hashable

from device_agent.plugins import PluginRegistry

Genome = Hashable


@dataclass(frozen=True)
class TaskSpec:
    """What the network is built for: input channels, square image size, number of classes."""

    in_channels: int
    image_size: int
    num_classes: int


#: learning-rate schedules the trainer knows (``search/training/train.py``)
SCHEDULES = ("cosine", "step", "onecycle", "constant")
#: optimizers the trainer knows
TRAIN_OPTIMIZERS = ("sgd", "sgd-nesterov", "adam", "adamw")

#: the fields added after the first stored genomes: a genome stored without them reads with
#: these values, which reproduce the training of that time (cosine, no warm-up, no smoothing,
#: no augmentation)
_LATER_FIELDS: dict[str, Any] = {"schedule": "cosine", "warmup_epochs": 0, "label_smoothing": 0.0,
                                 "augment": 0.0}


@dataclass(frozen=True)
class TrainHParams:
    """Training hyperparameters carried by a genome (MENNDL evolves these too); every field
    changes the training (see ``search/training/train.py``).

    schedule: cosine | step (x0.1 at 50 % and 75 %) | onecycle (up to ``learning_rate`` over the
    first 30 %, cosine down to 1/25,000) | constant; warmup_epochs: linear warm-up before it (not for
    onecycle, which warms up by itself); label_smoothing: of the cross-entropy; augment: strength
    0..1 of the training augmentation (0: none; random crop with ``round(augment * size / 8)``
    pixels of padding, horizontal flips where the dataset allows them).
    """

    learning_rate: float = 0.05
    batch_size: int = 64
    epochs: int = 3
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    augment: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} not in {SCHEDULES}")
        if self.optimizer not in TRAIN_OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} not in {TRAIN_OPTIMIZERS}")
        if not (0.0 <= self.label_smoothing < 1.0 and 0.0 <= self.augment <= 1.0 and self.warmup_epochs >= 0):
            raise ValueError(f"label_smoothing in [0, 1), augment in [0, 1], warmup_epochs >= 0: {self}")

    def to_json(self) -> dict[str, Any]:
        """JSON form (every field)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, h: dict[str, Any]) -> "TrainHParams":
        """Inverse of :meth:`to_json`; a genome stored before the later fields reads with their
        old behaviour (see ``_LATER_FIELDS``). Raises ``ValueError`` on bad values."""
        def num(v: Any, kind: type) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                raise ValueError(f"expected {kind.__name__}, got {v!r}")
            return kind(v)

        d = {**_LATER_FIELDS, **h}
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training hyperparameters {sorted(unknown)}")
        return cls(learning_rate=num(d["learning_rate"], float), batch_size=num(d["batch_size"], int),
                   epochs=num(d["epochs"], int), weight_decay=num(d["weight_decay"], float),
                   optimizer=str(d["optimizer"]), schedule=str(d["schedule"]),
                   warmup_epochs=num(d["warmup_epochs"], int), label_smoothing=num(d["label_smoothing"], float),
                   augment=num(d["augment"], float))

    def key_suffix(self) -> str:
        """The later fields that differ from their old default, for architecture keys (so the
        keys of stored genomes stay what they were)."""
        return "".join(f",{k}={getattr(self, k)!r}" for k, v in _LATER_FIELDS.items() if getattr(self, k) != v)


class SearchSpace(ABC):
    """Proposes, varies and builds genomes. Every operator returns a *valid* genome."""

    #: registry name, set by :func:`register_space`
    name: str = ""

    @abstractmethod
    def sample(self, rng: random.Random) -> Genome:
        """Draw a random valid genome."""

    @abstractmethod
    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """Return a valid genome that differs from ``genome`` (when the space allows)."""

    @abstractmethod
    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        """Return a valid child combining ``a`` and ``b``."""

    @abstractmethod
    def to_json(self, genome: Genome) -> dict[str, Any]:
        """JSON-serialisable form; ``from_json(to_json(g)) == g``."""

    @abstractmethod
    def from_json(self, data: dict[str, Any]) -> Genome:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on invalid input."""

    def _mutate_until_changed(self, genome: Genome, edit: Any, rng: random.Random, tries: int = 20) -> Genome:
        """``edit(genome, rng)`` until the genome changes (``tries`` at most), validated; the
        unchanged genome when no edit changed it."""
        self.validate(genome)  # type: ignore[attr-defined]
        for _ in range(tries):
            child = edit(genome, rng)
            if child != genome:
                return self.validate(child)  # type: ignore[attr-defined]
        return genome

    def key(self, genome: Genome) -> str:
        """Canonical string identifying the architecture (e.g. the NAS-Bench-201 string)."""
        import json

        return json.dumps(self.to_json(genome), sort_keys=True, separators=(",", ":"))

    @abstractmethod
    def build(self, genome: Genome, task: TaskSpec) -> "Any":
        """Build a ``torch.nn.Module`` for ``task`` (imports torch lazily)."""

    def input_shape(self, genome: Genome, task: TaskSpec) -> tuple[int, int, int, int]:
        """Shape ``(1, C, H, W)`` of one input; spaces that evolve resolution override it."""
        return (1, task.in_channels, task.image_size, task.image_size)

    def hparams(self, genome: Genome) -> TrainHParams | None:
        """Training hyperparameters the genome carries, or ``None`` to use the run's defaults."""
        return None


#: every search space, by name (built-ins imported on first use)
SPACES: PluginRegistry[type[SearchSpace]] = PluginRegistry("search space", base=SearchSpace, modules={
    "menndl": "search.spaces.menndl",
    "nb201": "search.spaces.nb201",
    "mobile": "search.spaces.mobile",
})

#: class decorator: register a space under a name (``@register_space("mine")``)
register_space = SPACES.register


#: names of every known space
list_spaces = SPACES.names


def get_space(name: str, **kwargs: Any) -> SearchSpace:
    """Build the space ``name`` with its options."""
    return SPACES.get(name)(**kwargs)
