"""Sandboxed jobs: real child processes, real timeouts, real allocation failures, real crashes."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from device_agent.config import BuildConfig, MeasureConfig
from device_agent.core.jobs import PEAK_MEMORY_METHOD, JobFailed, build_artifact, run_job

from conftest import export_tiny_cnn, hang_onnx, job_processes, wait_until

FAST = MeasureConfig(warmup_s=0.02, min_iterations=30, min_duration_s=0.1, cv_threshold=10.0,
                     timeout_s=60)


def export_cnn(path, seed: int) -> str:
    return export_tiny_cnn(path, seed=seed)


def hang_model(path) -> str:
    """A Loop with 2**62 iterations: a model that runs (practically) forever."""
    Path(path).write_bytes(hang_onnx())
    return str(path)


def hog_model(path, n: int = 20000) -> str:
    """Expand a scalar to n x n floats (1.6 GB for n=20000), then reduce."""
    g = h.make_graph([h.make_node("Expand", ["x", "shape"], ["big"]),
                      h.make_node("ReduceSum", ["big"], ["y"], keepdims=0)], "hog",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])], [h.make_tensor_value_info("y", T.FLOAT, [])],
                     [nh.from_array(np.array([n, n], np.int64), "shape")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    return {"cnn": export_cnn(d / "cnn.onnx", 0), "cnn_b": export_cnn(d / "cnn_b.onnx", 1),
            "hang": hang_model(d / "hang.onnx"), "hog": hog_model(d / "hog.onnx")}


def test_tiny_cnn_ok(models):
    cfg = MeasureConfig(**dict(FAST.to_dict(), profile_layers=True, batch_size=2))
    r = run_job(models["cnn"], BuildConfig(intra_op_threads=1), cfg, job_id="j1", device_key="dev")
    assert r.ok, r.error
    assert (r.job_id, r.device_key, r.backend) == ("j1", "dev", "onnxruntime")
    assert len(r.model_sha256) == 64
    s = r.latency_ms
    assert s.count >= 30 and 0 < s.min <= s.median <= s.p99 <= s.max < 1000
    assert s.ci_low <= s.median <= s.ci_high and "host wall clock" in s.method
    assert r.peak_memory_mb.status == "measured" and 0 < r.peak_memory_mb.value < 1024
    assert r.peak_memory_mb.method == PEAK_MEMORY_METHOD and r.peak_memory_mb.method.startswith("host RSS")
    assert r.device_peak_mb is None  # no accelerator here
    assert r.output_check["ok"] and r.output_check["max_abs_diff"] < 1e-5
    assert r.energy.status in ("measured", "unavailable")
    if r.energy.status == "unavailable":
        assert r.energy.value_mj is None
    assert r.layers and any(lay["op_type"] == "Conv" for lay in r.layers)
    assert r.provenance["runner"]["intra_op_num_threads"] == 1
    assert r.provenance["precision_obtained"] == "fp32"
    assert r.build_config["intra_op_threads"] == 1 and r.measure_config["batch_size"] == 2
    assert r.provenance["timing"]["stop_reason"]


def test_malformed_bytes_invalid_model(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"this is not a protobuf \xff\xff\xff")
    r = run_job(str(p), BuildConfig(), FAST, job_id="bad", device_key="dev")
    assert r.error_kind == "invalid_model" and "malformed" in r.error


def test_external_data_rejected_without_reading(models, tmp_path):
    fifo = str(tmp_path / "weights.bin")
    os.mkfifo(fifo)  # reading it would block until the timeout: a read fails loudly
    m = onnx.load(models["cnn"])
    init = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    init.ClearField("raw_data")
    init.data_location = T.EXTERNAL
    for k, v in (("location", fifo), ("offset", "0"), ("length", "1024")):
        e = init.external_data.add()
        e.key, e.value = k, v
    p = tmp_path / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    t0 = time.monotonic()
    r = run_job(str(p), BuildConfig(), MeasureConfig(timeout_s=20), job_id="ext", device_key="dev")
    assert r.error_kind == "invalid_model" and "external data" in r.error
    assert time.monotonic() - t0 < 15


def test_hang_times_out(models):
    t0 = time.monotonic()
    r = run_job(models["hang"], BuildConfig(), MeasureConfig(timeout_s=2.0), job_id="hang", device_key="dev")
    assert r.error_kind == "timeout" and "timeout" in r.error
    assert time.monotonic() - t0 < 8


def test_memory_hog_is_oom(models):
    r = run_job(models["hog"], BuildConfig(), MeasureConfig(memory_limit_mb=768, timeout_s=60),
                job_id="hog", device_key="dev")
    assert r.error_kind == "oom", r.error


def test_python_allocation_hook_is_oom(models, monkeypatch):
    monkeypatch.setenv("HWNAS_TEST_HOOKS", "1")
    monkeypatch.setenv("HWNAS_TEST_HOOK", "alloc")
    r = run_job(models["cnn"], BuildConfig(), MeasureConfig(memory_limit_mb=512, timeout_s=60),
                job_id="alloc", device_key="dev")
    assert r.error_kind == "oom" and "MemoryError" in r.error


def test_crash_hook_is_crash(models, monkeypatch):
    monkeypatch.setenv("HWNAS_TEST_HOOKS", "1")
    monkeypatch.setenv("HWNAS_TEST_HOOK", "crash")
    r = run_job(models["cnn"], BuildConfig(), FAST, job_id="crash", device_key="dev")
    assert r.error_kind == "crash" and "SIGSEGV" in r.error
    # the hook is ignored without HWNAS_TEST_HOOKS=1
    monkeypatch.setenv("HWNAS_TEST_HOOKS", "0")
    assert run_job(models["cnn"], BuildConfig(), FAST, job_id="nohook", device_key="dev").ok


def test_cancel_kills_child(models):
    cancel = threading.Event()
    out = {}
    t = threading.Thread(target=lambda: out.update(r=run_job(
        models["hang"], BuildConfig(), MeasureConfig(timeout_s=60), job_id="c", device_key="dev",
        cancel=cancel)))
    t0 = time.monotonic()
    t.start()
    assert wait_until(job_processes, 10.0)  # cancel the running child, not a job not yet started
    cancel.set()
    t.join(10)
    assert not t.is_alive() and out["r"].error_kind == "cancelled"
    assert time.monotonic() - t0 < 5


def test_output_mismatch_reported(models):
    r = run_job(models["cnn"], BuildConfig(), FAST, job_id="mm", device_key="dev",
                reference_model_path=models["cnn_b"])
    assert r.error_kind == "output_mismatch" and "max abs diff" in r.error
    assert r.output_check["max_abs_diff"] > 1e-3 and r.latency_ms is None


def test_unsupported_provider_is_a_value(models):
    r = run_job(models["cnn"], BuildConfig(execution_provider="no-such-ep"), FAST, job_id="u",
                device_key="dev")
    assert r.error_kind == "unsupported" and "no-such-ep" in r.error


def test_build_artifact(models):
    blob, prov = build_artifact(models["cnn"], BuildConfig(), job_id="art", timeout_s=60)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
    assert len(prov["model_sha256"]) == 64 and prov["runner"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    with pytest.raises(JobFailed) as err:
        build_artifact(models["hang"], BuildConfig(execution_provider="no-such-ep"), job_id="x", timeout_s=60)
    assert err.value.kind == "unsupported"


def test_unavailable_backend_is_unsupported(models):
    from device_agent.backends import list_backends

    ok, reason = list_backends()["tensorrt"]
    if ok:
        pytest.skip("TensorRT is available here; its own tests cover it")
    r = run_job(models["cnn"], BuildConfig(backend="tensorrt"), FAST, job_id="trt", device_key="dev")
    assert r.error_kind == "unsupported" and "tensorrt" in r.error.lower()


def test_device_memory_is_its_own_metric_measured_or_computed():
    """Accelerator memory: the CUDA/NVML delta when measured, the engine's size when not, absent on a CPU."""
    from device_agent.core.jobs import device_memory_metric

    assert device_memory_metric({}) is None  # a CPU runner reports no accelerator memory
    trt = {"memory": {"activation_bytes": 3 << 20, "io_bytes": 1 << 20, "cuda_mem_delta_bytes": 0}}
    m = device_memory_metric(trt)
    assert m["value"] == 4.0 and m["status"] == "computed" and "device_memory_size" in m["method"]
    trt["memory"]["cuda_mem_delta_bytes"] = 10 << 20
    m = device_memory_metric(trt)
    assert m["value"] == 10.0 and m["status"] == "measured" and "device_memory_size 3.0 MB" in m["method"]
    ort = {"memory": {"nvml_used_delta_bytes": 6 << 20, "method": "NVML delta"}}
    assert device_memory_metric(ort) == {"value": 6.0, "status": "measured", "method": "NVML delta", "unit": "MB"}
