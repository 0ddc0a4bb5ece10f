"""Resuming a run: what a stored run tells the algorithm, and what was left in flight.

:func:`replay_store` reads every candidate of a resumed store once: finished ones (done, failed,
infeasible, screened) are told to the algorithm, as are the fidelity rungs' standings of the
done ones; unfinished ones are reserved (their trial numbers stay taken) and given back to the
tracker, sorted into what must be trained again, measured again, or trained on at its next rung.
The runner then issues that work (:class:`ReplayPlan`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search.loop.tracker import State

#: candidate states that are final: told to the algorithm, nothing left to do
_FINAL = ("done", "failed", "infeasible", "screened")


@dataclass
class ReplayPlan:
    """The work a resumed run issues again: candidate ids to train and to measure, and the rows
    of promoted candidates to train on at their next rung."""

    train: list[int] = field(default_factory=list)
    measure: list[int] = field(default_factory=list)
    promote: list[dict[str, Any]] = field(default_factory=list)


def replay_store(store: Any, tracker: Any, space: Any, ladder: Any = None) -> ReplayPlan:
    """Tell ``tracker``'s algorithm what the store holds; the unfinished candidates' plan."""
    algo, plan = tracker.algorithm, ReplayPlan()
    for c in store.candidates():
        genome, parents = space.from_json(c["genome"]), tuple(c["parents"])
        if ladder is not None and c["status"] == "done":
            for r in (c["train"] or {}).get("rungs", []):  # the rungs' standings come back
                ladder.record(r["rung"], c["id"], {**c["objectives"], "accuracy": r["accuracy"]})
        if c["status"] in _FINAL:
            algo.observe(genome, c["objectives"] if c["status"] == "done" else None, number=c["id"],
                         parents=parents)
            continue
        algo.reserve(c["id"], genome, parents)
        if c["status"] == "promoted" and ladder is not None:
            plan.promote.append(c)
            continue
        trained = c["status"] == "trained"
        tracker.add(c["id"], genome, c["arch_key"], state=State.TRAINED if trained else State.PROPOSED, row=c)
        (plan.measure if trained else plan.train).append(c["id"])
    return plan
