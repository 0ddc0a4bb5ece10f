"""Test-only search spaces and benchmark problems for the search algorithms.

These spaces evolve plain vectors, not networks: they let the algorithms be checked on problems
whose optimum is known (ZDT1, a constrained variant, a small categorical problem) in
milliseconds. They are deliberately NOT registered with ``register_space`` so the space
conformance suite (which builds networks) does not enumerate them; ``build`` raises.

Objective names must be known metrics (see :mod:`search.objectives`), so the problems report
their values as ``latency_ms@f1`` / ``latency_ms@f2``: two minimised numbers with a key each.
"""
from __future__ import annotations

import math
import random
from typing import Any

from search.objectives import Objective
from search.spaces.base import Genome, SearchSpace, TaskSpec

#: The two minimised objectives every problem here reports.
F1, F2 = "latency_ms@f1", "latency_ms@f2"
OBJECTIVES = [Objective(F1, "min"), Objective(F2, "min")]


class _NumericSpace(SearchSpace):
    """Shared parts of the test spaces: JSON form and the refusal to build a network."""

    name = "test-numeric"

    def build(self, genome: Genome, task: TaskSpec) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is a numerical test space; it builds no network")


class RealVectorSpace(_NumericSpace):
    """Genome: a tuple of ``n`` floats in ``[0, 1]``.

    Variation: simulated binary crossover (SBX, ``eta_c``) per variable with probability 1/2,
    and polynomial mutation (``eta_m``) of each variable with probability ``1/n`` (at least one
    variable always mutates). Both are Deb's standard real-coded operators.
    """

    def __init__(self, *, n: int = 30, eta_c: float = 15.0, eta_m: float = 20.0) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.eta_c = eta_c
        self.eta_m = eta_m

    def sample(self, rng: random.Random) -> Genome:
        return tuple(rng.random() for _ in range(self.n))

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        x = list(genome)
        chosen = [i for i in range(self.n) if rng.random() < 1.0 / self.n] or [rng.randrange(self.n)]
        for i in chosen:
            # Deb's bounded polynomial mutation on [0, 1].
            u, eta = rng.random(), self.eta_m
            if u < 0.5:
                val = 2 * u + (1 - 2 * u) * (1 - x[i]) ** (eta + 1)
                dq = val ** (1 / (eta + 1)) - 1
            else:
                val = 2 * (1 - u) + 2 * (u - 0.5) * x[i] ** (eta + 1)
                dq = 1 - val ** (1 / (eta + 1))
            x[i] = min(1.0, max(0.0, x[i] + dq))
        return tuple(x)

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        child = []
        for xa, xb in zip(a, b):
            if rng.random() < 0.5 and abs(xa - xb) > 1e-14:
                u = rng.random()
                beta = (2 * u) ** (1 / (self.eta_c + 1)) if u <= 0.5 else (1 / (2 * (1 - u))) ** (1 / (self.eta_c + 1))
                c1 = 0.5 * ((1 + beta) * xa + (1 - beta) * xb)
                c2 = 0.5 * ((1 - beta) * xa + (1 + beta) * xb)
                child.append(min(1.0, max(0.0, c1 if rng.random() < 0.5 else c2)))
            else:
                child.append(xa)
        return tuple(child)

    def to_json(self, genome: Genome) -> dict[str, Any]:
        return {"x": [float(v) for v in genome]}

    def from_json(self, data: dict[str, Any]) -> Genome:
        x = data.get("x") if isinstance(data, dict) else None
        if not isinstance(x, list) or len(x) != self.n:
            raise ValueError(f"expected {{'x': [{self.n} floats]}}")
        if not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in x):
            raise ValueError("every x must be a number in [0, 1]")
        return tuple(float(v) for v in x)

    def suggest(self, trial: Any) -> Genome:
        """Optuna hook: one ``suggest_float`` per variable."""
        return tuple(trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(self.n))

    def optuna_params(self, genome: Genome) -> dict[str, Any]:
        """Optuna hook: the parameters :meth:`suggest` draws for ``genome``."""
        return {f"x{i}": float(v) for i, v in enumerate(genome)}


class CategoricalSpace(_NumericSpace):
    """Genome: a tuple of ``n`` choices in ``range(k)`` (NAS-Bench-201 is ``n=6, k=5``).

    Mutation changes one position to another value; crossover is uniform.
    """

    def __init__(self, *, n: int = 6, k: int = 5) -> None:
        if n < 1 or k < 2:
            raise ValueError("need n >= 1 and k >= 2")
        self.n = n
        self.k = k

    def sample(self, rng: random.Random) -> Genome:
        return tuple(rng.randrange(self.k) for _ in range(self.n))

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        x = list(genome)
        i = rng.randrange(self.n)
        x[i] = rng.choice([v for v in range(self.k) if v != x[i]])
        return tuple(x)

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        return tuple(xa if rng.random() < 0.5 else xb for xa, xb in zip(a, b))

    def to_json(self, genome: Genome) -> dict[str, Any]:
        return {"c": list(genome)}

    def from_json(self, data: dict[str, Any]) -> Genome:
        c = data.get("c") if isinstance(data, dict) else None
        if not isinstance(c, list) or len(c) != self.n or not all(
            isinstance(v, int) and 0 <= v < self.k for v in c
        ):
            raise ValueError(f"expected {{'c': [{self.n} ints in 0..{self.k - 1}]}}")
        return tuple(c)

    def suggest(self, trial: Any) -> Genome:
        """Optuna hook: one ``suggest_categorical`` per position."""
        return tuple(trial.suggest_categorical(f"c{i}", list(range(self.k))) for i in range(self.n))

    def optuna_params(self, genome: Genome) -> dict[str, Any]:
        """Optuna hook: the parameters :meth:`suggest` draws for ``genome``."""
        return {f"c{i}": int(v) for i, v in enumerate(genome)}


def zdt1(x: Genome) -> dict[str, float]:
    """ZDT1 (Zitzler, Deb, Thiele 2000): convex front ``f2 = 1 - sqrt(f1)`` at ``x[1:] = 0``."""
    f1 = float(x[0])
    g = 1.0 + 9.0 * sum(x[1:]) / (len(x) - 1)
    return {F1: f1, F2: g * (1.0 - math.sqrt(f1 / g))}


def zdt1_true_hv(ref: tuple[float, float] = (1.1, 1.1), n: int = 100_000) -> float:
    """Hypervolume of ZDT1's true front for ``ref`` (numerical integral of ``1 - sqrt(f1)``)."""
    # Area under ref and above the front: integrate (ref2 - f2(f1)) over f1 in [0, 1] + the strip.
    h = 1.0 / n
    area = sum((ref[1] - (1 - math.sqrt((i + 0.5) * h))) * h for i in range(n))
    return area + (ref[0] - 1.0) * ref[1]


def categorical_problem(c: Genome) -> dict[str, float]:
    """A small discrete bi-objective problem on :class:`CategoricalSpace` genomes: a "cost"
    growing with the choices and an "error" shrinking with them but penalising odd values, so
    the front is a staircase of a few dozen points."""
    cost = float(sum(v * (i + 1) for i, v in enumerate(c)))
    err = float(sum((len(c) - i) * (4 - v) ** 2 for i, v in enumerate(c)) + 3 * sum(v % 2 for v in c))
    return {F1: cost, F2: err}
