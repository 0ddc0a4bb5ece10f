"""The agent pool.

Against real table-backed agent processes (needs the shared NB201 table): a straggler (an agent
frozen with SIGSTOP while it holds a job) does not stall the queue; idle capacity of the same key
re-issues its job; the first result wins and the straggler's late answer is recorded as ignored.

With scripted clients (no data needed; the pool's client interface, agents that misbehave on
cue, a real store): a model that crashes the runtime ``max_crashes`` times is quarantined; a job
whose agents are lost ``max_attempts`` times is abandoned.
"""
from __future__ import annotations

import csv
import gzip
import signal

from conftest import DoneEvents, ScriptedAgentClient, needs_nb201
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.launcher import start_local_agent
from search.fleet.pool import AgentPool, MeasureJob
from search.loop.store import Store

from _shared import NB201_TABLE

TABLE = str(NB201_TABLE)


def _queued_jobs(store: Store, n: int, key: str = "k") -> list[MeasureJob]:
    """``n`` trained candidates with one queued job each on ``key``."""
    jobs = []
    for i in range(n):
        store.add_candidate(id=i, arch_key=f"arch{i}", genome={})
        store.set_trained(i, train={}, model_sha256=None, params=None, size_mb=None, jobs=[(f"c{i}-{key}", key)])
        jobs.append(MeasureJob(job_id=f"c{i}-{key}", candidate_id=i, device_key=key, model_path=None,
                               model_sha256=None, arch_key=f"arch{i}", space="nb201"))
    return jobs


@needs_nb201
def test_straggler_is_reissued_to_idle_agent_and_first_result_wins(tmp_path):
    with gzip.open(TABLE, "rt", newline="") as fh:
        keys = [r["arch_str"] for r, _ in zip(csv.DictReader(fh), range(12))]
    agents = [start_local_agent(extra_args=["--backend", "table", "--table", TABLE,
                                            "--metric", "latency_ms=lat_raspi4", "--device-key", "k"])
              for _ in range(2)]
    slow, fast = agents
    store = Store(tmp_path / "run", create=True)
    done = DoneEvents()
    pool = AgentPool(store=store, build=BuildConfig(backend="table"), measure=MeasureConfig(),
                     on_done=done, lease_s=60.0, straggler_s=1.0)
    jobs = []
    for i, key in enumerate(keys):
        store.add_candidate(id=i, arch_key=key, genome={})
        store.set_trained(i, train={}, model_sha256=None, params=None, size_mb=None, jobs=[(f"c{i}-k", "k")])
        jobs.append(MeasureJob(job_id=f"c{i}-k", candidate_id=i, device_key="k", model_path=None,
                               model_sha256=None, arch_key=key, space="nb201"))
    try:
        # the slow agent must hold the first job: only it is in the pool when that is queued;
        # SIGSTOP after Describe: it accepts the call but does not answer while stopped
        state = pool.add_agent(slow.address)
        slow.process.send_signal(signal.SIGSTOP)
        pool.submit(jobs[0])
        assert pool.wait_until(lambda: state.busy_with == jobs[0].job_id, 10), "the slow agent took no job"
        pool.add_agent(fast.address)
        for job in jobs[1:]:
            pool.submit(job)
        assert done.wait(len(keys), 30), f"only {len(done.done)} of {len(keys)} jobs finished: a straggler stalled the pool"
        assert pool.reissued == 1
        slow.process.send_signal(signal.SIGCONT)  # its answer now comes late
        # the slow worker ends after recording that answer: close() joins it
        assert pool.wait_until(lambda: state.busy_with is None, 20), "the straggler never answered"
        pool.close(timeout=20)
    finally:
        slow.process.send_signal(signal.SIGCONT)
        pool.close()
        for a in agents:
            a.stop(timeout=5)
    assert {err for _, err in done.done.values()} == {None}
    ok = store.measurements(ok_only=True)
    assert len(ok) == len(keys) and len({m["job_id"] for m in ok}) == len(keys)
    (first,) = [m for m in ok if m["job_id"] == jobs[0].job_id]
    assert first["agent"] == fast.address  # the re-issued copy answered first
    (late,) = store.events("late_result_ignored")
    assert late["agent"] == slow.address and late["detail"]["job"] == jobs[0].job_id
    assert [e["detail"]["job"] for e in store.events("job_reissued")] == [jobs[0].job_id]
    assert all(j["state"] == "done" for j in store.jobs())
    store.close()


