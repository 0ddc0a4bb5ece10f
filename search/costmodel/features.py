"""ONNX graph -> per-layer features, and ONNX Runtime profile names -> those layers.

A *layer* here is what a runtime executes as one kernel: an anchor node (Conv, Gemm, MatMul,
a pool, ...) together with the element-wise nodes the runtime fuses into it. ONNX Runtime's CPU
provider fuses a Conv with a following BatchNormalization, activation (Relu, Clip, Sigmoid,
HardSigmoid, LeakyRelu, Tanh) and a residual Add (the NCHWc ``Conv`` with ``activation``/``Sum``), so
a Conv absorbs a chain of those nodes when each link has a single consumer. Whatever the
runtime actually fuses, the time of every profiled node that maps into a layer is summed into
that layer, so the layer's cost is learned for the fused kernel as a whole.

Features (:data:`FEATURES`, all numbers, shapes from ``onnx.shape_inference`` with the batch
axis fixed): batch, in/out channels, input and output height/width, kernel, stride, padding,
groups, MACs (multiply-accumulates of the anchor), input/output elements, parameters, and the
fused parts (BatchNormalization, activation, residual Add). Layer types (:func:`layer_type`)
split Conv into dense kxk, pointwise 1x1, depthwise and grouped convolutions, as their kernels differ.

Profile names (:func:`map_profile`): ONNX Runtime reports a node by its name in the optimised
graph. An unchanged node keeps its ONNX name; an NCHWc node is named after the output tensor of
the fused group plus ``_nchwc``; layout nodes it inserts (``ReorderInput``/``ReorderOutput``)
exist in no ONNX node and are returned as unmapped (the network stage of the model absorbs them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

#: Feature names of a layer, in the order of :meth:`Layer.vector`.
FEATURES: tuple[str, ...] = (
    "batch", "cin", "cout", "h", "w", "oh", "ow", "k", "stride", "pad", "groups",
    "macs", "in_elems", "out_elems", "params", "has_bn", "has_act", "has_add",
)
#: Element-wise ops the runtime fuses into a preceding Conv/Gemm/MatMul.
FUSIBLE_ACT = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh"})
FUSIBLE = FUSIBLE_ACT | {"BatchNormalization", "Add"}
FUSE_ANCHORS = frozenset({"Conv", "Gemm", "MatMul"})
#: Nodes that never run as kernels (folded into initializers by every runtime).
NO_KERNEL = frozenset({"Constant"})
_SUFFIX = re.compile(r"(_nchwc|_fused|_kernel_time)$")


@dataclass
class Layer:
    """One fused kernel: its anchor node, the nodes fused into it, and its features."""

    name: str
    op_type: str
    nodes: list[str]
    features: dict[str, float] = field(default_factory=dict)

    @property
    def type(self) -> str:
        """The layer type its cost model is keyed by (see :func:`layer_type`)."""
        return layer_type(self.op_type, self.features)

    def vector(self) -> list[float]:
        """The features in :data:`FEATURES` order."""
        return [float(self.features.get(k, 0.0)) for k in FEATURES]


def layer_type(op_type: str, feats: dict[str, float]) -> str:
    """``Conv`` (k > 1) / ``PWConv`` (1x1) / ``DWConv`` (groups == in channels > 1) / ``GConv``;
    other ops keep their name."""
    if op_type != "Conv":
        return op_type
    if feats.get("groups", 1) <= 1:
        return "PWConv" if feats.get("k", 1) == 1 else "Conv"
    return "DWConv" if feats["groups"] == feats["cin"] else "GConv"


class FeatureError(ValueError):
    """The ONNX graph cannot be read into layers (bad file, unknown shapes)."""


def _load(model: Any, batch: int) -> Any:
    import onnx

    try:
        proto = model if isinstance(model, onnx.ModelProto) else (
            onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model)))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise FeatureError(f"cannot read ONNX model {str(model)[:80]!r}: {exc}") from None
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never edit the caller's copy
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch  # the dynamic batch axis of search.training.exporting's graphs
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:
        raise FeatureError(f"ONNX shape inference failed: {exc}") from None


def _shapes(proto: Any) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in proto.graph.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _features(node: Any, shapes: dict[str, tuple[int, ...]], inits: set[str]) -> dict[str, float]:
    """Features of an anchor node from its input/output shapes and attributes."""
    data = [i for i in node.input if i and i not in inits]
    x = shapes.get(data[0], ()) if data else ()
    y = shapes.get(node.output[0], ()) if node.output else ()
    a = _attrs(node)

    def hw(s: tuple[int, ...]) -> tuple[int, int]:
        return (s[2], s[3]) if len(s) == 4 else (1, 1)

    f: dict[str, float] = {
        "batch": x[0] if x else 1, "cin": x[1] if len(x) >= 2 else _prod(x),
        "cout": y[1] if len(y) >= 2 else _prod(y),
        "in_elems": sum(_prod(shapes.get(i, ())) for i in data), "out_elems": _prod(y),
        "params": sum(_prod(shapes.get(i, ())) for i in node.input if i in inits),
        "groups": int(a.get("group", 1)),
    }
    f["h"], f["w"] = hw(x)
    f["oh"], f["ow"] = hw(y)
    ks = a.get("kernel_shape") or (list(shapes.get(node.input[1], ()))[2:] if node.op_type == "Conv" else [])
    f["k"] = max(ks) if ks else 1
    f["stride"] = max(a.get("strides", [1]))
    f["pad"] = max(a.get("pads", [0]))
    if node.op_type == "Conv":
        w = shapes.get(node.input[1], (0, 0, 0, 0))
        f["macs"] = f["out_elems"] * _prod(w[1:])
    elif node.op_type in ("Gemm", "MatMul"):
        w = shapes.get(node.input[1], (0, 0))
        f["macs"] = f["out_elems"] * (w[-1] if a.get("transB") else w[0])
    elif node.op_type in ("MaxPool", "AveragePool"):
        f["macs"] = f["out_elems"] * _prod(ks)
    else:
        f["macs"] = f["in_elems"]
    return {k: float(v) for k, v in f.items()}


def extract_layers(model: Any, *, batch: int = 1) -> list[Layer]:
    """The layers (fused kernels) of an ONNX model (path, bytes or ModelProto), in graph order."""
    proto = _load(model, batch)
    shapes = _shapes(proto)
    inits = {i.name for i in proto.graph.initializer}
    consumers: dict[str, int] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
    graph_out = {o.name for o in proto.graph.output}
    layers: list[Layer] = []
    tail: dict[str, Layer] = {}  # output tensor of a fusible group -> that group
    for idx, node in enumerate(proto.graph.node):
        if node.op_type in NO_KERNEL:
            continue
        name = node.name or f"{node.op_type}_{idx}"
        host = next((tail[i] for i in node.input if i in tail), None) if node.op_type in FUSIBLE else None
        if host is not None:
            flag = {"BatchNormalization": "has_bn", "Add": "has_add"}.get(node.op_type, "has_act")
            if flag == "has_add" and host.features["has_add"]:
                host = None  # a second residual Add is not fused
        if host is not None:
            host.nodes.append(name)
            host.features[flag] = 1.0
            for i in node.input:
                tail.pop(i, None)
            if node.output[0] not in graph_out and consumers.get(node.output[0], 0) == 1:
                tail[node.output[0]] = host
            continue
        layer = Layer(name=name, op_type=node.op_type, nodes=[name],
                      features=_features(node, shapes, inits))
        layer.features.update(has_bn=0.0, has_act=0.0, has_add=0.0)
        layers.append(layer)
        out = node.output[0] if node.output else ""
        if node.op_type in FUSE_ANCHORS and out not in graph_out and consumers.get(out, 0) == 1:
            tail[out] = layer
    return layers


def node_index(model: Any, layers: list[Layer]) -> dict[str, int]:
    """Node names and output-tensor names -> index of the layer holding them."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else (
        onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model)))
    by_node = {n: i for i, layer in enumerate(layers) for n in layer.nodes}
    index = dict(by_node)
    for idx, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{idx}"
        if name in by_node:
            for out in node.output:
                index.setdefault(out, by_node[name])
    return index


def map_profile(index: dict[str, int], profile: list[dict[str, Any]], *,
                key: str = "median_ms") -> tuple[dict[int, float], dict[str, float]]:
    """Sum profiled node times into layers: ({layer index: ms}, {unmapped profile name: ms}).

    ``profile`` is the agent's per-layer list (``name``, ``op_type``, ``median_ms`` ...; see
    ``device_agent.backends.onnxruntime_backend.aggregate_profile``).
    """
    mapped: dict[int, float] = {}
    unmapped: dict[str, float] = {}
    by_length = sorted(index, key=len, reverse=True)
    for entry in profile:
        name, ms = str(entry["name"]), float(entry[key])
        hit = index.get(name)
        if hit is None:
            hit = index.get(_SUFFIX.sub("", name))
        if hit is None:  # a runtime-made name that starts with an ONNX node or tensor name
            hit = next((index[n] for n in by_length if len(n) > 3 and name.startswith(n)), None)
        if hit is None:
            unmapped[name] = unmapped.get(name, 0.0) + ms
        else:
            mapped[hit] = mapped.get(hit, 0.0) + ms
    return mapped, unmapped
