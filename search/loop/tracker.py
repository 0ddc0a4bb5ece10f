"""The candidate tracker: every unfinished candidate's state, and the one way each one ends.

A candidate goes through these states (the run store keeps the durable part of it)::

    proposed -> training -> trained -> measuring -> done
                    \\                       \\
                     `-> failed              `-> failed

``proposed``: the algorithm asked for it and the store has its row; ``training``: an evaluator
works on it; ``trained``: accuracy (and ONNX file) known, measurement jobs written;
``measuring``: jobs out at the agents; ``done`` / ``failed``: told to the algorithm and
forgotten here; ``screened``: a cost predictor ruled it out in the training thread before
training (:meth:`CandidateTracker.screen`, :mod:`search.loop.screening`). Later stages slot in
as states of their own: ``infeasible`` (an untrained ONNX measured over a constraint),
``promoted`` (a fidelity rung passed it on). Whatever the path, a candidate leaves through
:meth:`CandidateTracker.finish`, :meth:`CandidateTracker.fail` or :meth:`CandidateTracker.screen`,
which write the store, tell
the algorithm and drop the candidate's state.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from search.algorithms.base import Algorithm
from search.loop.store import Store
from search.metrics import CATALOGUE
from search.objectives import Constraint, Objective, split_metric


class State(str, enum.Enum):
    """A candidate's state in the loop (``str`` so that it prints and compares as its name)."""

    PROPOSED = "proposed"
    TRAINING = "training"
    TRAINED = "trained"
    MEASURING = "measuring"
    DONE = "done"
    FAILED = "failed"
    # for the stages later issues add (cost-first screening, fidelity rungs)
    SCREENED = "screened"
    INFEASIBLE = "infeasible"
    PROMOTED = "promoted"


#: the transitions the tracker allows (a state missing here has none yet)
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PROPOSED: frozenset({State.TRAINING, State.FAILED}),
    # training -> screened: the cost model ruled it out in the training thread, before training
    State.TRAINING: frozenset({State.TRAINED, State.FAILED, State.SCREENED}),
    State.TRAINED: frozenset({State.MEASURING, State.FAILED}),
    # cost first: measured untrained -> infeasible, or on to training; rungs: promoted
    State.MEASURING: frozenset({State.DONE, State.FAILED, State.INFEASIBLE, State.TRAINING, State.PROMOTED}),
    State.PROMOTED: frozenset({State.TRAINING, State.FAILED}),
}


def job_id(cid: int, device_key: str) -> str:
    """The id of candidate ``cid``'s measurement job on ``device_key``."""
    return f"c{cid}-{device_key}"


@dataclass
class Candidate:
    """What the loop knows of one unfinished candidate."""

    id: int
    genome: Any
    arch_key: str
    state: State = State.PROPOSED
    #: the training row's fields (``train``, ``params``, ``size_mb``, ``model_sha256``)
    train: dict[str, Any] | None = None
    params: int | None = None
    size_mb: float | None = None
    model_sha256: str | None = None
    #: device keys whose measurement is still out
    pending: set[str] = field(default_factory=set)
    #: device key -> measurement result (None: the job finished without an ok result)
    results: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    #: the first measurement error; the candidate fails once nothing is pending
    error: str | None = None
    #: cost first: the measurements out are of the untrained network (training comes after)
    costs_only: bool = False
    #: fidelity rungs: the rung of its latest training (0-based)
    rung: int = 0

    def row(self) -> dict[str, Any]:
        """The candidate-row view the metric catalogue reads (``train``, ``params``, ``size_mb``)."""
        return {"train": self.train, "params": self.params, "size_mb": self.size_mb}


