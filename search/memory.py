"""Memory limits like MCUNet's, computed from an ONNX graph (no torch needed).

- :func:`peak_activation_kb`: the largest total size of tensors alive at once while the graph's
  nodes run one after another in the graph's own order (ONNX requires node lists to be
  topologically sorted; this is checked). A tensor counts from the step that produces it (graph
  inputs from the start) through the last step that reads it (graph outputs to the end), so at
  every step a node's inputs and outputs are alive together with every tensor kept for later
  (e.g. a residual skip). Counted: graph inputs and intermediate activations. Not counted:
  initializers and ``Constant`` node outputs (weights, shape tensors), which live in flash/
  weight memory (:func:`weights_kb`). No in-place reuse or operator fusion is assumed, so the
  figure is an upper bound for a runtime that does fuse (e.g. conv+relu).
- :func:`weights_kb`: the floating-point parameters (float initializers and ``Constant`` float
  tensors) at the deployed precision's bytes per parameter (fp32 4, fp16 2, int8 1); integer
  initializers (Reshape shapes and the like) are not parameters and are left out.

Shapes come from :func:`onnx.shape_inference.infer_shapes` (strict mode off) after every
symbolic or unknown dimension of the graph inputs is set to ``batch`` (default 1: one image, as
on a microcontroller); a tensor whose shape inference cannot resolve raises
:class:`MemoryEstimateError`. Sizes of activations use the tensor's own element type.
Both figures are ``computed`` (not measured); 1 kB here is 1,024 bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

ModelLike = Union[str, Path, bytes, Any]  # a path, serialized bytes or an onnx.ModelProto

#: bytes per parameter at each deployed precision
PRECISION_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}


class MemoryEstimateError(ValueError):
    """The graph cannot be sized (unknown shape, unsorted nodes, unknown precision)."""


def _load(model: ModelLike) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)  # shape inference and batch fixing must not change the caller's model
        return out
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise MemoryEstimateError(f"no ONNX file at {model}")
        return onnx.load(str(model))
    raise MemoryEstimateError(f"expected an ONNX path, bytes or ModelProto, got {type(model).__name__}")


def _constant_outputs(graph: Any) -> set[str]:
    return {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _element_bytes(elem_type: int) -> int:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:  # noqa: BLE001 - undefined/string types have no fixed size
        raise MemoryEstimateError(f"tensor element type {elem_type} has no fixed size") from None


def tensor_sizes(model: ModelLike, *, batch: int = 1) -> dict[str, int]:
    """Bytes of every graph input and activation (not initializers) with symbolic dims = batch."""
    import onnx

    if int(batch) < 1:
        raise MemoryEstimateError(f"batch must be >= 1, got {batch}")
    proto = _load(model)
    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    for vi in graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = int(batch)
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    infos = {vi.name: vi for vi in (*inferred.input, *inferred.value_info, *inferred.output)}
    skip = inits | _constant_outputs(graph)
    names = [vi.name for vi in graph.input if vi.name not in skip]
    names += [o for n in graph.node for o in n.output if o and o not in skip]
    sizes: dict[str, int] = {}
    for name in names:
        vi = infos.get(name)
        tt = vi.type.tensor_type if vi is not None else None
        if tt is None or not tt.HasField("shape") or any(not d.HasField("dim_value") for d in tt.shape.dim):
            raise MemoryEstimateError(f"shape of tensor {name!r} is unknown after onnx shape inference")
        count = 1
        for d in tt.shape.dim:
            count *= int(d.dim_value)
        sizes[name] = count * _element_bytes(tt.elem_type)
    return sizes


def peak_activation_bytes(model: ModelLike, *, batch: int = 1) -> int:
    """Largest total bytes of tensors alive at one step of the graph's schedule (module docstring)."""
    proto = _load(model)
    graph = proto.graph
    sizes = tensor_sizes(proto, batch=batch)
    n = len(graph.node)
    born = {vi.name: 0 for vi in graph.input if vi.name in sizes}
    last: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in sizes:
                if name not in born:
                    raise MemoryEstimateError(f"node {i} ({node.op_type}) reads {name!r} before it is produced: "
                                              "nodes are not topologically sorted")
                last[name] = i
        for name in node.output:
            if name in sizes:
                born[name] = i
    for vi in graph.output:
        last[vi.name] = n - 1
    peak = sum(sizes.values()) if n == 0 else 0  # a graph with no nodes holds its inputs
    for i in range(n):
        live = sum(sizes[t] for t, b in born.items() if b <= i <= last.get(t, b))
        peak = max(peak, live)
    return peak


def peak_activation_kb(model: ModelLike, *, batch: int = 1) -> float:
    """:func:`peak_activation_bytes` in kB (1,024 bytes); ``computed`` at ``batch`` (default 1)."""
    return peak_activation_bytes(model, batch=batch) / 1024.0


def parameter_count(model: ModelLike) -> int:
    """Floating-point parameters: float initializers and float ``Constant`` tensors."""
    import onnx

    proto = _load(model)
    graph = proto.graph
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
              onnx.TensorProto.BFLOAT16}
    total = 0
    for t in tensors:
        if t.data_type in floats:
            count = 1
            for d in t.dims:
                count *= int(d)
            total += count
    return total


def weights_kb(model: ModelLike, *, precision: str = "fp32") -> float:
    """Parameters x bytes per parameter at ``precision`` (fp32, fp16, int8), in kB; ``computed``."""
    if precision not in PRECISION_BYTES:
        raise MemoryEstimateError(f"unknown precision {precision!r}; known: {', '.join(PRECISION_BYTES)}")
    return parameter_count(model) * PRECISION_BYTES[precision] / 1024.0
