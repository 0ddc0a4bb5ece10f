"""The timed loop, output check, ORT backend and backend registry, on real ORT sessions."""
from __future__ import annotations

import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from device_agent.backends import BackendError, Runner, UnsupportedError, get_backend, list_backends
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.core.measure import (
    HOST_METHOD,
    OutputMismatch,
    check_outputs,
    make_inputs,
    measure_energy,
    measure_latency,
    timed_loop,
)

FAST = dict(warmup_s=0.02, min_iterations=20, min_duration_s=0.05, cv_threshold=10.0)


def export_cnn(path, seed: int, *, dynamic_hw: bool = False) -> str:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(16, 10)).eval()
    axes = {"x": {0: "N", 2: "H", 3: "W"}} if dynamic_hw else {"x": {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(1, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"a": export_cnn(d / "a.onnx", 0), "b": export_cnn(d / "b.onnx", 1),
            "dyn": export_cnn(d / "dyn.onnx", 0, dynamic_hw=True)}


@pytest.fixture
def runner(models, tmp_path):
    r = get_backend("onnxruntime")().build(models["a"], BuildConfig(intra_op_threads=1),
                                           workdir=str(tmp_path), batch_size=2)
    yield r
    r.close()


def test_registry_lists_backends():
    backends = list_backends()
    assert backends["onnxruntime"][0] is True
    assert {"onnxruntime", "tensorrt"} <= set(backends) and "table" not in backends
    for ok, reason in backends.values():
        assert isinstance(ok, bool) and reason
    with pytest.raises(UnsupportedError, match="unknown backend"):
        get_backend("no-such-backend")


def test_runner_lifecycle_and_specs(runner):
    assert [(s.name, s.shape, s.dtype) for s in runner.input_specs] == [("x", (2, 3, 32, 32), "float32")]
    assert runner.precision == "fp32"
    assert runner.info()["intra_op_num_threads"] == 1
    with pytest.raises(BackendError, match="prepare"):
        runner.run()
    with pytest.raises(BackendError, match="expected float32"):
        runner.prepare({"x": np.zeros((1, 3, 32, 32), np.float32)})
    runner.prepare(make_inputs(runner.input_specs, 0))
    runner.run()
    assert runner.outputs()["y"].shape == (2, 10)


def test_inputs_seeded():
    from device_agent.backends import TensorSpec

    specs = [TensorSpec("x", (2, 3), "float32"), TensorSpec("i", (4,), "int64"), TensorSpec("b", (3,), "bool")]
    a, b, c = make_inputs(specs, 0), make_inputs(specs, 0), make_inputs(specs, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x"], c["x"])
    assert a["i"].dtype == np.int64 and a["b"].dtype == np.bool_


def test_dynamic_spatial_dim_unsupported(models, tmp_path):
    with pytest.raises(UnsupportedError, match="unsupported dynamic dim"):
        get_backend("onnxruntime")().build(models["dyn"], BuildConfig(), workdir=str(tmp_path))


def test_loop_honours_min_iterations_and_duration(runner):
    runner.prepare(make_inputs(runner.input_specs, 0))
    loop = timed_loop(runner, MeasureConfig(min_iterations=300, min_duration_s=0.0))
    assert len(loop.samples_ms) >= 300 and not loop.device_timed
    t0 = time.perf_counter()
    loop = timed_loop(runner, MeasureConfig(min_iterations=10, min_duration_s=0.25))
    assert time.perf_counter() - t0 >= 0.25 and loop.duration_s >= 0.25
    assert len(loop.samples_ms) >= 10
    assert loop.stop_reason == "min_iterations and min_duration_s reached"


def test_loop_capped_and_early_stop(runner):
    runner.prepare(make_inputs(runner.input_specs, 0))
    loop = timed_loop(runner, MeasureConfig(min_iterations=10**9, min_duration_s=60, max_duration_s=0.2))
    assert loop.stop_reason == "max_duration_s" and 0.2 <= loop.duration_s < 1.0
    # a loose target precision stops long before min_duration_s
    loop = timed_loop(runner, MeasureConfig(min_iterations=64, min_duration_s=60, max_duration_s=10,
                                            target_precision=0.5))
    assert loop.stop_reason == "median CI within target_precision" and loop.duration_s < 5


def test_measure_latency_stats_and_unstable_flag(runner):
    runner.prepare(make_inputs(runner.input_specs, 0))
    stats, flags, info = measure_latency(runner, MeasureConfig(**FAST))
    assert stats.method == HOST_METHOD and stats.count >= 20
    assert 0 < stats.min <= stats.median <= stats.p90 <= stats.p99 <= stats.max
    assert stats.ci_low <= stats.median <= stats.ci_high and flags == []
    assert info["warmup_iterations"] >= 1
    # an impossible CV threshold: measured twice, then flagged
    stats, flags, info = measure_latency(runner, MeasureConfig(**dict(FAST, cv_threshold=0.0)))
    assert flags == ["unstable"] and "first_pass" in info


class DeviceTimedRunner(Runner):
    """Wraps a real ORT runner and reports device/enqueue times as a GPU runner would."""

    def __init__(self, inner: Runner, enqueue_fraction: float) -> None:
        super().__init__()
        self.inner, self.fraction = inner, enqueue_fraction

    input_specs = property(lambda self: self.inner.input_specs)
    precision = property(lambda self: self.inner.precision)

    def prepare_impl(self, inputs):
        self.inner.prepare(inputs)

    def run_impl(self):
        self.inner.run()

    def timed_run_impl(self):
        t0 = time.perf_counter_ns()
        self.inner.run()
        ms = (time.perf_counter_ns() - t0) / 1e6
        self.last_enqueue_ms = self.fraction * ms
        return ms

    def outputs_impl(self):
        return self.inner.outputs()


@pytest.mark.parametrize("fraction,expect", [(0.95, True), (0.1, False)])
def test_host_bound_flag(runner, fraction, expect):
    dev = DeviceTimedRunner(runner, fraction)
    dev.prepare(make_inputs(dev.input_specs, 0))
    stats, flags, info = measure_latency(dev, MeasureConfig(**FAST))
    assert stats.method.startswith("device timer")
    assert ("host_bound" in flags) is expect
    assert info["host_enqueue_median_ms"] > 0


def test_output_check_passes_and_detects_mismatch(models, runner):
    inputs = make_inputs(runner.input_specs, 0)
    runner.prepare(inputs)
    res = check_outputs(runner, models["a"], inputs)
    assert res["ok"] and res["atol"] == 1e-5 and res["max_abs_diff"] < 1e-5
    with pytest.raises(OutputMismatch) as err:
        check_outputs(runner, models["a"], inputs, reference_model_path=models["b"])
    assert err.value.details["max_abs_diff"] > 1e-3 and not err.value.details["ok"]


def test_profile_and_serialize(models, runner, tmp_path):
    inputs = make_inputs(runner.input_specs, 0)
    runner.prepare(inputs)
    layers = runner.profile(5)
    assert layers and {"Conv", "Gemm"} <= {lay["op_type"] for lay in layers}
    assert all(lay["count"] == 5 and lay["median_ms"] >= 0 for lay in layers)
    blob = runner.serialize()
    onnx.load_from_string(blob)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    runner.run()
    np.testing.assert_allclose(sess.run(None, inputs)[0], runner.outputs()["y"], rtol=1e-5, atol=1e-5)


def test_energy_never_invented(runner):
    runner.prepare(make_inputs(runner.input_specs, 0))
    t0 = time.perf_counter()
    energy, flags = measure_energy(runner, MeasureConfig(energy=True))
    if energy.status == "measured":  # a machine with a real sensor
        assert energy.window_s >= 5.0 and energy.iterations >= 32 and energy.value_mj > 0
    else:
        assert energy.status == "unavailable" and energy.value_mj is None and energy.method
        assert time.perf_counter() - t0 < 2.0  # no pointless 5 s window without a sensor
    off, _ = measure_energy(runner, MeasureConfig(energy=False))
    assert off.status == "unavailable" and "not requested" in off.method