class CandidateTracker:
    """Owns the state of every unfinished candidate; ``on_closed(candidate)`` runs after each
    finish or failure (the progress bar)."""

    def __init__(self, *, store: Store, algorithm: Algorithm, objectives: Iterable[Objective],
                 constraints: Iterable[Constraint],
                 on_closed: Callable[[Candidate], None] | None = None) -> None:
        self.store = store
        self.algorithm = algorithm
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.on_closed = on_closed
        self._cands: dict[int, Candidate] = {}

    # ------------------------------------------------------------------------------ queries
    def __contains__(self, cid: object) -> bool:
        return cid in self._cands

    def __getitem__(self, cid: int) -> Candidate:
        return self._cands[cid]

    def count(self, *states: State) -> int:
        """How many unfinished candidates are in one of ``states``."""
        return sum(1 for c in self._cands.values() if c.state in states)

    def __len__(self) -> int:
        return len(self._cands)

    # -------------------------------------------------------------------------- transitions
    def _move(self, cand: Candidate, to: State) -> None:
        if to not in TRANSITIONS.get(cand.state, frozenset()):
            raise RuntimeError(f"candidate {cand.id}: no transition {cand.state.value} -> {to.value}")
        cand.state = to

    def add(self, cid: int, genome: Any, arch_key: str, *, state: State = State.PROPOSED,
            row: dict[str, Any] | None = None) -> Candidate:
        """Track a candidate; ``row`` (a resumed store row) restores its training fields."""
        cand = Candidate(id=cid, genome=genome, arch_key=arch_key, state=state)
        if row is not None:
            cand.train, cand.params, cand.size_mb = row.get("train"), row.get("params"), row.get("size_mb")
            cand.model_sha256 = row.get("model_sha256")
        self._cands[cid] = cand
        return cand

    def training(self, cid: int) -> None:
        """An evaluator took the candidate."""
        self._move(self._cands[cid], State.TRAINING)

    def trained(self, cid: int, *, train: dict[str, Any], params: int | None, size_mb: float | None,
                model_sha256: str | None, device_keys: Iterable[str]) -> Candidate:
        """The evaluator's answer: store it with one queued job per device key."""
        cand = self._cands[cid]
        self._move(cand, State.TRAINED)
        jobs = [(job_id(cid, k), k) for k in device_keys]
        if cand.costs_only:  # the untrained network: jobs only, the row stays pending until trained
            self.store.add_jobs(cid, jobs)
        else:
            self.store.set_trained(cid, train=train, model_sha256=model_sha256, params=params, size_mb=size_mb,
                                   jobs=jobs)
        cand.train, cand.params, cand.size_mb, cand.model_sha256 = train, params, size_mb, model_sha256
        return cand

    def measuring(self, cid: int, keys: Iterable[str]) -> None:
        """Jobs on ``keys`` are out at the agents (the others are already in ``results``)."""
        cand = self._cands[cid]
        self._move(cand, State.MEASURING)
        cand.pending = set(keys)

    def measured(self, cid: int, key: str, result: dict[str, Any] | None, error: str | None) -> None:
        """One device key's measurement came back (``error`` set when it failed for good)."""
        cand = self._cands.get(cid)
        if cand is None:  # already closed (a duplicate answer of a straggler job)
            return
        cand.pending.discard(key)
        if error is not None or result is None:
            cand.error = cand.error or f"measurement on {key} failed: {error}"
        else:
            cand.results[key] = result

    def settle(self, cid: int) -> bool:
        """Close a measuring candidate whose jobs are all back; True when it was closed."""
        cand = self._cands.get(cid)
        if cand is None or cand.state is not State.MEASURING or cand.pending:
            return False
        if cand.error is not None:
            self.fail(cid, cand.error)
        elif cand.costs_only:  # cost first: the runner decides (infeasible or on to training)
            return False
        else:
            self.finish(cid)
        return True

    # ---------------------------------------------------------------------- the two exits
    def values(self, cid: int, *, costs_only: bool = False) -> tuple[dict[str, float], str | None]:
        """The candidate's objective and constraint values from the metric catalogue, and the
        error naming the first missing one (None when all are there). ``costs_only``: only the
        metrics that do not need training (accuracy is left out)."""
        cand = self._cands[cid]
        values: dict[str, float] = {}
        for item in [*self.objectives, *self.constraints]:
            metric, key = split_metric(item.name)
            if costs_only and CATALOGUE[metric].kind == "measured" and CATALOGUE[metric].source == "train":
                continue
            v = CATALOGUE[metric].read(cand.row(), cand.results.get(key) if key is not None else None)
            if v is None:
                err = f"{item.name} is unavailable for this candidate"
                if metric.startswith("energy"):
                    err += " (the agent's device has no power sensor; energy is never invented)"
                return values, err
            values[item.name] = float(v)
        return values, None

    def finish(self, cid: int) -> None:
        """The one finish path: objective values from the metric catalogue, or a failure when
        one is missing (energy without a power sensor is never invented)."""
        cand = self._cands[cid]
        values, err = self.values(cid)
        if err is not None:
            self.fail(cid, err)
            return
        self._move(cand, State.DONE)
        self.store.finish_candidate(cid, objectives=values)
        self.algorithm.tell(cid, values)
        self._close(cand)

    def costs_measured(self, cid: int) -> bool:
        """Cost first: every measurement of the untrained network is back (and none failed)."""
        cand = self._cands.get(cid)
        return (cand is not None and cand.state is State.MEASURING and cand.costs_only and not cand.pending
                and cand.error is None)

    def infeasible(self, cid: int, costs: dict[str, float], reason: str) -> None:
        """Cost first: the untrained network's measured ``costs`` violate a constraint. Stored
        with its costs, never trained; the algorithm is told it failed (no accuracy exists)."""
        cand = self._cands[cid]
        self._move(cand, State.INFEASIBLE)
        self.store.infeasible_candidate(cid, train=cand.train or {}, costs=costs, reason=reason,
                                        model_sha256=cand.model_sha256, params=cand.params, size_mb=cand.size_mb)
        self.algorithm.tell(cid, None)
        self._close(cand)

    def train_on(self, cid: int) -> None:
        """Cost first: measured and feasible, so it goes to training (its costs are kept)."""
        cand = self._cands[cid]
        self._move(cand, State.TRAINING)
        cand.costs_only = False

    def promote(self, cid: int, rung: int) -> None:
        """A fidelity rung passed it on to rung ``rung`` (it trains on from its weights)."""
        cand = self._cands[cid]
        self._move(cand, State.PROMOTED)
        self.store.promote_candidate(cid, train=cand.train or {}, rung=rung)
        cand.rung = rung

    def training_again(self, cid: int) -> None:
        """A promoted candidate trains on at its new rung."""
        self._move(self._cands[cid], State.TRAINING)

    def fail(self, cid: int, error: str) -> None:
        """The one fail path: store the error, tell the algorithm, forget the candidate."""
        cand = self._cands[cid]
        self._move(cand, State.FAILED)
        self.store.fail_candidate(cid, error)
        self.algorithm.tell(cid, None)
        self._close(cand)

    def screen(self, cid: int, *, prediction: dict[str, Any], reason: str) -> None:
        """The screening exit (issue 12): the cost model ruled the candidate out before training;
        the store keeps the prediction, the algorithm is told it failed, nothing was measured."""
        cand = self._cands[cid]
        self._move(cand, State.SCREENED)
        self.store.screen_candidate(cid, prediction=prediction, reason=reason)
        self.algorithm.tell(cid, None)
        self._close(cand)

    def _close(self, cand: Candidate) -> None:
        del self._cands[cand.id]
        if self.on_closed is not None:
            self.on_closed(cand)
