"""The agent pool against real table-backed agent processes: a straggler (an agent frozen with
SIGSTOP while it holds a job) does not stall the queue; idle capacity of the same key re-issues
its job; the first result wins and the straggler's late answer is recorded as ignored."""
from __future__ import annotations

import csv
import gzip
import signal
import threading
import time
from pathlib import Path

import pytest

from device_agent.config import BuildConfig, MeasureConfig
from device_agent.launcher import start_local_agent
from search.fleet.pool import AgentPool, MeasureJob
from search.loop.store import Store

from _shared import NB201_TABLE

TABLE = str(NB201_TABLE)
pytestmark = pytest.mark.skipif(not Path(TABLE).is_file(), reason=f"shared NB201 table {TABLE} not here")


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_straggler_is_reissued_to_idle_agent_and_first_result_wins(tmp_path):
    with gzip.open(TABLE, "rt", newline="") as fh:
        keys = [r["arch_str"] for r, _ in zip(csv.DictReader(fh), range(12))]
    agents = [start_local_agent(extra_args=["--backend", "table", "--table", TABLE,
                                            "--metric", "latency_ms=lat_raspi4", "--device-key", "k"])
              for _ in range(2)]
    slow, fast = agents
    store = Store(tmp_path / "run", create=True)
    done: dict[str, str] = {}
    all_done = threading.Event()

    def on_done(job, result, error):
        assert job.job_id not in done, "a job finished twice"
        done[job.job_id] = error or "ok"
        if len(done) == len(keys):
            all_done.set()

    pool = AgentPool(store=store, build=BuildConfig(backend="table"), measure=MeasureConfig(),
                     on_done=on_done, lease_s=60.0, straggler_s=1.0)
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
        _wait(lambda: state.busy_with == jobs[0].job_id, 10, "the slow agent to take the first job")
        pool.add_agent(fast.address)
        for job in jobs[1:]:
            pool.submit(job)
        assert all_done.wait(30), f"only {len(done)} of {len(keys)} jobs finished: a straggler stalled the pool"
        assert pool.reissued == 1
        slow.process.send_signal(signal.SIGCONT)  # its answer now comes late
        _wait(lambda: store.events("late_result_ignored"), 20, "the straggler's late answer")
    finally:
        slow.process.send_signal(signal.SIGCONT)
        pool.close()
        for a in agents:
            a.stop(timeout=5)
    assert set(done.values()) == {"ok"}
    ok = store.measurements(ok_only=True)
    assert len(ok) == len(keys) and len({m["job_id"] for m in ok}) == len(keys)
    (first,) = [m for m in ok if m["job_id"] == jobs[0].job_id]
    assert first["agent"] == fast.address  # the re-issued copy answered first
    (late,) = store.events("late_result_ignored")
    assert late["agent"] == slow.address and late["detail"]["job"] == jobs[0].job_id
    assert [e["detail"]["job"] for e in store.events("job_reissued")] == [jobs[0].job_id]
    assert all(j["state"] == "done" for j in store.jobs())
    store.close()


def test_result_dict_equals_measure_result_to_dict():
    """The pool's shallow conversion of a wire result must store exactly what ``to_dict`` would."""
    from device_agent import wire
    from device_agent.result import MEASURED, Energy, LatencyStats, MeasureResult, Metric
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
