"""A fallback is an error, not a label: a precision that was not obtained, and an execution
provider that ONNX Runtime silently replaced by the CPU, fail the build with their reason."""
from __future__ import annotations

import pytest

from device_agent.backends.base import BuildError, get_backend, precision_problem
from device_agent.backends.onnxruntime_backend import provider_fallback
from device_agent.backends.tensorrt import precision_from_inspector
from device_agent.config import BuildConfig
from tests._agent_util import tiny_cnn_onnx


def test_precision_problem_rules():
    assert precision_problem("fp16", "fp16") is None
    assert "not obtained" in precision_problem("fp16", "fp32")
    # mixed counts only when the requested type has layers (TensorRT keeps some layers fp32)
    assert precision_problem("fp16", "mixed", {"layer_types": {"fp16": 5, "fp32": 2}}) is None
    assert "not obtained" in precision_problem("int8", "mixed", {"layer_types": {"fp16": 5, "fp32": 2}})
    # unknown: fine for fp32 (no reduced-precision flag was set), an error for fp16/int8
    assert precision_problem("fp32", "unknown") is None
    assert "could not be confirmed" in precision_problem("fp16", "unknown")
    assert precision_problem("best", "mixed") is None and precision_problem("best", "unknown")
    # TensorRT's inspector JSON without data types says unknown, never the request
    assert precision_from_inspector('{"Layers": ["conv1"]}')["precision"] == "unknown"


def test_provider_fallback_to_cpu_is_detected():
    assert provider_fallback("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert provider_fallback("cpu", ["CPUExecutionProvider"]) is None
    why = provider_fallback("cuda", ["CPUExecutionProvider"])
    assert "CUDAExecutionProvider was requested" in why and "CPUExecutionProvider" in why
    assert "TensorrtExecutionProvider" in provider_fallback("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_onnxruntime_refuses_what_it_cannot_give(tmp_path):
    """fp16 on the CPU provider: obtained from the graph ORT runs (on x86 it casts fp16 back to
    fp32, so the build fails with that reason; where fp16 kernels exist it is fp16)."""
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_cnn_onnx())
    backend = get_backend("onnxruntime")()
    try:
        runner = backend.build(str(path), BuildConfig(precision="fp16"), workdir=str(tmp_path))
    except BuildError as exc:
        assert "fp16 was not obtained: the build gave fp32" in str(exc) and "CPU provider" in str(exc)
    else:
        assert runner.precision == "fp16"
        runner.close()
    with pytest.raises(Exception, match="best"):
        backend.build(str(path), BuildConfig(precision="best"), workdir=str(tmp_path))
    with pytest.raises(ValueError, match="precision"):
        BuildConfig(precision="fp8")
    with pytest.raises(ValueError, match="MIN <= OPT <= MAX"):
        BuildConfig(batch_min=4, batch_opt=2, batch_max=8)
