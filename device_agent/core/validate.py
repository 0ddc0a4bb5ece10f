"""Checks on an untrusted ONNX model before any runtime sees it.

``validate_model`` rejects, with a message saying why: files over ``max_bytes``, bytes that do
not parse as an ONNX ``ModelProto``, any tensor stored as external data (never read: a model
from the network must not make the agent open local files), tensors over ``max_tensor_elems``
elements, a graph without inputs or outputs, operators that no opset in the model defines, and
whatever ``onnx.checker.check_model(full_check=False)`` finds.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, TensorProto

#: Operator domains ONNX Runtime implements outside onnx's own schema registry.
ORT_DOMAINS = frozenset({"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"})
#: Domains whose schemas onnx's registry knows.
ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_TENSOR_ELEMS = 256 * 1024 * 1024


class InvalidModel(ValueError):
    """The model was rejected; the message says why."""


def _graph_tensors(graph: GraphProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    for t in graph.initializer:
        yield f"{where}initializer {t.name!r}", t
    for st in graph.sparse_initializer:
        yield f"{where}sparse initializer {st.values.name!r}", st.values
        yield f"{where}sparse initializer indices {st.indices.name!r}", st.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: onnx.NodeProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    here = f"{where}node {node.name or node.op_type!r} "
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            yield f"{here}attribute {attr.name!r}", attr.t
        elif attr.type == AttributeProto.TENSORS:
            for t in attr.tensors:
                yield f"{here}attribute {attr.name!r}", t
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            yield f"{here}attribute {attr.name!r}", attr.sparse_tensor.values
        elif attr.type == AttributeProto.GRAPH:
            yield from _graph_tensors(attr.g, f"{here}subgraph ")
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield from _graph_tensors(g, f"{here}subgraph ")


def _all_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    yield from _graph_tensors(model.graph, "")
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node, f"function {fn.name!r} ")


def _all_nodes(graph: GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _check_ops(model: onnx.ModelProto) -> None:
    opsets = {(imp.domain or ""): imp.version for imp in model.opset_import}
    if "ai.onnx" in opsets:
        opsets.setdefault("", opsets["ai.onnx"])
    local = {(f.domain, f.name) for f in model.functions}
    unknown: set[str] = set()
    nodes = list(_all_nodes(model.graph))
    for fn in model.functions:
        nodes.extend(fn.node)
    for node in nodes:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (node.domain, node.op_type) in local:
            continue
        if domain not in opsets:
            unknown.add(f"{node.op_type} (domain {domain or 'ai.onnx'!r} not in opset_import)")
        elif domain in ONNX_DOMAINS:
            if not onnx.defs.has(node.op_type, max_inclusive_version=opsets[domain], domain=domain):
                unknown.add(f"{node.op_type} (not in {domain or 'ai.onnx'} opset {opsets[domain]})")
        elif domain not in ORT_DOMAINS:
            unknown.add(f"{node.op_type} (unsupported domain {domain!r})")
    if unknown:
        raise InvalidModel("unknown operators: " + ", ".join(sorted(unknown)[:10]))


def validate_bytes(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_tensor_elems: int = DEFAULT_MAX_TENSOR_ELEMS) -> onnx.ModelProto:
    """Validate serialized ONNX ``data``; return the parsed model or raise :class:`InvalidModel`."""
    if len(data) > max_bytes:
        raise InvalidModel(f"model is {len(data)} bytes, over the limit of {max_bytes}")
    if not data:
        raise InvalidModel("model is empty")
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModel(f"malformed ONNX protobuf: {exc}") from None
    if not model.HasField("graph"):
        raise InvalidModel("malformed ONNX model: no graph")
    for where, t in _all_tensors(model):
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data) > 0:
            raise InvalidModel(f"{where} uses external data; only self-contained models are accepted")
        elems = math.prod(t.dims) if t.dims else 1
        if elems > max_tensor_elems:
            raise InvalidModel(f"{where} has {elems} elements, over the limit of {max_tensor_elems}")
    init_names = {t.name for t in model.graph.initializer}
    if not [i for i in model.graph.input if i.name not in init_names]:
        raise InvalidModel("graph has no inputs")
    if not model.graph.output:
        raise InvalidModel("graph has no outputs")
    _check_ops(model)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise InvalidModel(f"onnx.checker: {str(exc).splitlines()[0]}") from None
    return model


def validate_model(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_tensor_elems: int = DEFAULT_MAX_TENSOR_ELEMS) -> onnx.ModelProto:
    """Validate the ONNX file at ``path``; return the parsed model or raise :class:`InvalidModel`."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise InvalidModel(f"cannot read model: {exc}") from None
    if size > max_bytes:
        raise InvalidModel(f"model is {size} bytes, over the limit of {max_bytes}")
    with open(path, "rb") as f:
        data = f.read()
    return validate_bytes(data, max_bytes=max_bytes, max_tensor_elems=max_tensor_elems)
