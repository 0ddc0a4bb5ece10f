"""TensorRT backend: imports and explains itself without TensorRT; pure helpers (versions,
precision per version, cache keys, shapes, inspector parsing); a real build where a GPU exists."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.backends import BackendUnavailable, UnsupportedError, get_backend, list_backends
from device_agent.backends.tensorrt import (
    TensorRTBackend,
    engine_cache_key,
    format_parser_errors,
    network_flag_names,
    onnx_has_qdq,
    parse_version,
    precision_from_inspector,
    resolve_shape,
    select_precision,
    timing_cache_path,
)
from device_agent.config import BuildConfig


def conv_model(*, qdq: bool = False, in_subgraph: bool = False) -> bytes:
    """A Conv+Relu ONNX model with a dynamic batch dim (optionally with Q/DQ nodes)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    inits = [w]
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        q = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        if in_subgraph:
            branch = helper.make_graph(q, "b", [], [helper.make_tensor_value_info(
                "xd", TensorProto.FLOAT, None)])
            inits.append(numpy_helper.from_array(np.array(True), "cond"))
            q = [helper.make_node("If", ["cond"], ["xd"], then_branch=branch, else_branch=branch)]
        nodes = q + [helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
                     helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ---------------------------------------------------------------------- without TensorRT
def test_module_imports_without_tensorrt_or_cuda():
    code = ("import sys, device_agent.backends.tensorrt as m; "
            "print(m.TensorRTBackend.name, 'tensorrt' in sys.modules, "
            "any(k == 'cuda' or k.startswith('cuda.') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tensorrt", "False", "False"]  # registered, nothing loaded


def test_availability_explains_why_not(tmp_path):
    ok, reason = TensorRTBackend.availability()
    if ok:
        pytest.skip(f"TensorRT is available here: {reason}")
    assert "tensorrt" in reason.lower() and ("not importable" in reason or "cuda" in reason.lower())
    assert list_backends()["tensorrt"] == (False, reason)
    model = tmp_path / "m.onnx"
    model.write_bytes(conv_model())
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        get_backend("tensorrt")().build(str(model), BuildConfig(backend="tensorrt"),
                                        workdir=str(tmp_path))


# ------------------------------------------------------------------------------ pure helpers
def test_parse_version():
    assert parse_version("8.5.3.1") == (8, 5, 3)
    assert parse_version("8.6.1.post1") == (8, 6, 1)
    assert parse_version("10.3.0.26") == (10, 3, 0)
    assert parse_version("11.0") == (11, 0, 0)
    with pytest.raises(ValueError):
        parse_version("unknown")


def test_network_flags_per_version():
    assert network_flag_names((8, 5, 2)) == ["EXPLICIT_BATCH"]
    assert network_flag_names((8, 6, 1)) == ["EXPLICIT_BATCH"]
    assert network_flag_names((10, 0, 1)) == []
    assert network_flag_names((11, 1, 0)) == []


def test_precision_selection_per_version():
    for version in ((8, 6, 1), (10, 3, 0), (11, 0, 0)):
        fp32 = select_precision("fp32", version, has_qdq=False)
        assert fp32.set_flags == () and fp32.clear_flags == ("TF32",)
    assert select_precision("fp16", (8, 6, 1), has_qdq=False).set_flags == ("FP16",)
    assert select_precision("fp16", (10, 3, 0), has_qdq=False).set_flags == ("FP16",)
    p11 = select_precision("fp16", (11, 0, 0), has_qdq=False)
    assert p11.set_flags == () and "strongly typed" in p11.note
    assert select_precision("int8", (10, 3, 0), has_qdq=True).set_flags == ("INT8",)
    assert select_precision("int8", (11, 0, 0), has_qdq=True).set_flags == ()
    with pytest.raises(UnsupportedError, match="Q/DQ"):
        select_precision("int8", (10, 3, 0), has_qdq=False)
    with pytest.raises(UnsupportedError, match="unknown precision"):
        select_precision("fp64", (10, 3, 0), has_qdq=False)


def test_dynamic_batch_dims():
    assert resolve_shape("x", (-1, 3, 32, 32), 4) == (4, 3, 32, 32)
    assert resolve_shape("x", (2, 3, 32, 32), 4) == (2, 3, 32, 32)
    with pytest.raises(UnsupportedError, match="axis 2"):
        resolve_shape("x", (1, 3, -1, 32), 1)


def test_engine_cache_key_covers_every_component(tmp_path):
    base = dict(onnx_sha256="a" * 64, trt_version="10.3.0", gpu_model="NVIDIA H100 80GB HBM3",
                build=BuildConfig(backend="tensorrt").to_dict(), batch_size=1)
    key = engine_cache_key(**base)
    assert len(key) == 64 and key == engine_cache_key(**base)
    variants = [dict(onnx_sha256="b" * 64), dict(trt_version="10.4.0"),
                dict(gpu_model="NVIDIA A100-SXM4-40GB"), dict(batch_size=8),
                dict(build=BuildConfig(backend="tensorrt", precision="fp16").to_dict())]
    keys = {engine_cache_key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys
    path = timing_cache_path(tmp_path, "NVIDIA GeForce RTX 4090", "10.3.0.26")
    assert path == tmp_path / "timing" / "nvidia-geforce-rtx-4090-trt10.3.0.26.cache"


def test_onnx_qdq_detection():
    assert onnx_has_qdq(conv_model()) is False
    assert onnx_has_qdq(conv_model(qdq=True)) is True
    assert onnx_has_qdq(conv_model(qdq=True, in_subgraph=True)) is True


def test_precision_from_inspector_json_of_each_version():
    v10 = {"Layers": [
        {"Name": "conv1", "Outputs": [{"Name": "c", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "relu", "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]}],
        "Bindings": ["x", "y"]}
    assert precision_from_inspector(json.dumps(v10)) == {"precision": "fp32",
                                                         "layer_types": {"fp32": 2}}
    v11 = {"Layers": [
        {"Name": "conv1", "Outputs": [{"Name": "c", "Format": "Channel major FP16 format (kHWC8)",
                                       "DataType": "Half"}]},
        {"Name": "cast", "Outputs": [{"Name": "y", "DataType": "Float"}]}],
        "I/O Tensors": [{"Name": "x", "IOMode": "Input", "DataType": "Float"}]}
    got = precision_from_inspector(json.dumps(v11))
    assert got == {"precision": "mixed", "layer_types": {"fp16": 1, "fp32": 1}}
    int8 = {"Layers": [{"Outputs": [{"Format/Datatype": "Four wide channel vectorized row major "
                                                         "Int8 format"}]}]}
    assert precision_from_inspector(json.dumps(int8))["precision"] == "int8"
    # ProfilingVerbosity below DETAILED gives layer names only
    assert precision_from_inspector(json.dumps({"Layers": ["conv1", "relu"]}))["precision"] == "unknown"
    assert precision_from_inspector("not json")["precision"] == "unknown"


def test_parser_errors_are_all_reported():
    msg = format_parser_errors([
        {"node": 3, "node_name": "/conv/Conv", "operator": "Conv", "desc": "bad kernel"},
        {"node": -1, "desc": "model has no opset"}])
    assert msg.startswith("ONNX parser: 2 error(s)")
    assert "node 3 '/conv/Conv' (Conv): bad kernel" in msg and "model has no opset" in msg


# ------------------------------------------------------------------------------ on a GPU only
def test_build_run_profile_serialize_on_gpu(tmp_path):
    ok, reason = TensorRTBackend.availability()
    if not ok:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {reason}")
    import onnxruntime as ort

    model = tmp_path / "m.onnx"
    model.write_bytes(conv_model())
    backend = TensorRTBackend(cache_dir=tmp_path / "cache")
    cfg = BuildConfig(backend="tensorrt", precision="fp32", workspace_mb=256)
    runner = backend.build(str(model), cfg, workdir=str(tmp_path), batch_size=2)
    try:
        assert runner.input_specs[0].shape == (2, 3, 8, 8)
        x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
        runner.prepare({"x": x})
        runner.run()
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        np.testing.assert_allclose(runner.outputs()["y"], ref[0], atol=1e-5, rtol=1e-5)
        ms = runner.timed_run()
        assert ms is not None and ms > 0 and runner.last_enqueue_ms is not None
        layers = runner.profile(5)
        assert layers and all(layer["count"] == 5 for layer in layers)
        plan = runner.serialize()
        assert plan and len(plan) > 100
        info = runner.info()
        assert info["engine_cache"] == "miss" and info["memory"]["activation_bytes"] >= 0
        assert runner.precision in ("fp32", "unknown")
    finally:
        runner.close()
    again = backend.build(str(model), cfg, workdir=str(tmp_path), batch_size=2)
    assert again.info()["engine_cache"] == "hit"
    again.close()
    assert any((tmp_path / "cache" / "timing").iterdir())


def test_int8_by_calibration_and_best_flags():
    """INT8 from calibration images (entropy calibrator) on TensorRT < 11; ``best`` sets FP16
    (+ INT8 where the graph is quantized or calibrated); TensorRT 11 has no implicit calibration."""
    from device_agent.backends.tensorrt import calibration_batches

    assert select_precision("int8", (10, 3, 0), has_qdq=False, calibrated=True).set_flags == ("INT8",)
    assert select_precision("best", (10, 3, 0), has_qdq=False).set_flags == ("FP16",)
    assert select_precision("best", (8, 6, 1), has_qdq=False, calibrated=True).set_flags == ("FP16", "INT8")
    with pytest.raises(UnsupportedError, match="no implicit INT8 calibration"):
        select_precision("int8", (11, 0, 0), has_qdq=False, calibrated=True)
    batches = calibration_batches(np.arange(7 * 3 * 2 * 2, dtype=np.float64).reshape(7, 3, 2, 2), 3)
    assert [b.shape for b in batches] == [(3, 3, 2, 2)] * 2 and batches[0].dtype == np.float32
    assert batches[1].flags["C_CONTIGUOUS"] and batches[1][0, 0, 0, 0] == 36.0
    with pytest.raises(UnsupportedError, match="at least 8 images"):
        calibration_batches(np.zeros((4, 3, 2, 2)), 8)


def test_calibration_images_round_trip_through_a_valid_onnx_container(tmp_path):
    """The agent keeps only valid models, so calibration images travel as one ONNX initializer."""
    from device_agent.core.calibration import calibration_model, read_calibration
    from device_agent.core.validate import validate_model

    images = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    path = tmp_path / "cal.onnx"
    path.write_bytes(calibration_model(images))
    validate_model(str(path))  # passes the agent's hostile-input checks
    assert np.array_equal(read_calibration(str(path)), images)
    other = tmp_path / "model.onnx"
    from tests._agent_util import tiny_cnn_onnx

    other.write_bytes(tiny_cnn_onnx())
    with pytest.raises(ValueError, match="calibration container"):
        read_calibration(str(other))
