"""search.memory: peak activation and weight memory on hand-built ONNX graphs (peaks by hand)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from search.memory import MemoryEstimateError, parameter_count, peak_activation_bytes, peak_activation_kb, weights_kb

F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(shape=("N", 1, 4, 4)):
    return helper.make_tensor_value_info("x", F32, list(shape))


def _out(name):
    return helper.make_tensor_value_info(name, F32, None)


def test_chain_peak_is_one_input_plus_one_output():
    # x(64 B) -> relu a -> relu b: every step holds one input and one output: 128 B
    m = _model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"])], [_x()], [_out("b")])
    assert peak_activation_bytes(m) == 128
    assert peak_activation_kb(m) == pytest.approx(128 / 1024)
    assert peak_activation_bytes(m, batch=3) == 3 * 128  # the symbolic batch is set to 3


def test_residual_skip_stays_alive():
    # x -> a -> b; c = b + x: x is kept for the add, so step 1 holds x, a, b and step 2 x, b, c
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Add", ["b", "x"], ["c"])]
    assert peak_activation_bytes(_model(nodes, [_x()], [_out("c")])) == 3 * 64


def test_concat_peak_holds_both_branches_and_result():
    # x -> a, x -> b, c = concat(a, b) on channels (128 B): step 2 holds a, b, c = 256 B
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1)]
    assert peak_activation_bytes(_model(nodes, [_x()], [_out("c")])) == 64 + 64 + 128


def test_initializers_are_weights_not_activations():
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")  # not a parameter
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["y", "shape"], ["z"])]
    m = _model(nodes, [_x((1, 1, 4, 4))], [_out("z")], [w, shape])
    # conv: x 64 B + y 2x4x4x4 = 128 B; reshape: y + z = 256 B
    assert peak_activation_bytes(m) == 256
    assert parameter_count(m) == 18
    assert weights_kb(m, precision="fp32") == pytest.approx(18 * 4 / 1024)
    assert weights_kb(m, precision="fp16") == pytest.approx(18 * 2 / 1024)
    assert weights_kb(m, precision="int8") == pytest.approx(18 / 1024)
    with pytest.raises(MemoryEstimateError, match="unknown precision"):
        weights_kb(m, precision="int4")


def test_exported_menndl_net_and_bad_input(tmp_path):
    from search.training.exporting import export_onnx
    from search.spaces.base import TaskSpec
    from search.spaces.menndl import ConvGene, MenndlGenome, MenndlSpace

    g = MenndlGenome((ConvGene(8), ConvGene(8, skip_from=0)))
    net = MenndlSpace().build(g, TaskSpec(1, 8, 10))
    path = tmp_path / "m.onnx"
    path.write_bytes(export_onnx(net, (1, 1, 8, 8)))
    n_params = sum(p.numel() for p in net.parameters())
    # the exporter folds batch norm into the convs, so the deployed graph has a few fewer
    assert 0.9 * n_params <= parameter_count(path) <= n_params
    # at least the input plus two 8x8x8 fp32 maps alive at once
    assert peak_activation_bytes(path) >= 64 * 4 + 2 * 512 * 4
    with pytest.raises(MemoryEstimateError, match="no ONNX file"):
        peak_activation_kb(tmp_path / "missing.onnx")
    bad = _model([helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Relu", ["x"], ["a"])], [_x()], [_out("b")])
    with pytest.raises(MemoryEstimateError):
        peak_activation_bytes(bad)
