"""The agent fleet in the real world: real agent processes on loopback are SIGKILLed while a
search runs and new ones join it; the search server itself is SIGKILLed mid-run and resumed.

Agents use the table backend over the shared NAS-Bench-201 table (measurements are look-ups, so
the tests are about dispatch, leases and the store, not about timing). Afterwards the store must
be consistent: every candidate ``done`` with one ok measurement per required device key, or
``failed`` with a reason; no candidate measured twice for a key; no job left queued or leased.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import needs_nb201
from device_agent.launcher import REPO_ROOT, start_local_agent
from search import config as cfgmod
from search.loop.runner import SearchRunner
from search.objectives import DEVICE_METRICS, split_metric
from search.training.accuracy_table import AccuracyTable
from search.training.evaluator import EvalRequest, Evaluation, TableEvaluator

from _shared import NB201_TABLE

TABLE = str(NB201_TABLE)
pytestmark = needs_nb201  # every test here runs table agents over the shared table


def table_agent(key: str = "raspi", column: str = "lat_raspi4", *extra: str):
    """A real agent process answering from the NB201 table under device key ``key``."""
    return start_local_agent(extra_args=["--backend", "table", "--table", TABLE,
                                         "--metric", f"latency_ms={column}", "--device-key", key, *extra])


def fleet_config(budget: int, objectives=("accuracy", "latency_ms"), **agents) -> cfgmod.SearchConfig:
    return dataclasses.replace(
        cfgmod.SearchConfig(), space="nb201", budget=budget, population_size=8,
        accuracy_table=f"{TABLE}:c10_test_200ep", objectives=tuple(objectives),
        agents=dataclasses.replace(cfgmod.AgentsConfig(), **agents),
    ).validate()


def db_rows(run_dir: Path, sql: str, args: tuple = ()) -> list[dict]:
    """Read the run store with a plain read-only SQLite connection (works beside a live writer)."""
    con = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args).fetchall()]
    finally:
        con.close()


def required_keys(run_dir: Path) -> set[str]:
    meta = {r["key"]: json.loads(r["value"]) for r in db_rows(run_dir, "SELECT * FROM meta")}
    keys = set()
    for item in [*meta["objectives"], *meta.get("constraints", [])]:
        metric, key = split_metric(item["name"])
        if metric in DEVICE_METRICS:
            keys.add(key)
    return keys


def check_consistent(run_dir: Path, budget: int) -> dict[str, int]:
    """Assert the fleet invariants on a finished run; returns counts for further checks."""
    keys = required_keys(run_dir)
    assert keys
    cands = db_rows(run_dir, "SELECT * FROM candidates ORDER BY id")
    assert len(cands) == budget
    jobs = db_rows(run_dir, "SELECT * FROM jobs")
    assert not [j for j in jobs if j["state"] in ("queued", "leased")], "work left in flight"
    # the store's own guarantee, checked with a count query: at most one ok measurement per key
    dup = db_rows(run_dir, "SELECT candidate_id, device_key, COUNT(*) AS n FROM measurements"
                           " WHERE ok = 1 GROUP BY candidate_id, device_key HAVING n > 1")
    assert dup == []
    ok = {(m["candidate_id"], m["device_key"]): m
          for m in db_rows(run_dir, "SELECT * FROM measurements WHERE ok = 1")}
    by_cand: dict[int, dict[str, dict]] = {}
    for j in jobs:
        by_cand.setdefault(j["candidate_id"], {})[j["device_key"]] = j
        if j["state"] == "done":
            assert (j["candidate_id"], j["device_key"]) in ok, j
            assert ok[(j["candidate_id"], j["device_key"])]["job_id"] == j["id"]
    n_done = n_failed = 0
    for c in cands:
        assert c["status"] in ("done", "failed"), c
        if c["status"] == "failed":
            assert c["error"], c
            n_failed += 1
            continue
        n_done += 1
        assert set(by_cand.get(c["id"], {})) == keys, c
        objectives = json.loads(c["objectives"])
        for key in keys:
            assert by_cand[c["id"]][key]["state"] == "done"
            result = json.loads(ok[(c["id"], key)]["result"])
            assert objectives[f"latency_ms@{key}"] == result["latency_ms"]["median"]
    return {"done": n_done, "failed": n_failed, "ok_measurements": len(ok)}


class PacedEvaluator:
    """The table's accuracy after a fixed "training" time, as real training takes, so that the
    agents can be killed and joined while the search runs whatever the machine's speed; the
    pace ends when ``unpaced`` is set."""

    inline = False

    def __init__(self, pace_s: float) -> None:
        self.table = TableEvaluator(table=AccuracyTable(f"{TABLE}:c10_test_200ep"), space=None,
                                    model_path=None, build=False, export=False)
        self.pace_s = pace_s
        self.unpaced = threading.Event()

    def evaluate(self, request: EvalRequest) -> Evaluation:
        self.unpaced.wait(self.pace_s)
        return self.table.evaluate(request)


def test_agents_killed_and_joining_during_a_search(tmp_path):
    """SIGKILL agents at seeded random moments, start new ones that join the running search."""
    rng = random.Random(4)
    agents = [table_agent() for _ in range(3)]
    spares = [table_agent() for _ in range(4)]  # started now, join the search later
    budget = 96  # at pace_s, ~14 s of search: room for the four kills on a slow machine
    paced = PacedEvaluator(pace_s=0.15)
    runner = SearchRunner(config=fleet_config(budget, lease_s=20.0, max_attempts=4), run_dir=tmp_path / "run",
                          agents=[a.address for a in agents], progress=False, evaluator=paced)
    summary: dict = {}
    thread = threading.Thread(target=lambda: summary.update(runner.run()), daemon=True)
    killed, joined = [], []
    try:
        thread.start()
        assert runner.started.wait(60), "the search did not start"
        while thread.is_alive() and len(killed) < 4:
            thread.join(timeout=rng.uniform(0.3, 1.2))  # a random moment, or the search's end
            new = spares.pop()
            agents.append(new)
            try:
                runner.pool.add_agent(new.address)  # joins the running search
            except RuntimeError:  # the search ended meanwhile: the assertion below says so
                break
            joined.append(new.address)
            victim = rng.choice([a for a in agents if a.alive() and a.address not in killed])
            victim.process.send_signal(signal.SIGKILL)
            killed.append(victim.address)
        paced.unpaced.set()  # the kills and joins are done: let the rest run at full speed
        thread.join(timeout=120)
        assert not thread.is_alive(), "search did not finish"
    finally:
        runner.close()
        for a in agents + spares:
            a.stop(timeout=5)
    assert summary["candidates"] == budget
    counts = check_consistent(tmp_path / "run", budget)
    assert len(killed) == 4, "the search ended before the agents were killed: make it longer"
    assert counts["done"] >= budget // 2
    measured_by = {r["agent"] for r in db_rows(tmp_path / "run", "SELECT agent FROM measurements WHERE ok=1")}
    assert measured_by & set(joined), "no agent that joined mid-run measured anything"
    lost = db_rows(tmp_path / "run", "SELECT * FROM events WHERE kind='agent_lost'")
    assert lost and {e["agent"] for e in lost} <= set(killed)


def _hwnas(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_server_sigkilled_mid_run_resumes_without_redoing_work(tmp_path):
    agents = [table_agent() for _ in range(2)]
    run_dir = tmp_path / "run"
    budget = 60
    addr_args = [x for a in agents for x in ("--agent", a.address)]
    try:
        proc = _hwnas("search", "--space", "nb201", "--accuracy-table", f"{TABLE}:c10_test_200ep",
                      "--objective", "accuracy", "--objective", "latency_ms", "--budget", str(budget),
                      "--no-progress", "--out", str(run_dir), *addr_args)
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < end, "no progress before the kill"
            if (run_dir / "run.sqlite").exists():
                try:
                    n = db_rows(run_dir, "SELECT COUNT(*) AS n FROM candidates WHERE status='done'")[0]["n"]
                except sqlite3.OperationalError:
                    n = 0
                if n >= 12:
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before_c = {c["id"]: c for c in db_rows(run_dir, "SELECT * FROM candidates")}
        before_m = {m["id"]: m for m in db_rows(run_dir, "SELECT * FROM measurements")}
        before_j = {j["id"]: j for j in db_rows(run_dir, "SELECT * FROM jobs")}
        assert len(before_c) < budget, "the server finished before it was killed"
        resumed = _hwnas("search", "--resume", str(run_dir), "--no-progress", *addr_args)
        out = resumed.communicate(timeout=120)[0].decode()
        assert resumed.returncode == 0, out
    finally:
        for a in agents:
            a.stop(timeout=5)
    check_consistent(run_dir, budget)
    after_c = {c["id"]: c for c in db_rows(run_dir, "SELECT * FROM candidates")}
    after_m = {m["id"]: m for m in db_rows(run_dir, "SELECT * FROM measurements")}
    # nothing finished was lost or changed
    for cid, c in before_c.items():
        if c["status"] in ("done", "failed"):
            assert after_c[cid] == c
        if c["train"] is not None:
            assert after_c[cid]["train"] == c["train"] and after_c[cid]["created"] == c["created"]
    for mid, m in before_m.items():
        assert after_m[mid] == m
    # nothing finished was redone: no new measurement of a job that was already final
    final = {jid for jid, j in before_j.items() if j["state"] in ("done", "failed")}
    new = [m for mid, m in after_m.items() if mid not in before_m]
    assert not [m for m in new if m["job_id"] in final]
    assert json.loads([r for r in db_rows(run_dir, "SELECT * FROM events WHERE kind='resumed'")][0]["detail"])


def test_registry_agents_join_heartbeat_leave_and_are_dropped(tmp_path):
    """Agents started with --register join a search that has none; a hung agent (SIGSTOP: no
    heartbeats, its job in flight) is dropped and its job re-issued; SIGTERM deregisters; a
    wrong token is refused."""
    import grpc

    from protos.hwnas.registry.v1 import registry_pb2, registry_pb2_grpc

    token = "fleet-secret"
    run_dir = tmp_path / "run"
    budget = 2000  # long enough (several seconds at ~200 evals/s) for the three agents to register
    with socket.socket() as sock:  # a free port for the registry, so agents can start first
        sock.bind(("127.0.0.1", 0))
        reg = f"127.0.0.1:{sock.getsockname()[1]}"
    # agents retry registering until the search's registry is up
    agents = [start_local_agent(token=token, extra_args=[
        "--backend", "table", "--table", TABLE, "--metric", "latency_ms=lat_raspi4",
        "--device-key", "raspi", "--register", reg]) for _ in range(3)]
    runner = SearchRunner(config=fleet_config(budget, token=token, lease_s=30.0), run_dir=run_dir, agents=[],
                          progress=False, registry_port=int(reg.rsplit(":", 1)[1]), heartbeat_s=2.0,
                          wait_agents_s=60)
    summary: dict = {}
    thread = threading.Thread(target=lambda: summary.update(runner.run()), daemon=True)
    thread.start()
    try:
        assert runner.started.wait(60), "no agent registered"
        assert runner.registry.address == reg
        if not runner.pool.wait_until(lambda: len(runner.pool.agents) == 3, 60):
            raise AssertionError(f"{runner.pool.snapshot()}\n" + "\n".join(a.log_tail(1500) for a in agents))
        # the registry wants the fleet's token
        with grpc.insecure_channel(reg) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            request = registry_pb2.RegisterRequest(address=agents[0].address, device_key="raspi")
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Register(request, metadata=metadata, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # an agent that announces a key it does not report is refused; RESOURCE_EXHAUSTED
            # ("a registration of ADDRESS is pending, try again later") is the registry's answer
            # while the agent's own registration is still being checked: retry as it says
            deadline = time.monotonic() + 30
            while True:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Register(registry_pb2.RegisterRequest(address=agents[0].address, device_key="jetson"),
                                  metadata=(("authorization", f"Bearer {token}"),), timeout=10)
                if err.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert runner.wait_closed(5, 60), "no progress"
        # hang one agent while the search runs: heartbeats stop, it must be dropped
        hung = agents[0]
        hung_state = runner.pool.agents[hung.address]
        for _ in range(200):  # freeze it while it holds a job, so the search cannot end without it
            hung.process.send_signal(signal.SIGSTOP)
            if runner.pool.wait_until(lambda: hung_state.busy_with is not None, 0.1):
                break
            hung.process.send_signal(signal.SIGCONT)
        assert hung_state.busy_with is not None, "the agent to hang never held a job"
        # a new agent joins mid-run and carries the rest
        agents.append(start_local_agent(token=token, extra_args=[
            "--backend", "table", "--table", TABLE, "--metric", "latency_ms=lat_raspi4",
            "--device-key", "raspi", "--register", reg]))
        assert thread.is_alive(), "the search ended before the late agent started: make it longer"
        # a graceful stop (SIGTERM) deregisters before the agent drains
        agents[1].process.send_signal(signal.SIGTERM)
        assert runner.pool.wait_until(lambda: runner.pool.agents[agents[1].address].removed, 20), "not deregistered"
        assert runner.pool.wait_until(lambda: runner.pool.agents[hung.address].removed, 30), "hung agent kept"
        thread.join(timeout=120)
        assert not thread.is_alive(), "search did not finish"
    finally:
        runner.close()
        for a in agents:
            if a.alive():
                a.process.send_signal(signal.SIGKILL)
            a.stop(timeout=5)
    assert summary["candidates"] == budget
    check_consistent(run_dir, budget)
    removed = {e["agent"]: json.loads(e["detail"])["reason"]
               for e in db_rows(run_dir, "SELECT * FROM events WHERE kind='agent_removed'")}
    assert removed[agents[0].address].startswith("no heartbeat")
    assert removed[agents[1].address].startswith("deregistered")
    registered = {e["agent"] for e in db_rows(run_dir, "SELECT * FROM events WHERE kind='agent_registered'")}
    assert registered == {a.address for a in agents}
    assert not runner.pool.agents[agents[-1].address].removed
    # the job the hung agent held went back to the queue and was measured by another agent
    hung_jobs = [json.loads(e["detail"])["job"] for e in db_rows(
        run_dir, "SELECT * FROM events WHERE kind='agent_removed' AND agent=?", (agents[0].address,))]
    for job in filter(None, hung_jobs):
        (m,) = db_rows(run_dir, "SELECT agent FROM measurements WHERE ok=1 AND job_id=?", (job,))
        assert m["agent"] != agents[0].address
    # hwnas status shows the registry and what became of each agent
    from search.reporting.status import format_status, run_status

    status = run_status(run_dir)
    health = {a["address"]: a["health"] for a in status["agents"]}
    assert health[agents[0].address] == "dropped" and health[agents[1].address] == "left"
    assert status["registry"]["address"] == reg and status["queue"] == {}
    assert f"registry {reg}" in format_status(status)


def test_two_device_classes_in_one_search(tmp_path):
    """Objectives bound to two device keys: every candidate is measured once on each key, the
    two agents of one key share its load, and each value is the one of that key's table column."""
    import csv
    import gzip

    group_a = [table_agent("edge-a", "lat_raspi4") for _ in range(2)]
    group_b = [table_agent("edge-b", "lat_pixel3")]
    budget = 40
    try:
        summary = SearchRunner(
            config=fleet_config(budget, objectives=("accuracy", "latency_ms@edge-a", "latency_ms@edge-b")),
            run_dir=tmp_path / "run", agents=[a.address for a in group_a + group_b], progress=False).run()
    finally:
        for a in group_a + group_b:
            a.stop(timeout=5)
    assert summary["candidates"] == budget
    counts = check_consistent(tmp_path / "run", budget)
    assert counts["done"] == budget and counts["ok_measurements"] == 2 * budget
    with gzip.open(TABLE, "rt", newline="") as fh:
        table = {r["arch_str"]: r for r in csv.DictReader(fh)}
    for c in db_rows(tmp_path / "run", "SELECT * FROM candidates"):
        obj = json.loads(c["objectives"])
        assert obj["latency_ms@edge-a"] == pytest.approx(float(table[c["arch_key"]]["lat_raspi4"]))
        assert obj["latency_ms@edge-b"] == pytest.approx(float(table[c["arch_key"]]["lat_pixel3"]))
    per_agent = {r["agent"]: r["n"] for r in db_rows(
        tmp_path / "run", "SELECT agent, COUNT(*) AS n FROM measurements WHERE ok=1 GROUP BY agent")}
    assert per_agent[group_b[0].address] == budget
    assert all(per_agent.get(a.address, 0) > 0 for a in group_a), per_agent
    assert sum(per_agent.get(a.address, 0) for a in group_a) == budget
