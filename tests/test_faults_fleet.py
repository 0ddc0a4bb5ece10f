"""Issue 14's probes of the fleet: real table agent processes and in-process agent servers on
loopback, the real registry over gRPC, real run stores.

Each test is named ``test_probe_NN_*`` after the issue's item; ``bench/fault_probes.py`` runs
them all and prints probe | held/broke.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import gzip
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from _agent_util import running_agent, write_nb201_table
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.launcher import REPO_ROOT, start_local_agent
from protos.hwnas.registry.v1 import registry_pb2, registry_pb2_grpc
from search import config as cfgmod
from search.fleet.pool import AgentPool
from search.fleet.registry import RegistryServer
from search.loop.runner import SearchRunner
from search.loop.setup import SearchError
from search.loop.store import Store
from search.reporting.status import run_status


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """The synthetic NB201 table plus ``lat_bad``: every fourth row -5, 0 or 1e308 ms."""
    path = tmp_path_factory.mktemp("table") / "synth.csv.gz"
    write_nb201_table(path)
    with gzip.open(path, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    bad = ["-5", "0", "1e308"]
    for i, r in enumerate(rows):
        r["lat_bad"] = bad[i % 4] if i % 4 < 3 else r["lat_synth"]
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["arch_str", "acc", "lat_synth", "lat_bad"])
        w.writeheader()
        w.writerows(rows)
    return path


def table_agent(table: Path, *, key: str = "synth", column: str = "lat_synth", token: str | None = None,
                port: int = 0):
    extra = ["--backend", "table", "--table", str(table), "--metric", f"latency_ms={column}", "--device-key", key]
    if port:
        extra += ["--port", str(port)]
    return start_local_agent(token=token, extra_args=extra)


def table_config(table: Path, budget: int, **agents) -> cfgmod.SearchConfig:
    return dataclasses.replace(
        cfgmod.SearchConfig(), space="nb201", budget=budget, population_size=8, accuracy_table=f"{table}:acc",
        objectives=("accuracy", "latency_ms"), agents=dataclasses.replace(cfgmod.AgentsConfig(), **agents),
    ).validate()


def run_in_thread(runner: SearchRunner, timeout: float) -> BaseException | dict:
    """``runner.run()`` with a time limit: its summary or the exception it raised."""
    out: list = []

    def target() -> None:
        try:
            out.append(runner.run())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the search hung for {timeout}s"
    return out[0]


# ---------------------------------------------------------------------------------- item 1
def test_probe_01_store_error_in_an_agent_worker_stops_the_search(table, tmp_path):
    agent = table_agent(table)
    try:
        runner = SearchRunner(config=table_config(table, 500), run_dir=tmp_path / "run",
                              agents=[agent.address], progress=False)
        real = runner.store.record_measurement
        calls = []

        def failing(*args, **kwargs):  # the 6th result finds the disk gone
            calls.append(1)
            if len(calls) > 5:
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)

        runner.store.record_measurement = failing
        out = run_in_thread(runner, 60)
    finally:
        agent.stop()
    assert isinstance(out, SearchError), out
    assert "No space left on device" in str(out)
    # stopped, not hung; the store is intact and unlocked: a resume continues it
    st = Store(tmp_path / "run", read_only=True)
    n = len(st.candidates())
    st.close()
    agent = table_agent(table)
    try:
        cfg = dataclasses.replace(table_config(table, n + 4))
        summary = SearchRunner(config=cfg, run_dir=tmp_path / "run", resume=True, agents=[agent.address],
                               progress=False).run()
    finally:
        agent.stop()
    assert summary["done"] == n + 4


# ---------------------------------------------------------------------------------- item 5
def test_probe_05_registrations_never_starve_heartbeats(tmp_path):
    store = Store(tmp_path / "run", create=True)
    pool = AgentPool(store=store, build=BuildConfig(), measure=MeasureConfig(), on_done=lambda *a: None)
    registry = RegistryServer(pool=pool, heartbeat_s=1.0, missed=3, describe_timeout_s=4.0).start()
    # addresses that accept a connection and never answer (like a SIGSTOPped agent)
    silent = []
    for _ in range(10):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        silent.append(s)
    channel = grpc.insecure_channel(registry.address)
    stub = registry_pb2_grpc.RegistryStub(channel)
    try:
        with running_agent(tmp_path) as (_server, address):
            reply = stub.Register(registry_pb2.RegisterRequest(address=address), timeout=20)
            agent_id = reply.agent_id

            def flood(port: int) -> grpc.StatusCode:
                try:
                    stub.Register(registry_pb2.RegisterRequest(address=f"127.0.0.1:{port}"), timeout=30)
                except grpc.RpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

            ports = [s.getsockname()[1] for s in silent]
            with cf.ThreadPoolExecutor(20) as ex:
                futs = [ex.submit(flood, p) for p in ports] + [ex.submit(flood, ports[0]) for _ in range(10)]
                worst = 0.0
                end = time.monotonic() + 6.0  # longer than the missed-heartbeat limit (3 s)
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    hb = stub.Heartbeat(registry_pb2.HeartbeatRequest(agent_id=agent_id), timeout=5)
                    worst = max(worst, time.perf_counter() - t0)
                    assert hb.known, "the agent was dropped while registrations were pending"
                    time.sleep(0.5)
                codes = [f.result() for f in futs]
            assert worst < 1.0, f"a heartbeat waited {worst:.1f}s behind registrations"
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 20 - 4, codes
            assert codes.count(grpc.StatusCode.UNAVAILABLE) <= 4, codes
            assert [a.address for a in pool.agents.values() if not a.removed] == [address]
    finally:
        channel.close()
        registry.stop()
        pool.close()
        store.close()
        for s in silent:
            s.close()


# ---------------------------------------------------------------------------------- item 8
def test_probe_08_agent_with_another_token_is_shown_once_and_backed_off(table, tmp_path):
    first = table_agent(table, token="right-token")
    port = first.port
    run = tmp_path / "run"
    err = tmp_path / "search.err"
    search = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", "--out", str(run), "--space", "nb201",
         "--accuracy-table", f"{table}:acc", "--agent", first.address, "--token", "right-token",
         "--budget", "100000", "--no-progress"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=open(err, "w"))  # noqa: SIM115
    second = None
    try:
        end = time.monotonic() + 60
        while not (run / "run.sqlite").exists() or run_status(run)["candidates"].get("done", 0) < 3:
            assert time.monotonic() < end and search.poll() is None, err.read_text()[-2000:]
            time.sleep(0.3)
        first.stop()  # the agent is restarted on its port with another token
        second = table_agent(table, token="other-token", port=port)
        time.sleep(12)
        shown = err.read_text().count("refuses this search's credentials")
        assert shown == 1, err.read_text()[-3000:]
        status = run_status(run)
        assert [a["health"] for a in status["agents"]] == ["auth"], status["agents"]
        refused = second.log_tail(10**7).count("auth_failed")
        # exponential back-off: 0.5, 1, 2, 4, 8 s ... -> a handful in 12 s (a fixed 0.5 s: 24)
        assert 1 <= refused <= 8, refused
        text = subprocess.run([sys.executable, "-m", "search.cli", "status", str(run)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60).stdout
        assert "refuses our credentials" in text, text
    finally:
        search.send_signal(signal.SIGKILL)
        search.wait(30)
        first.stop()
        if second is not None:
            second.stop()


# ---------------------------------------------------------------------------------- item 11
def test_probe_11_impossible_agent_values_are_failed_measurements(table, tmp_path):
    agent = table_agent(table, key="liar", column="lat_bad")
    try:
        summary = SearchRunner(config=table_config(table, 40), run_dir=tmp_path / "run", agents=[agent.address],
                               progress=False).run()
    finally:
        agent.stop()
    from search.reporting.results import collect

    res = collect(tmp_path / "run")
    failed = [c for c in res if c["status"] == "failed"]
    done = [c for c in res if c["status"] == "done"]
    assert failed and done and summary["failed"] == len(failed)
    assert all("impossible reading" in c["error"] and agent.address in c["error"] for c in failed), \
        [c["error"] for c in failed]
    for c in done:
        v = c["objectives"]["latency_ms@liar"]
        assert math.isfinite(v) and 0 < v < 1e6, v
    assert all(c["status"] == "done" for c in res if c["pareto"])


# ---------------------------------------------------------------------------------- item 13
def test_probe_13_address_aliases_are_one_agent(tmp_path):
    store = Store(tmp_path / "run", create=True)
    pool = AgentPool(store=store, build=BuildConfig(), measure=MeasureConfig(), on_done=lambda *a: None)
    registry = RegistryServer(pool=pool, heartbeat_s=5.0).start()
    try:
        with running_agent(tmp_path) as (_server, address):
            port = address.rsplit(":", 1)[1]
            aliases = [address, f"localhost:{port}", f"ipv4:127.0.0.1:{port}"]
            assert pool.add_agents(aliases) == {}
            assert len([a for a in pool.agents.values() if not a.removed]) == 1
            with grpc.insecure_channel(registry.address) as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                ids = {stub.Register(registry_pb2.RegisterRequest(address=a), timeout=20).agent_id for a in aliases}
            assert len(ids) == 1
            assert len([a for a in pool.agents.values() if not a.removed]) == 1
            assert len(store.events("agent_joined")) == 1
    finally:
        registry.stop()
        pool.close()
        store.close()
