"""Model validation: every rejection path, on real ONNX files."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from device_agent.core.validate import InvalidModel, validate_bytes, validate_model


def small_model(op: str = "Relu", domain: str = "", opsets=(("", 17),), w_elems: int = 4) -> onnx.ModelProto:
    w = nh.from_array(np.ones(w_elems, np.float32), "w")
    nodes = [h.make_node("Add", ["x", "w"], ["a"]), h.make_node(op, ["a"], ["y"], domain=domain)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [w_elems])],
                     [h.make_tensor_value_info("y", T.FLOAT, [w_elems])], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid(d, v) for d, v in opsets])


def save(model: onnx.ModelProto, path) -> str:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


def test_valid_model_passes(tmp_path):
    m = validate_model(save(small_model(), tmp_path / "ok.onnx"))
    assert [n.op_type for n in m.graph.node] == ["Add", "Relu"]


def test_ort_contrib_domain_accepted():
    m = small_model("Gelu", "com.microsoft", (("", 17), ("com.microsoft", 1)))
    validate_bytes(m.SerializeToString())


@pytest.mark.parametrize("data", [b"", b"\xff\xfe definitely not protobuf \x00\x01", bytes(range(256)) * 2])
def test_malformed_bytes(data):
    with pytest.raises(InvalidModel, match="malformed|empty|no graph"):
        validate_bytes(data)


def _fifo(tmp_path) -> str:
    """A FIFO: reading it would block forever, so a test that reads it hangs and fails loudly."""
    path = str(tmp_path / "weights.bin")
    os.mkfifo(path)
    return path


def test_external_initializer_rejected_without_reading(tmp_path):
    fifo = _fifo(tmp_path)
    m = small_model()
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = T.EXTERNAL
    for k, v in (("location", fifo), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    path = save(m, tmp_path / "ext.onnx")
    with pytest.raises(InvalidModel, match="external data"):
        validate_model(path)


def test_external_attribute_tensor_rejected(tmp_path):
    fifo = _fifo(tmp_path)
    t = nh.from_array(np.ones(4, np.float32), "c")
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", fifo
    g = h.make_graph([h.make_node("Constant", [], ["c"], value=t), h.make_node("Add", ["x", "c"], ["y"])],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, [4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [4])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(InvalidModel, match="attribute 'value' uses external data"):
        validate_bytes(m.SerializeToString())


def test_size_limits(tmp_path):
    path = save(small_model(w_elems=1000), tmp_path / "m.onnx")
    with pytest.raises(InvalidModel, match="over the limit"):
        validate_model(path, max_bytes=100)
    with pytest.raises(InvalidModel, match="1000 elements"):
        validate_model(path, max_tensor_elems=999)
    validate_model(path, max_tensor_elems=1000)


def test_unknown_ops():
    with pytest.raises(InvalidModel, match="NoSuchOp"):
        validate_bytes(small_model("NoSuchOp").SerializeToString())
    with pytest.raises(InvalidModel, match="unsupported domain"):
        validate_bytes(small_model("Relu", "com.example", (("", 17), ("com.example", 1))).SerializeToString())
    # an operator newer than the model's opset: Gelu entered ai.onnx at opset 20
    with pytest.raises(InvalidModel, match="Gelu"):
        validate_bytes(small_model("Gelu").SerializeToString())
    validate_bytes(small_model("Gelu", opsets=(("", 20),)).SerializeToString())


def test_missing_inputs_outputs():
    m = small_model()
    del m.graph.output[:]
    with pytest.raises(InvalidModel, match="no outputs"):
        validate_bytes(m.SerializeToString())
    g = h.make_graph([h.make_node("Identity", ["w"], ["y"])], "g", [],
                     [h.make_tensor_value_info("y", T.FLOAT, [1])], [nh.from_array(np.ones(1, np.float32), "w")])
    with pytest.raises(InvalidModel, match="no inputs"):
        validate_bytes(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString())


def test_checker_errors_reported():
    m = small_model()
    m.graph.node[1].input[0] = "undefined_tensor"
    with pytest.raises(InvalidModel, match="onnx.checker"):
        validate_bytes(m.SerializeToString())


def test_unreadable_path(tmp_path):
    with pytest.raises(InvalidModel, match="cannot read"):
        validate_model(tmp_path / "absent.onnx")
