"""Issue 14's probes of the device agent side: the search's local agent process, the output
check on scalar inputs, the cache after a rejected upload. Real processes, real ONNX Runtime
sessions, a real agent over gRPC on loopback.

Each test is named ``test_probe_NN_*`` after the issue's item; ``bench/fault_probes.py`` runs
them all and prints probe | held/broke.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from _agent_util import write_nb201_table
from device_agent.launcher import REPO_ROOT


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------------- item 9
def test_probe_09_local_agent_dies_with_a_killed_search(tmp_path):
    table = tmp_path / "synth.csv.gz"
    write_nb201_table(table)
    run = tmp_path / "run"
    search = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "--out", str(run), "--space", "nb201",
                               "--accuracy-table", f"{table}:acc", "--budget", "100000", "--no-progress"],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(search.pid)
        end = time.monotonic() + 90
        agents: list[psutil.Process] = []
        while not agents:
            assert search.poll() is None, search.stderr.read()[-2000:]
            assert time.monotonic() < end, "no local agent started"
            agents = [c for c in parent.children() if "device_agent" in " ".join(c.cmdline())]
            time.sleep(0.2)
        agent = agents[0]
        time.sleep(1.0)  # let it serve
        search.send_signal(signal.SIGKILL)
        search.wait(30)
        end = time.monotonic() + 30
        while _alive(agent):
            if time.monotonic() > end:
                agent.kill()  # do not leave it behind when the probe breaks
                pytest.fail(f"local agent {agent.pid} outlived the killed search")
            time.sleep(0.2)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait(30)


# ---------------------------------------------------------------------------------- item 12
def _scalar_model(nodes, inputs, outputs) -> bytes:
    from onnx import helper as h

    g = h.make_graph(nodes, "scalar", [h.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                     [h.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()


def test_probe_12_rank0_inputs_pass_the_output_check(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper as h

    from _agent_util import FAST, running_agent
    from device_agent.rpc.client import AgentClient

    models = {
        "float Relu": _scalar_model([h.make_node("Relu", ["x"], ["y"])], [("x", T.FLOAT, [])], [("y", T.FLOAT, [])]),
        "bool Not": _scalar_model([h.make_node("Not", ["b"], ["y"])], [("b", T.BOOL, [])], [("y", T.BOOL, [])]),
        "int64 Identity": _scalar_model([h.make_node("Identity", ["i"], ["y"])], [("i", T.INT64, [])],
                                        [("y", T.INT64, [])]),
        "bool scalar beside a tensor": _scalar_model(
            [h.make_node("Neg", ["x"], ["n"]), h.make_node("Where", ["b", "x", "n"], ["y"])],
            [("b", T.BOOL, []), ("x", T.FLOAT, [2, 3])], [("y", T.FLOAT, [2, 3])]),
    }
    with running_agent(tmp_path) as (_server, address), AgentClient(address, timeout=60) as client:
        for name, model in models.items():
            r = client.measure(model, measure=FAST)
            assert r.error is None, (name, r.error_kind, r.error)
            assert r.output_check["ok"] and r.output_check["max_abs_diff"] == 0.0, (name, r.output_check)
            assert r.latency_ms is not None and r.latency_ms.median > 0, name


# ---------------------------------------------------------------------------------- item 14
def test_probe_14_rejected_models_never_stay_in_the_cache(tmp_path):
    import hashlib
    import os

    from _agent_util import FAST, external_data_onnx, running_agent, tiny_cnn_onnx
    from device_agent.rpc.client import AgentClient

    cache = tmp_path / "agent-cache"

    def held_files() -> list[Path]:
        return sorted((cache / "models").glob("*/*.onnx"))

    junk = os.urandom(8 * 1024 * 1024)  # bytes that are no ONNX model
    hostile = external_data_onnx()  # parses, but points at files outside the upload
    with running_agent(tmp_path, cache_dir=str(cache)) as (_server, address), \
            AgentClient(address, timeout=120) as client:
        for model in (junk, hostile):
            r = client.measure(model, measure=FAST)
            assert r.error_kind == "invalid_model", (r.error_kind, r.error)
            assert not client.has_model(hashlib.sha256(model).hexdigest())
            assert held_files() == [], "a rejected model stayed in the cache"
            # asked again: the same answer, still nothing kept
            assert client.measure(model, measure=FAST).error_kind == "invalid_model"
            client.upload_model(model)  # an upload alone is validated as well
            assert held_files() == []
        good = tiny_cnn_onnx()
        assert client.measure(good, measure=FAST).error is None
        assert [p.stem for p in held_files()] == [hashlib.sha256(good).hexdigest()]
