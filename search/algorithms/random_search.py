"""Random search: independent samples from the space, without repeating an evaluated key."""
from __future__ import annotations

from search.algorithms.base import Algorithm, Evaluated, register_algorithm
from search.algorithms.nsga2 import KeyTracker
from search.objectives import Constraint, Objective
from search.spaces.base import Genome, SearchSpace


@register_algorithm("random")
class RandomSearch(Algorithm):
    """Uniform samples from ``space.sample``; a sample whose key was already evaluated or is
    pending is redrawn (up to ``max_retries`` times), so on a finite space this is sampling
    without replacement until the space is nearly exhausted."""

    def __init__(
        self,
        *,
        space: SearchSpace,
        objectives: list[Objective],
        constraints: list[Constraint] | None = None,
        seed: int = 0,
        max_retries: int = 20,
    ) -> None:
        super().__init__(space=space, objectives=objectives, constraints=constraints, seed=seed)
        self.max_retries = max_retries
        self.keys = KeyTracker(self)

    def _propose(self) -> tuple[Genome, tuple[int, ...], str]:
        return self.keys.fresh_sample(self.max_retries), (), "sample"

    def _on_tell(self, ev: Evaluated) -> None:
        self.keys.add(ev)
