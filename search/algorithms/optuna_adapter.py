"""Optuna's multi-objective samplers behind the ask/tell interface.

``optuna-nsga2`` wraps ``optuna.samplers.NSGAIISampler`` and ``optuna-tpe`` wraps
``optuna.samplers.TPESampler``, each with Optuna's default settings (NSGA-II population 50)
unless overridden. Optuna's ``study.ask()`` / ``study.tell()`` drive them; constraints go
through ``Trial.set_constraint`` (Optuna >= 5; one violation per constraint, > 0 = violated)
or, on Optuna 4, the sampler's ``constraints_func``.

Optional space protocol (spaces that want these algorithms implement it):

- ``space.suggest(trial: optuna.Trial) -> Genome``: draw a genome through ``trial.suggest_*``
  calls (for NAS-Bench-201: six ``suggest_categorical`` edges).
- ``space.optuna_params(genome) -> dict[str, Any]``: the parameters ``suggest`` would have
  drawn for ``genome``; needed only to feed results evaluated elsewhere (``observe``, resume)
  to the sampler. Without it such results still prevent duplicates but do not inform Optuna.

Duplicates: Optuna may propose a genome whose key was already evaluated. That Optuna trial is
then told the known result at once (what plain Optuna with a cached objective sees; it costs no
evaluation) and Optuna is asked again, up to ``max_retries`` times; after that the duplicate is
proposed (and evaluated) as Optuna wants. (Discarding duplicates as FAIL instead was tried: TPE
then re-proposes the same genomes even more often and runs slower.)
"""
from __future__ import annotations

import math
from typing import Any, Callable

from search.algorithms.base import Algorithm, Evaluated, Trial, register_algorithm
from search.spaces.base import Genome, SearchSpace

_VIOLATION_ATTR = "hwnas_violations"
#: Stand-in for an unknown (infinite) violation; Optuna needs finite numbers.
_BIG_VIOLATION = 1e12


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _constraints_func(frozen_trial) -> list[float]:
    return list(frozen_trial.user_attrs.get(_VIOLATION_ATTR, []))


def _nb201_suggest(trial: Any) -> Genome:
    from search.spaces.nb201 import EDGES, OPS, NB201Genome

    return NB201Genome(tuple(trial.suggest_categorical(f"edge_{frm}_{to}", list(OPS)) for to, frm in EDGES))


def _nb201_params(genome: Genome) -> dict[str, Any]:
    from search.spaces.nb201 import EDGES

    return {f"edge_{frm}_{to}": op for (to, frm), op in zip(EDGES, genome.ops)}


#: Optuna hooks for registered spaces that do not implement them themselves (by space name).
_ADAPTERS: dict[str, tuple[Callable[[Any], Genome], Callable[[Genome], dict[str, Any]]]] = {
    "nb201": (_nb201_suggest, _nb201_params),
}


def _hook(space: SearchSpace, name: str) -> Callable | None:
    fn = getattr(space, name, None)
    if fn is None and space.name in _ADAPTERS:
        fn = _ADAPTERS[space.name][0 if name == "suggest" else 1]
    return fn


def suggest_genome(space: SearchSpace, trial: Any) -> Genome:
    """``space.suggest(trial)`` (or the adapter for the space); a clear error when the space
    does not support Optuna."""
    fn = _hook(space, "suggest")
    if fn is None:
        raise TypeError(
            f"space {space.name or type(space).__name__!r} has no suggest(trial) method, "
            "so the Optuna algorithms cannot search it"
        )
    return fn(trial)


