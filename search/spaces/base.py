"""Search spaces: genomes, their variation operators and how they build into PyTorch.

A genome is a frozen, hashable value that serialises to JSON (``space.to_json`` /
``space.from_json``). A space is registered by name in :data:`SPACES` (a
:class:`~device_agent.plugins.PluginRegistry`; :func:`register_space` is its decorator) and built
through :func:`get_space`, so the CLI and the conformance suite enumerate every registered space.
"""
from __future__ import annotations

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


@dataclass(frozen=True)
class TrainHParams:
    """Training hyperparameters carried by a genome (MENNDL evolves these too)."""

    learning_rate: float = 0.05
    batch_size: int = 64
    epochs: int = 3
    weight_decay: float = 5e-4
    optimizer: str = "sgd"


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
