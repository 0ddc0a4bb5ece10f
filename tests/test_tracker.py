"""The candidate tracker: each candidate's states, its one finish path and its one fail path,
against a real run store and a real algorithm (random search on a categorical space)."""
from __future__ import annotations

import pytest

from search.algorithms.base import AlgorithmOptions, create_algorithm
from search.loop.store import Store
from search.loop.tracker import CandidateTracker, State, job_id
from search.objectives import Constraint, Objective
from search.testing import CategoricalSpace

OBJECTIVES = [Objective("accuracy", "max"), Objective("latency_ms@k", "min")]


@pytest.fixture
def tracked(tmp_path):
    """A tracker over a fresh store; ``closed`` lists the candidates it let go, in order."""
    space = CategoricalSpace()
    algo = create_algorithm("random", AlgorithmOptions(space=space, objectives=tuple(OBJECTIVES), seed=1))
    store = Store(tmp_path / "run", create=True)
    closed: list[tuple[int, State]] = []
    tracker = CandidateTracker(store=store, algorithm=algo, objectives=OBJECTIVES,
                               constraints=[Constraint.parse("energy_mj@k <= 5")],
                               on_closed=lambda c: closed.append((c.id, c.state)))

    def propose() -> int:
        trial = algo.ask()
        store.add_candidate(id=trial.number, arch_key=space.key(trial.genome), genome=space.to_json(trial.genome))
        tracker.add(trial.number, trial.genome, space.key(trial.genome))
        tracker.training(trial.number)
        tracker.trained(trial.number, train={"accuracy": 0.9, "source": "test"}, params=10, size_mb=None,
                        model_sha256=None, device_keys=["k"])
        tracker.measuring(trial.number, ["k"])
        return trial.number

    yield tracker, store, algo, closed, propose
    store.close()


def test_finish_reads_every_value_through_the_catalogue(tracked):
    tracker, store, algo, closed, propose = tracked
    cid = propose()
    assert tracker[cid].state is State.MEASURING and tracker.count(State.MEASURING) == 1
    assert not tracker.settle(cid)  # its job is still out
    result = {"latency_ms": {"median": 1.5}, "energy": {"value_mj": 2.0, "status": "measured"}}
    tracker.measured(cid, "k", result, None)
    assert tracker.settle(cid)
    assert cid not in tracker and closed == [(cid, State.DONE)]
    row = store.candidate(cid)
    assert row["status"] == "done"
    assert row["objectives"] == {"accuracy": 0.9, "latency_ms@k": 1.5, "energy_mj@k": 2.0}
    assert algo.history[-1].values == row["objectives"] and not algo.pending
    assert [j["id"] for j in store.jobs(candidate_id=cid)] == [job_id(cid, "k")]


def test_missing_energy_fails_and_is_never_invented(tracked):
    tracker, store, algo, closed, propose = tracked
    cid = propose()
    tracker.measured(cid, "k", {"latency_ms": {"median": 1.5}, "energy": {"status": "unavailable"}}, None)
    assert tracker.settle(cid)
    row = store.candidate(cid)
    assert row["status"] == "failed" and "energy is never invented" in row["error"]
    assert closed == [(cid, State.FAILED)] and algo.history[-1].failed


def test_a_failed_job_fails_the_candidate_once_every_job_is_back(tracked):
    tracker, store, algo, closed, propose = tracked
    cid = propose()
    tracker.measured(cid, "k", None, "agent lost")
    tracker.measured(cid, "k", {"latency_ms": {"median": 1.0}}, None)  # a late duplicate changes nothing
    assert tracker.settle(cid)
    assert store.candidate(cid)["error"] == "measurement on k failed: agent lost"
    tracker.measured(cid, "k", None, "again")  # after closing: ignored
    assert closed == [(cid, State.FAILED)]


def test_transitions_are_checked(tracked):
    tracker, store, algo, closed, propose = tracked
    trial = algo.ask()
    store.add_candidate(id=trial.number, arch_key="a", genome={"c": list(trial.genome)})
    tracker.add(trial.number, trial.genome, "a")
    with pytest.raises(RuntimeError, match="no transition proposed -> measuring"):
        tracker.measuring(trial.number, ["k"])
    tracker.training(trial.number)
    tracker.fail(trial.number, "build/train failed: boom")
    assert store.candidate(trial.number)["status"] == "failed" and closed == [(trial.number, State.FAILED)]
    assert len(tracker) == 0