def _scripted_pool(tmp_path, answer, **limits):
    store = Store(tmp_path / "run", create=True)
    done = DoneEvents()
    clients: list[ScriptedAgentClient] = []

    def factory(address, token=None):
        clients.append(ScriptedAgentClient(address, device_key="k", answer=answer))
        return clients[-1]

    pool = AgentPool(store=store, build=BuildConfig(backend="table"), measure=MeasureConfig(), on_done=done,
                     lease_s=30.0, straggler_s=None, client_factory=factory, **limits)
    return store, pool, done, clients


def test_model_crashing_the_runtime_is_quarantined_after_max_crashes(tmp_path):
    """A ``crash`` answer is retried until ``max_crashes``; then the job ends with the quarantine
    reason, a ``model_quarantined`` event, and the model is not sent again."""
    crash = {"error": "runtime died", "error_kind": "crash"}
    ok = {"error": None, "latency_ms": {"median": 1.0}}
    store, pool, done, clients = _scripted_pool(
        tmp_path, lambda job_id, n: dict(crash, job_id=job_id) if job_id == "c0-k" else dict(ok, job_id=job_id),
        max_crashes=3)
    jobs = _queued_jobs(store, 2)
    try:
        pool.add_agent("scripted:1")
        for job in jobs:
            pool.submit(job)
        assert done.wait(2, 20), done.done
    finally:
        pool.close()
    result, error = done.done["c0-k"]
    assert error == "quarantined after 3 crashs: runtime died" and result["error"] == error
    assert done.done["c1-k"][1] is None
    assert clients[0].calls.count("c0-k") == 3  # sent max_crashes times, never again
    (event,) = store.events("model_quarantined")
    assert event["candidate_id"] == 0 and event["detail"] == {"job": "c0-k", "kind": "crash"}
    states = {j["id"]: (j["state"], j["crashes"]) for j in store.jobs()}
    assert states["c0-k"] == ("failed", 2) and states["c1-k"][0] == "done"
    store.close()


def test_job_whose_agents_are_lost_is_abandoned_after_max_attempts(tmp_path):
    """Each lost agent (an ``OSError`` from the call) puts the job back; the ``max_attempts``-th
    loss abandons it with the reason, and the agent, probed healthy again, goes on."""

    def answer(job_id, n):
        if job_id == "c0-k":
            raise OSError("connection reset")
        return {"job_id": job_id, "error": None, "latency_ms": {"median": 2.0}}

    store, pool, done, clients = _scripted_pool(tmp_path, answer, max_attempts=2)
    jobs = _queued_jobs(store, 2)
    try:
        pool.add_agent("scripted:1")
        for job in jobs:
            pool.submit(job)
        assert done.wait(2, 30), done.done
    finally:
        pool.close()
    result, error = done.done["c0-k"]
    assert result is None
    assert error == "measurement abandoned after 2 lost agents; last: OSError: connection reset"
    assert done.done["c1-k"][1] is None
    assert clients[0].calls.count("c0-k") == 2
    (job,) = [j for j in store.jobs() if j["id"] == "c0-k"]
    assert job["state"] == "failed" and job["attempts"] == 2
    assert len(store.events("agent_lost")) == 2 and store.events("agent_recovered")
    assert pool.retries == 2
    store.close()


def test_result_dict_equals_measure_result_to_dict():
    """The pool's shallow conversion of a wire result must store exactly what ``to_dict`` would."""
    from device_agent.rpc import wire
    from device_agent.core.result import MEASURED, Energy, LatencyStats, MeasureResult, Metric
    from search.fleet.pool import _result_dict

    full = MeasureResult(
        job_id="c1-k", device_key="k", backend="onnxruntime", model_sha256="ab" * 32,
        latency_ms=LatencyStats(median=1.5, mean=1.6, min=1.2, max=2.0, p90=1.9, p95=1.95, p99=2.0, std=0.1,
                                cv=0.06, count=50, ci_low=1.45, ci_high=1.55, method="timed"),
        peak_memory_mb=Metric(12.5, MEASURED, "rss delta", "MB"),
        energy=Energy(status=MEASURED, method="rail", value_mj=3.0, net_value_mj=2.0, rails={"vdd": 1.5}),
        flags=["warm"], output_check={"max_abs": 0.0}, layers=[{"name": "conv", "ms": 0.2}],
        build_config={"backend": "onnxruntime"}, measure_config={"iterations": 50},
        provenance={"host": {"cpu": "x"}, "list": [1, 2]})
    failed = MeasureResult.failure(job_id="c2-k", device_key="k", backend="table", model_sha256="",
                                   error="not in table", error_kind="unsupported")
    for res in (full, failed):
        decoded = wire.result_from_pb(wire.result_to_pb(res))
        assert _result_dict(decoded) == decoded.to_dict() == res.to_dict()
    assert _result_dict({"a": 1}) == {"a": 1}
