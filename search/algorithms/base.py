"""The ask/tell interface every search algorithm implements.

An algorithm only proposes: ``trial = algo.ask()`` gives a genome to evaluate,
``algo.tell(trial.number, values)`` reports its objective values (or ``None`` for a failed
candidate). It never touches the network, the store or a device; the same algorithm runs with a
local evaluator in a test and with the agent fleet in production. Asynchronous use is the
default: several trials may be outstanding at once and are told in any order.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from device_agent.plugins import PluginRegistry

from search.objectives import Constraint, Objective, total_violation
from search.spaces.base import Genome, SearchSpace


@dataclass(frozen=True)
class Trial:
    """One proposal: a sequence ``number``, the genome and the parents' trial numbers."""

    number: int
    genome: Genome
    parents: tuple[int, ...] = ()
    origin: str = "sample"  # sample | mutate | crossover | observed


@dataclass
class Evaluated:
    """A finished trial as the algorithm keeps it."""

    trial: Trial
    values: dict[str, float] | None  # None: the candidate failed
    violation: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.values is None


class Algorithm(ABC):
    """Base class: bookkeeping of trials; subclasses implement :meth:`_propose` and may
    override :meth:`_on_tell`."""

    name: str = ""
    #: True: the constructor takes ``population_size`` (given from :class:`AlgorithmOptions`)
    uses_population: bool = False

    def __init__(
        self,
        *,
        space: SearchSpace,
        objectives: list[Objective],
        constraints: list[Constraint] | None = None,
        seed: int = 0,
    ) -> None:
        if not objectives:
            raise ValueError("at least one objective is required")
        self.space = space
        self.objectives = list(objectives)
        self.constraints = list(constraints or [])
        self.seed = seed
        self.rng = random.Random(seed)
        self._next = 0
        self.pending: dict[int, Trial] = {}
        self.history: list[Evaluated] = []

    # -- public lifecycle -------------------------------------------------------------------
    def ask(self) -> Trial:
        """Propose the next trial."""
        genome, parents, origin = self._propose()
        trial = Trial(number=self._next, genome=genome, parents=tuple(parents), origin=origin)
        self._next += 1
        self.pending[trial.number] = trial
        return trial

    def tell(self, number: int, values: dict[str, float] | None) -> None:
        """Report the objective values of trial ``number`` (``None`` if it failed)."""
        trial = self.pending.pop(number, None)
        if trial is None:
            raise KeyError(f"trial {number} is not pending")
        self._record(trial, values)

    def observe(self, genome: Genome, values: dict[str, float] | None, *, number: int | None = None,
                parents: tuple[int, ...] = ()) -> Trial:
        """Add a result evaluated elsewhere (e.g. from a resumed store) without ``ask``."""
        if number is None:
            number = self._next
        self._next = max(self._next, number + 1)
        trial = Trial(number=number, genome=genome, parents=parents, origin="observed")
        self._record(trial, values)
        return trial

    def reserve(self, number: int, genome: Genome, parents: tuple[int, ...] = ()) -> Trial:
        """Mark a trial proposed in an earlier process as pending again (resume)."""
        self._next = max(self._next, number + 1)
        trial = Trial(number=number, genome=genome, parents=parents, origin="observed")
        self.pending[number] = trial
        return trial

    @classmethod
    def from_options(cls, options: "AlgorithmOptions") -> "Algorithm":
        """Build from :class:`AlgorithmOptions` (a population-based class adds its size)."""
        extra = {"population_size": options.population_size} if cls.uses_population else {}
        return cls(space=options.space, objectives=list(options.objectives),
                   constraints=list(options.constraints), seed=options.seed, **extra)

    # -- helpers for subclasses -------------------------------------------------------------
    def _record(self, trial: Trial, values: dict[str, float] | None) -> None:
        if values is not None:
            missing = [o.name for o in self.objectives if o.name not in values]
            if missing:
                raise ValueError(f"trial {trial.number}: missing objective values {missing}")
        violation = total_violation(self.constraints, values) if values is not None else float("inf")
        ev = Evaluated(trial=trial, values=values, violation=violation)
        self.history.append(ev)
        self._on_tell(ev)

    def minimized(self, ev: Evaluated) -> list[float]:
        """Objective vector of ``ev`` on a to-be-minimised scale."""
        assert ev.values is not None
        return [o.minimized(float(ev.values[o.name])) for o in self.objectives]

    def _on_tell(self, ev: Evaluated) -> None:
        """Hook called after every recorded result."""

    @abstractmethod
    def _propose(self) -> tuple[Genome, tuple[int, ...], str]:
        """Return ``(genome, parent trial numbers, origin)``."""


@dataclass(frozen=True)
class AlgorithmOptions:
    """Everything an algorithm is built from; each class takes what it uses
    (:meth:`Algorithm.from_options`)."""

    space: SearchSpace
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    seed: int = 0
    #: for the population-based algorithms (NSGA-II, regularized evolution, Optuna's NSGA-II)
    population_size: int = 12


#: every algorithm, by name (built-ins imported on first use)
ALGORITHMS: PluginRegistry[type[Algorithm]] = PluginRegistry("algorithm", base=Algorithm, modules={
    "nsga2": "search.algorithms.nsga2",
    "random": "search.algorithms.random_search",
    "regevo": "search.algorithms.regevo",
    "optuna-nsga2": "search.algorithms.optuna_adapter",
    "optuna-tpe": "search.algorithms.optuna_adapter",
})

#: class decorator: register an algorithm under a name (``@register_algorithm("mine")``)
register_algorithm = ALGORITHMS.register


#: every known algorithm name
list_algorithms = ALGORITHMS.names


def get_algorithm(name: str, **kwargs) -> Algorithm:
    """Build the algorithm ``name`` with keyword arguments (its constructor's)."""
    return ALGORITHMS.get(name)(**kwargs)


def create_algorithm(name: str, options: AlgorithmOptions) -> Algorithm:
    """Build the algorithm ``name`` from one options object (what the search loop does)."""
    return ALGORITHMS.get(name).from_options(options)
