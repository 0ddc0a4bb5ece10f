"""Random search: independent samples from the space, without repeating an evaluated key."""
from __future__ import annotations

from typing import Any

from search.algorithms.base import Algorithm, Evaluated, register_algorithm
from search.algorithms.nsga2 import KeyTracker
from search.spaces.base import Genome


@register_algorithm("random")
class RandomSearch(Algorithm):
    """Uniform samples from ``space.sample``; a sample whose key was already evaluated or is
    pending is redrawn (up to ``max_retries`` times), so on a finite space this is sampling
    without replacement until the space is nearly exhausted."""

    def __init__(
        self,
        *,
        max_retries: int = 20,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # space, objectives, constraints, seed
        self.max_retries = max_retries
        self.keys = KeyTracker(self)

    def _propose(self) -> tuple[Genome, tuple[int, ...], str]:
        return self.keys.fresh_sample(self.max_retries), (), "sample"

    def _on_tell(self, ev: Evaluated) -> None:
        self.keys.add(ev)
