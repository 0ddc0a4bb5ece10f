"""Faults of the one-machine set-up: a local agent that dies is started again (or, once its
restarts are spent, the search stops with the reason instead of waiting on an empty queue), and
a measurement interrupted by a signal is measured again, never recorded as the model's failure."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from search.config import load
from search.loop.runner import SearchRunner
from search.loop.setup import SearchError
from test_pool import _queued_jobs, _scripted_pool


def _tiny_runner(tmp_path, budget: int) -> SearchRunner:
    cfg = load(None)
    cfg = dataclasses.replace(cfg, budget=budget, population_size=2,
                              space_options={**cfg.space_options, "min_epochs": 1, "max_epochs": 1},
                              train=dataclasses.replace(cfg.train, max_epochs=1, time_budget_s=5.0))
    return SearchRunner(config=cfg, run_dir=tmp_path / "run", progress=False)


def _kill_local_agent_when_started(runner: SearchRunner) -> threading.Thread:
    def kill() -> None:
        assert runner.started.wait(120)
        time.sleep(0.5)
        os.kill(runner.fleet._local_agent.process.pid, signal.SIGKILL)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def test_dead_local_agent_is_restarted_and_the_search_finishes(tmp_path):
    runner = _tiny_runner(tmp_path, budget=4)
    killer = _kill_local_agent_when_started(runner)
    summary = runner.run()
    killer.join(5)
    assert summary["done"] == 4 and summary["failed"] == 0, summary
    from search.loop.store import Store

    st = Store(tmp_path / "run")
    try:
        (died,) = st.events("local_agent_died")
        assert died["detail"]["exit_code"] == -signal.SIGKILL
        (restarted,) = st.events("local_agent_restarted")
        assert restarted["agent"] != died["agent"]
    finally:
        st.close()


def test_search_stops_with_the_reason_when_restarts_are_spent(tmp_path):
    runner = _tiny_runner(tmp_path, budget=30)
    runner.fleet.local_agent_restarts = 0
    killer = _kill_local_agent_when_started(runner)
    t0 = time.monotonic()
    with pytest.raises(SearchError, match="exited with code -9 and was restarted 0 time"):
        runner.run()
    killer.join(5)
    assert time.monotonic() - t0 < 120  # it stopped; it did not wait for the queue


def test_interrupted_measurement_is_a_retry_not_a_model_failure(tmp_path):
    interrupted = {"error": "job process interrupted by signal SIGINT", "error_kind": "interrupted"}
    ok = {"error": None, "latency_ms": {"median": 1.0}}
    store, pool, done, _ = _scripted_pool(
        tmp_path, lambda job_id, n: dict(interrupted if n == 1 else ok, job_id=job_id), max_crashes=1)
    (job,) = _queued_jobs(store, 1)
    try:
        pool.add_agent("scripted:1")
        pool.submit(job)
        assert done.wait(1, 30), done.done
    finally:
        pool.close()
    assert done.done[job.job_id][1] is None  # measured, on the second try
    (row,) = store.jobs()
    assert row["state"] == "done" and row["crashes"] == 0
    assert not store.events("model_quarantined")
    store.close()


def test_job_process_ignores_sigint_and_sigterm_is_interrupted(tmp_path):
    """The agent's own classification: a job process shrugs off a terminal's SIGINT (the agent
    handles it), and one ended by SIGTERM is ``interrupted``, not a crash of the model."""
    from device_agent.config import BuildConfig, MeasureConfig
    from device_agent.core.jobs import run_job
    from test_jobs import hang_model  # a real ONNX model that runs (practically) forever

    path = hang_model(tmp_path / "hang.onnx")
    measure = MeasureConfig(timeout_s=60.0)
    before = set(_grandchildren())
    alive: list[int] = []

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = [p for p in _grandchildren() if p not in before]  # the job, a forkserver child
            if new:
                time.sleep(1.0)
                for p in new:
                    os.kill(p, signal.SIGINT)
                time.sleep(1.0)
                alive.extend(p for p in new if _running(p))
                for p in new:
                    os.kill(p, signal.SIGTERM)
                return
            time.sleep(0.05)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    res = run_job(path, BuildConfig(), measure, job_id="j")
    t.join(5)
    assert alive, "the job process died of SIGINT"
    assert res.error_kind == "interrupted", res.error
    assert "not the model's fault" in res.error


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(k) for k in f.read().split()]
    except OSError:
        return []


def _grandchildren() -> list[int]:
    """Pids of the children of this process's children (the forkserver's job processes)."""
    return [g for k in _kids(os.getpid()) for g in _kids(k)]
