"""The agent over real gRPC on 127.0.0.1 port 0, with real ONNX Runtime jobs (device_agent.core.jobs)."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from device_agent import errors
from device_agent.rpc.status import from_rpc_error
from device_agent.rpc.client import AgentClient
from device_agent.config import BuildConfig
from device_agent.settings import MAX_CHUNK_BYTES
from protos.hwnas.agent.v1 import agent_pb2 as pb
from protos.hwnas.agent.v1 import agent_pb2_grpc as pb_grpc
from _agent_util import FAST, external_data_onnx, running_agent, tiny_cnn_onnx
from conftest import hang_onnx, job_processes, wait_until

pytestmark = pytest.mark.timeout(120)


def _stub(address: str) -> tuple[grpc.Channel, pb_grpc.AgentStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 16 << 20)])
    return channel, pb_grpc.AgentStub(channel)


def _header(model: bytes, **kw) -> pb.MeasureRequest:
    h = pb.MeasureHeader(job_id=kw.pop("job_id", "raw"), model_sha256=kw.pop("sha", hashlib.sha256(model).hexdigest()),
                         model_size=kw.pop("size", len(model)), **kw)
    return pb.MeasureRequest(header=h)


def test_describe_and_measure_end_to_end(tmp_path):
    model = tiny_cnn_onnx()
    with running_agent(tmp_path) as (server, addr), AgentClient(addr, timeout=20) as client:
        assert client.health() == "SERVING"
        info = client.describe()
        assert info["protocol"] == "hwnas.agent.v1"
        assert "onnxruntime" in info["backends_available"] and info["versions"].get("onnxruntime")
        assert info["limits"]["max_chunk_bytes"] == MAX_CHUNK_BYTES

        r1 = client.measure(model, job_id="e2e-1", build=BuildConfig(), measure=FAST, space="menndl")
        assert client.last_upload_bytes == len(model)
        assert r1.ok, r1.error
        assert r1.job_id == "e2e-1" and r1.device_key == info["device_key"] and r1.backend == "onnxruntime"
        assert r1.model_sha256 == hashlib.sha256(model).hexdigest()
        assert r1.latency_ms.count >= FAST.min_iterations and 0 < r1.latency_ms.median < 1000
        assert r1.latency_ms.min <= r1.latency_ms.median <= r1.latency_ms.max
        assert r1.output_check and r1.output_check["ok"] is True
        assert r1.peak_memory_mb.status == "measured" and r1.energy.status == "unavailable"
        assert r1.measure_config["min_iterations"] == FAST.min_iterations
        assert r1.provenance["agent_job"]["model_bytes_received"] == len(model)
        assert r1.provenance["agent_job"]["space"] == "menndl"

        # the agent holds the sha256 now: the second measurement moves no model bytes
        assert client.has_model(r1.model_sha256)
        r2 = client.measure(model, job_id="e2e-2", build=BuildConfig(), measure=replace(FAST, profile_layers=True))
        assert client.last_upload_bytes == 0 and r2.ok, r2.error
        assert r2.layers and {"name", "op_type", "mean_ms"} <= set(r2.layers[0])
        assert any(layer["op_type"] == "Conv" for layer in r2.layers)
        assert r2.provenance["agent_job"]["model_bytes_received"] == 0
        assert client.total_upload_bytes == len(model)


def test_model_survives_agent_restart(tmp_path):
    model = tiny_cnn_onnx()
    sha = hashlib.sha256(model).hexdigest()
    with running_agent(tmp_path) as (_, addr), AgentClient(addr) as client:
        assert client.upload_model(model)["bytes_sent"] == len(model)
    with running_agent(tmp_path) as (_, addr), AgentClient(addr) as client:
        assert client.has_model(sha)
        assert client.upload_model(model) == {"model_sha256": sha, "bytes_sent": 0, "already_held": True}


def test_invalid_models_are_results_not_errors(tmp_path):
    with running_agent(tmp_path) as (_, addr), AgentClient(addr, timeout=20) as client:
        r = client.measure(external_data_onnx(), job_id="ext", measure=FAST)
        assert r.error_kind == "invalid_model" and "external data" in r.error
        r = client.measure(b"\x08\x07garbage" * 10, job_id="junk", measure=FAST)
        assert r.error_kind == "invalid_model" and r.latency_ms is None
        assert client.describe()["device_key"]


def test_bad_settings_are_invalid_argument(tmp_path):
    model = tiny_cnn_onnx()
    with running_agent(tmp_path) as (_, addr):
        channel, stub = _stub(addr)
        h = _header(model)
        h.header.measure.timeout_s = float("nan")
        with pytest.raises(grpc.RpcError) as ei:
            stub.Measure(iter([h, pb.MeasureRequest(chunk=model)]), timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for field, value in (("memory_limit_mb", 0), ("timeout_s", 1e9), ("batch_size", 0), ("warmup_s", -1.0)):
            h = _header(model)
            setattr(h.header.measure, field, value)
            with pytest.raises(grpc.RpcError) as ei:  # a caller cannot lift the sandbox's limits
                stub.Measure(iter([h, pb.MeasureRequest(chunk=model)]), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:  # the header must come first
            stub.Measure(iter([pb.MeasureRequest(chunk=model)]), timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:  # unknown model, no bytes
            stub.Measure(iter([_header(b"never sent")]), timeout=10)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as ei:
            stub.HasModel(pb.HasModelRequest(model_sha256="xyz"), timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()


def test_sha_mismatch_and_size_errors(tmp_path):
    model = tiny_cnn_onnx()
    with running_agent(tmp_path, max_model_mb=1) as (server, addr):
        channel, stub = _stub(addr)
        wrong = hashlib.sha256(b"other").hexdigest()
        with pytest.raises(grpc.RpcError) as ei:
            stub.Measure(iter([_header(model, sha=wrong), pb.MeasureRequest(chunk=model)]), timeout=10)
        assert ei.value.code() == grpc.StatusCode.DATA_LOSS
        assert isinstance(from_rpc_error(ei.value), errors.ChecksumMismatch)
        assert server.service.cache.model_size(wrong) is None  # nothing kept
        with pytest.raises(grpc.RpcError) as ei:  # fewer bytes than announced
            stub.Measure(iter([_header(model, size=len(model) + 5), pb.MeasureRequest(chunk=model)]),
                         timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:  # announced size over max_model_mb
            stub.Measure(iter([_header(model, size=2 << 20)]), timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_model_mb" in ei.value.details()
        assert list((Path(server.service.cache.root) / "tmp").iterdir()) == []
        channel.close()


def test_oversized_messages_rejected(tmp_path):
    big = os.urandom(5 << 20)  # over the 4 MiB message limit
    mid = os.urandom(2 << 20)  # under the message limit, over the 1 MiB chunk limit
    with running_agent(tmp_path, max_model_mb=64) as (_, addr):
        channel, stub = _stub(addr)
        with pytest.raises(grpc.RpcError) as ei:
            stub.Measure(iter([_header(big), pb.MeasureRequest(chunk=big)]), timeout=20)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as ei:
            stub.Measure(iter([_header(mid), pb.MeasureRequest(chunk=mid)]), timeout=20)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "chunk" in ei.value.details()
        with AgentClient(addr) as client:
            assert client.describe()["device_key"]
        channel.close()


def test_hanging_job_times_out_and_agent_answers_meanwhile(tmp_path):
    with running_agent(tmp_path) as (_, addr), AgentClient(addr, timeout=20) as client:
        with cf.ThreadPoolExecutor(1) as ex:
            t0 = time.monotonic()
            fut = ex.submit(client.measure, hang_onnx(), job_id="hang",
                            measure=replace(FAST, timeout_s=3.0, check_outputs=False))
            assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 1)
            t1 = time.monotonic()
            assert client.describe()["device_key"] and time.monotonic() - t1 < 2.0
            assert not fut.done()
            r = fut.result(timeout=30)
        assert r.error_kind == "timeout" and time.monotonic() - t0 < 15
        assert client.describe()["limits"]["queue_depth"] == 0
        assert client.measure(tiny_cnn_onnx(), job_id="after", measure=FAST).ok


def test_jobs_never_overlap_and_full_queue_is_resource_exhausted(tmp_path):
    models = [tiny_cnn_onnx(c) for c in (2, 3, 4)]
    with running_agent(tmp_path, queue_size=2) as (_, addr), AgentClient(addr, timeout=30) as client:
        for m in models:
            client.upload_model(m)
        with cf.ThreadPoolExecutor(3) as ex:
            results = list(ex.map(lambda i: client.measure(models[i], job_id=f"ov{i}", measure=FAST), range(3)))
        assert all(r.ok for r in results), [r.error for r in results]
        spans = sorted((r.provenance["agent_job"]["started_at"], r.provenance["agent_job"]["finished_at"])
                       for r in results)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"jobs overlapped: {spans}"
        assert sum(r.provenance["agent_job"]["queue_wait_s"] > 0.05 for r in results) >= 1

    # queue_size=1: one running + one waiting; the third is refused at once
    slow = replace(FAST, timeout_s=2.0, check_outputs=False)
    with running_agent(tmp_path, queue_size=1) as (_, addr), AgentClient(addr, timeout=30) as client:
        client.upload_model(hang_onnx())
        with cf.ThreadPoolExecutor(2) as ex:
            a = ex.submit(client.measure, hang_onnx(), job_id="q-a", measure=slow)
            assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 1)
            b = ex.submit(client.measure, hang_onnx(), job_id="q-b", measure=slow)
            assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 2)
            t0 = time.monotonic()
            with pytest.raises(errors.AgentBusy):
                client.measure(hang_onnx(), job_id="q-c", measure=slow)
            assert time.monotonic() - t0 < 2.0
            ra, rb = a.result(30), b.result(30)
        assert ra.error_kind == rb.error_kind == "timeout"
        assert rb.provenance["agent_job"]["started_at"] >= ra.provenance["agent_job"]["finished_at"]


def test_client_deadline_and_cancel_stop_the_job(tmp_path):
    long = replace(FAST, timeout_s=60.0, check_outputs=False)
    with running_agent(tmp_path) as (_, addr), AgentClient(addr, timeout=20) as client:
        client.upload_model(hang_onnx())
        t0 = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded):
            client.measure(hang_onnx(), job_id="deadline", measure=long, timeout=2.0)
        assert time.monotonic() - t0 < 5
        assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 0, 5.0)

        channel, stub = _stub(addr)
        sha = hashlib.sha256(hang_onnx()).hexdigest()
        h = pb.MeasureHeader(job_id="cancel", model_sha256=sha, model_size=len(hang_onnx()))
        h.measure.timeout_s = 60.0
        h.measure.check_outputs = False
        fut = stub.Measure.future(iter([pb.MeasureRequest(header=h)]), timeout=60)
        assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 1, 5.0)
        assert wait_until(job_processes, 10.0)  # the job runs in its child: cancel that
        fut.cancel()
        assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 0, 5.0)
        assert wait_until(lambda: not job_processes(), 5.0)
        r = client.measure(tiny_cnn_onnx(), job_id="next", measure=FAST)
        assert r.ok and r.provenance["agent_job"]["queue_wait_s"] < 0.5
        channel.close()


def test_graceful_drain_cancels_running_job_and_refuses_new_work(tmp_path):
    long = replace(FAST, timeout_s=60.0, check_outputs=False)
    with running_agent(tmp_path) as (server, addr), AgentClient(addr, timeout=20, retries=0) as client:
        client.upload_model(hang_onnx())
        with cf.ThreadPoolExecutor(2) as ex:
            fut = ex.submit(client.measure, hang_onnx(), job_id="drain", measure=long)
            assert wait_until(lambda: server.service.queue.depth == 1)
            stopper = ex.submit(server.shutdown, grace_s=1.0)
            assert wait_until(lambda: server.service.draining)
            assert client.health() == "NOT_SERVING"
            with pytest.raises(errors.AgentUnavailable):
                client.measure(tiny_cnn_onnx(), job_id="late", measure=FAST)
            r = fut.result(30)
            stopper.result(30)
        assert r.error_kind == "cancelled"


def test_build_engine_and_artifact_cache(tmp_path):
    model = tiny_cnn_onnx()
    with running_agent(tmp_path) as (_, addr), AgentClient(addr, timeout=60) as client:
        data, meta = client.build_engine(model, build=BuildConfig())
        assert data and meta["sha256"] == hashlib.sha256(data).hexdigest() and not meta["from_cache"]
        assert meta["backend"] == "onnxruntime" and meta["provenance"]["model_sha256"] == meta["model_sha256"]
        data2, meta2 = client.build_engine(model, build=BuildConfig())
        assert data2 == data and meta2["from_cache"] and meta2["cache_key"] == meta["cache_key"]
        with pytest.raises(errors.BuildFailed) as ei:
            client.build_engine(external_data_onnx(), build=BuildConfig())
        assert ei.value.error_kind == "invalid_model"


NB201 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nb201" / "nb201_tables.csv.gz"


@pytest.mark.skipif(not NB201.exists(), reason=f"shared data absent: {NB201}")
def test_table_agent_answers_from_the_table(tmp_path):
    import csv
    import gzip

    with gzip.open(NB201, "rt") as f:
        row = next(csv.DictReader(f))
    with running_agent(tmp_path, backend="table", table=str(NB201),
                       metrics=(("latency_ms", "lat_raspi4"),)) as (_, addr), AgentClient(addr) as client:
        info = client.describe()
        assert "table" in info["backends_available"] and info["device_key"] == "table-lat_raspi4"
        r = client.measure(b"", job_id="tbl", arch_key=row["arch_str"], measure=FAST)
        assert r.ok and r.backend == "table"
        assert r.latency_ms.median == pytest.approx(float(row["lat_raspi4"]))
        assert client.last_upload_bytes == 0
        r = client.measure(b"", job_id="tbl2", arch_key="not-an-arch", measure=FAST)
        assert r.error_kind == "unsupported"


def test_launcher_cli_and_sigterm(tmp_path):
    from device_agent.cli import main
    from device_agent.launcher import start_local_agent

    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(tiny_cnn_onnx())
    agent = start_local_agent(token="tok-123")
    try:
        assert agent.alive() and agent.address.startswith("127.0.0.1:")
        out = subprocess.run(
            [sys.executable, "-m", "device_agent", "measure", "--agent", agent.address, str(model_path),
             "--token", "tok-123", "--json", "--iterations", "5", "--duration", "0"],
            capture_output=True, text=True, timeout=90, cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["error"] is None and result["latency_ms"]["count"] >= 5
        assert main(["describe", "--agent", agent.address, "--token", "wrong"]) == 2
        events = [json.loads(line) for line in agent.log_tail(100_000).splitlines() if line.startswith("{")]
        assert any(e.get("event") == "auth_failed" for e in events)
        assert any(e.get("event") == "job_end" and e.get("error_kind") is None for e in events)
    finally:
        code = agent.stop()
    assert code == 0


def test_sigterm_drains_a_subprocess_agent(tmp_path):
    from device_agent.launcher import start_local_agent

    agent = start_local_agent(extra_args=["--drain-grace-s", "0.5"])
    with AgentClient(agent.address, timeout=20) as client:
        with cf.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(client.measure, hang_onnx(), job_id="term",
                            measure=replace(FAST, timeout_s=60.0, check_outputs=False))
            assert wait_until(lambda: client.describe()["limits"]["queue_depth"] == 1, 20)
            lines_path = agent.log_path
            agent.process.send_signal(signal.SIGTERM)
            r = fut.result(30)
    assert r.error_kind == "cancelled"
    assert agent.process.wait(20) == 0
    events = [json.loads(line) for line in lines_path.read_text().splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "serving" in names and "signal" in names and "stopped" in names
    agent.stop()


def test_client_retries_unavailable_until_the_agent_comes_up(tmp_path):
    import socket

    from device_agent.settings import DaemonSettings
    from device_agent.rpc.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with AgentClient(f"127.0.0.1:{port}", timeout=15, retries=8) as client:
        with cf.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(client.describe)
            time.sleep(0.5)
            assert not fut.done()
            server, bound = create_server(f"127.0.0.1:{port}",
                                          config=DaemonSettings(cache_dir=str(tmp_path / "c")))
            assert bound == port
            server.start()
            try:
                assert fut.result(15)["device_key"]
            finally:
                server.shutdown(grace_s=0)
    with AgentClient(f"127.0.0.1:{port}", timeout=2, retries=1) as client:
        with pytest.raises(errors.AgentUnavailable):
            client.describe()


def test_cli_measure_prints_a_readable_summary(tmp_path, capsys):
    from device_agent.cli import main

    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(tiny_cnn_onnx())
    (tmp_path / "token").write_text("tok\n")
    with running_agent(tmp_path, token="tok") as (_, addr):
        rc = main(["measure", "--agent", addr, str(model_path), "--token-file", str(tmp_path / "token"),
                   "--iterations", "5", "--duration", "0", "--threads", "1"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "latency  median" in out and "memory" in out and "energy   n/a" not in out.splitlines()[0]
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx at all")
        assert main(["measure", "--agent", addr, str(bad), "--token", "tok"]) == 1
        assert "FAILED [invalid_model]" in capsys.readouterr().out