class OptunaAlgorithm(Algorithm):
    """Base of the Optuna-backed algorithms: subclasses build the sampler."""

    def __init__(
        self,
        *,
        max_retries: int = 10,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # space, objectives, constraints, seed
        if _hook(self.space, "suggest") is None:
            suggest_genome(self.space, None)  # raises the explanatory TypeError
        optuna = _optuna()
        self.max_retries = max_retries
        self._set_constraint = hasattr(optuna.trial.Trial, "set_constraint")
        legacy = self.constraints and not self._set_constraint
        sampler = self._make_sampler(optuna, self.seed, _constraints_func if legacy else None)
        self.study = optuna.create_study(
            directions=["maximize" if o.direction == "max" else "minimize" for o in self.objectives],
            sampler=sampler,
        )
        self._otrial: dict[int, Any] = {}  # our trial number -> optuna Trial
        self._known: dict[str, dict[str, float] | None] = {}  # key -> values of evaluated genomes
        self._asked: Any = None

    def _make_sampler(self, optuna, seed: int, constraints_func):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- proposal ---------------------------------------------------------------------------
    def ask(self) -> Trial:
        trial = super().ask()
        self._otrial[trial.number] = self._asked
        self._asked = None
        return trial

    def _propose(self) -> tuple[Genome, tuple[int, ...], str]:
        for attempt in range(self.max_retries + 1):
            ot = self.study.ask()
            genome = suggest_genome(self.space, ot)
            key = self.space.key(genome)
            if key not in self._known or attempt == self.max_retries:
                break
            # Answer from the cache, as plain Optuna with a cached objective would see it.
            self._tell_optuna(ot, self._known[key])
        self._asked = ot
        return genome, (), "sample"

    # -- results ----------------------------------------------------------------------------
    def _on_tell(self, ev: Evaluated) -> None:
        self._known[self.space.key(ev.trial.genome)] = ev.values
        ot = self._otrial.pop(ev.trial.number, None)
        if ot is None:
            ot = self._replay(ev.trial.genome)
            if ot is None:
                return
        self._tell_optuna(ot, ev.values)

    def _replay(self, genome: Genome):
        """An Optuna trial carrying ``genome``'s parameters (for results not asked here)."""
        params_fn = _hook(self.space, "optuna_params")
        if params_fn is None:
            return None
        self.study.enqueue_trial(params_fn(genome), skip_if_exists=False)
        ot = self.study.ask()
        if self.space.key(suggest_genome(self.space, ot)) != self.space.key(genome):
            raise ValueError("space.optuna_params(genome) does not reproduce the genome through suggest()")
        return ot

    def _tell_optuna(self, ot, values: dict[str, float] | None) -> None:
        optuna = _optuna()
        if values is None:
            self.study.tell(ot, state=optuna.trial.TrialState.FAIL)
            return
        if self.constraints:
            viol = [c.violation(values.get(c.name)) for c in self.constraints]
            viol = [v if math.isfinite(v) else _BIG_VIOLATION for v in viol]
            if self._set_constraint:
                for i, (c, v) in enumerate(zip(self.constraints, viol)):
                    ot.set_constraint(f"{i}:{c.name}{c.op}{c.bound:g}", v)
            else:
                ot.set_user_attr(_VIOLATION_ATTR, viol)
        self.study.tell(ot, [float(values[o.name]) for o in self.objectives])


@register_algorithm("optuna-nsga2")
class OptunaNSGA2(OptunaAlgorithm):
    """Optuna's ``NSGAIISampler`` (generational; population 50 by default)."""

    uses_population = True

    def __init__(
        self,
        *,
        population_size: int = 50,
        **common: Any,
    ) -> None:
        if population_size < 2:
            raise ValueError("population_size must be >= 2")
        self.population_size = population_size
        super().__init__(**common)  # space, objectives, constraints, seed, max_retries

    def _make_sampler(self, optuna, seed: int, constraints_func):
        return optuna.samplers.NSGAIISampler(
            population_size=self.population_size, seed=seed, constraints_func=constraints_func
        )


@register_algorithm("optuna-tpe")
class OptunaTPE(OptunaAlgorithm):
    """Optuna's ``TPESampler`` (multi-objective TPE, default settings)."""

    def _make_sampler(self, optuna, seed: int, constraints_func):
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints_func)
