"""Regularized evolution (Real et al., AAAI 2019), asynchronous, multi-objective.

A FIFO population of the last ``population_size`` evaluated individuals (failed ones never
join, nor do NaN/infinite objectives; the oldest is removed when a new one arrives). The first ``population_size`` proposals
are random samples. Afterwards each proposal draws ``sample_size`` members uniformly at random
and mutates the tournament winner.

Multi-objective without a scalarisation: the winner is the sample member with the best
(constrained Pareto rank, crowding distance) computed *within the sample*, ties broken at
random. With one objective this is exactly Real et al.'s "best of the sample". A mutant whose
key was already evaluated or is pending is redrawn up to ``max_retries`` times.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from search.algorithms.base import Algorithm, Evaluated, register_algorithm
from search.algorithms.nsga2 import KeyTracker, usable
from search.pareto import rank_and_crowding
from search.spaces.base import Genome


@register_algorithm("regevo")
class RegularizedEvolution(Algorithm):
    """Aging evolution with a Pareto tournament; see the module docstring."""

    uses_population = True

    def __init__(
        self,
        *,
        population_size: int = 50,
        sample_size: int = 10,
        max_retries: int = 20,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # space, objectives, constraints, seed
        if population_size < 1 or not 1 <= sample_size <= population_size:
            raise ValueError("need population_size >= 1 and 1 <= sample_size <= population_size")
        self.population_size = population_size
        self.sample_size = sample_size
        self.max_retries = max_retries
        self.population: deque[Evaluated] = deque()
        self.keys = KeyTracker(self)
        self._n_ok = 0

    def _propose(self) -> tuple[Genome, tuple[int, ...], str]:
        n_ok = self._n_ok
        if not self.population or (n_ok < self.population_size
                                   and n_ok + len(self.pending) < self.population_size):
            return self.keys.fresh_sample(self.max_retries), (), "sample"
        child: Genome = None
        parent = None
        for _ in range(self.max_retries):
            parent = self._tournament()
            child = self.space.mutate(parent.trial.genome, self.rng)
            if not self.keys.seen(child):
                break
        else:
            fresh = self.keys.fresh_sample(self.max_retries)
            if not self.keys.seen(fresh):
                return fresh, (), "sample"
        return child, (parent.trial.number,), "mutate"

    def _tournament(self) -> Evaluated:
        k = min(self.sample_size, len(self.population))
        sample = self.rng.sample(list(self.population), k)
        ranks, crowd = rank_and_crowding([self.minimized(ev) for ev in sample],
                                         [ev.violation for ev in sample])
        best = min((ranks[i], -crowd[i]) for i in range(k))
        winners = [ev for i, ev in enumerate(sample) if (ranks[i], -crowd[i]) == best]
        return winners[self.rng.randrange(len(winners))]

    def _on_tell(self, ev: Evaluated) -> None:
        self.keys.add(ev)
        if not usable(self, ev):
            return
        self._n_ok += 1
        self.population.append(ev)
        while len(self.population) > self.population_size:
            self.population.popleft()
