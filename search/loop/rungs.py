"""Fidelity rungs: asynchronous successive halving (ASHA, Li et al. 2020) in its stopping form.

Candidates train at the lowest rung's budget first. When a candidate's rung is done (its accuracy
at that rung and its measured costs known), it is compared with every candidate that has finished
the same rung so far: it is promoted to the next rung when it is among the best
``max(1, n // eta)`` of those ``n`` by multi-objective rank (constraint-domination rank, then
crowding, as NSGA-II orders a population: :func:`search.pareto.rank_and_crowding`); otherwise it
stops there, and its accuracy is the one of that rung. This is the asynchronous rule of Optuna's
``SuccessiveHalvingPruner`` (no waiting for a rung to fill; the first arrival at a rung goes on),
so the loop never waits for a generation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from search.objectives import Constraint, Objective, total_violation
from search.pareto import minimization_matrix, rank_and_crowding


class RungLadder:
    """Who finished which rung with which values; :meth:`record` decides promotion."""

    def __init__(self, *, rungs: Sequence[int], eta: int, objectives: Sequence[Objective],
                 constraints: Sequence[Constraint] = ()) -> None:
        if len(rungs) < 1 or eta < 2:
            raise ValueError("need at least one rung and eta >= 2")
        self.rungs = tuple(int(r) for r in rungs)
        self.eta = int(eta)
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        #: per rung: candidate id -> its objective/constraint values at that rung
        self.seen: list[dict[int, dict[str, float]]] = [{} for _ in self.rungs]

    @property
    def top(self) -> int:
        """The last rung's index."""
        return len(self.rungs) - 1

    def epochs(self, rung: int) -> int:
        """The training budget (epochs, cumulative) of ``rung``."""
        return self.rungs[rung]

    def record(self, rung: int, cid: int, values: dict[str, float]) -> bool:
        """Record candidate ``cid``'s values at ``rung``; True when it is promoted (to ``rung + 1``)."""
        seen = self.seen[rung]
        seen[cid] = dict(values)
        if rung >= self.top:
            return False
        ids = list(seen)
        F = minimization_matrix([seen[i] for i in ids], self.objectives)
        cv = [total_violation(self.constraints, seen[i]) for i in ids]
        rank, crowd = rank_and_crowding(F, cv)
        order = np.lexsort((-crowd, rank))  # best first: rank, then the larger crowding
        position = int(np.flatnonzero(np.asarray(ids)[order] == cid)[0])
        return position < max(1, len(ids) // self.eta)
