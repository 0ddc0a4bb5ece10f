"""TensorRT backend (8.5 to 11), imported lazily: ``tensorrt`` and ``cuda-python`` load on use.

Build (MEASUREMENT.md section 2): ``Builder`` -> ``create_network`` (EXPLICIT_BATCH flag before
TensorRT 10; 10 ignores it; 11 networks are strongly typed) -> ``OnnxParser.parse`` (every parser
error is reported) -> ``set_memory_pool_limit(WORKSPACE)`` -> timing cache loaded from and saved
back to ``<cache>/timing/<gpu>-trt<version>.cache`` -> precision flags as the version allows
(FP16/INT8 flags before 11; TF32 cleared for fp32 so outputs match ONNX Runtime at 1e-5) ->
``build_serialized_network``. The plan is cached under ``<cache>/engines/<key>.plan`` with
key = sha256(ONNX sha256, TensorRT version, GPU model, build config, batch size).

Run: ``Runtime.deserialize_cuda_engine``; named I/O tensors (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``);
``execute_async_v3`` on a non-blocking stream, captured into a CUDA graph when possible (falls
back to plain enqueue); each ``timed_run`` is timed with CUDA events (spin wait), ``run`` waits on
a blocking-sync event (the energy pass); ``profile`` attaches an ``IProfiler`` to a separate
execution context. The cache directory is ``$HWNAS_TRT_CACHE`` or ``~/.cache/hwnas/tensorrt``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.backends.base import (
    Backend,
    BackendError,
    BuildError,
    Runner,
    TensorSpec,
    UnsupportedError,
    register_backend,
)
from device_agent.config import BuildConfig

MIN_VERSION = (8, 5, 0)  # named tensors, execute_async_v3 and memory pools (JetPack 4.6's 8.2 lacks them)


# ---------------------------------------------------------------------------- pure helpers
def parse_version(text: str) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``; raises ``ValueError`` on anything else."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def network_flag_names(version: tuple[int, int, int]) -> list[str]:
    """``NetworkDefinitionCreationFlag`` members to set: EXPLICIT_BATCH only before TensorRT 10."""
    return ["EXPLICIT_BATCH"] if version[0] < 10 else []


@dataclass(frozen=True)
class PrecisionPlan:
    """Builder flags to set / clear for a requested precision on a TensorRT version."""

    set_flags: tuple[str, ...]
    clear_flags: tuple[str, ...]
    note: str


def select_precision(requested: str, version: tuple[int, int, int], *,
                     has_qdq: bool, calibrated: bool = False) -> PrecisionPlan:
    """The builder flags for ``requested`` (fp32/fp16/int8/best) on ``version``.

    TensorRT 11 removed the FP16/INT8 flags (strong typing): precision then comes from the ONNX
    graph and the note says so. INT8 needs Q/DQ nodes or calibration images (``calibrated``:
    the entropy calibrator, TensorRT < 11); ``best`` sets FP16, and INT8 where it can.
    """
    if requested not in ("fp32", "fp16", "int8", "best"):
        raise UnsupportedError(f"unknown precision {requested!r}")
    strongly_typed = version[0] >= 11
    if calibrated and strongly_typed:
        raise UnsupportedError(f"TensorRT {version[0]} has no implicit INT8 calibration; "
                               "give a Q/DQ (explicitly quantized) ONNX model")
    if requested == "int8" and not (has_qdq or calibrated):
        raise UnsupportedError("int8 needs an explicitly quantized (Q/DQ) ONNX model or calibration "
                               "images (hwnas export --calibration N)")
    if requested == "best" and not strongly_typed:
        int8 = ("INT8",) if (has_qdq or calibrated) else ()
        return PrecisionPlan(("FP16", *int8), (), "best: FP16" + (" + INT8" if int8 else "")
                             + " flags set (TensorRT picks per layer)")
    if requested == "fp32":
        # TF32 is on by default for FP32 layers on Ampere+; it would break the 1e-5 output check.
        return PrecisionPlan((), ("TF32",), "fp32 (TF32 disabled)")
    if strongly_typed:
        return PrecisionPlan((), (), f"TensorRT {version[0]} is strongly typed: no {requested} "
                                     "builder flag; precision follows the ONNX graph")
    if requested == "fp16":
        return PrecisionPlan(("FP16",), (), "FP16 flag set (TensorRT picks per layer)")
    if requested == "best":
        return PrecisionPlan((), (), f"TensorRT {version[0]} is strongly typed: precision follows the ONNX graph")
    return PrecisionPlan(("INT8",), (), "INT8 flag set: " + ("entropy calibration on the images sent"
                                                             if calibrated else "Q/DQ (explicitly quantized) graph"))


def calibration_batches(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Contiguous float32 batches of ``batch_size`` from calibration ``images`` (a short last
    batch is dropped: the calibrator's batch size is fixed)."""
    if images.ndim < 2 or len(images) < batch_size:
        raise UnsupportedError(f"calibration needs at least {batch_size} images of shape (N, C, H, W); "
                               f"got {images.shape}")
    n = len(images) // batch_size * batch_size
    return [np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32) for i in range(0, n, batch_size)]


def _make_calibrator(trt: Any, cudart: Any, *, images: np.ndarray, batch_size: int, cache_path: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``images``; its cache is read from / written to
    ``cache_path`` so a rebuild does not calibrate again."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = calibration_batches(images, batch_size)
            self.index = 0
            self.device = _cuda(cudart, cudart.cudaMalloc(self.batches[0].nbytes), "cudaMalloc(calibration)")

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None  # calibration done
            batch = self.batches[self.index]
            self.index += 1
            _cuda(cudart, cudart.cudaMemcpy(self.device, batch.ctypes.data, batch.nbytes,
                                            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy(calibration)")
            return [int(self.device)] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.exists() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_path, bytes(cache))

        def free(self) -> None:
            cudart.cudaFree(self.device)

    return _Calibrator()


def resolve_shape(name: str, dims: tuple[int, ...] | list[int], batch_size: int) -> tuple[int, ...]:
    """Concrete shape: a dynamic (-1) leading dim becomes ``batch_size``; others are unsupported."""
    out = []
    for axis, d in enumerate(dims):
        if d >= 0:
            out.append(int(d))
        elif axis == 0:
            out.append(batch_size)
        else:
            raise UnsupportedError(f"input {name!r}: dynamic dim at axis {axis} is not supported "
                                   "(only a dynamic batch dim)")
    return tuple(out)


def engine_cache_key(*, onnx_sha256: str, trt_version: str, gpu_model: str,
                     build: dict[str, Any], batch_size: int) -> str:
    """sha256 over (ONNX sha256, TensorRT version, GPU model, build config, batch size)."""
    blob = json.dumps({"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu_model,
                       "build": build, "batch": batch_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def slug(text: str) -> str:
    """File-name-safe form of a GPU model or version."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def timing_cache_path(cache_dir: str | os.PathLike[str], gpu_model: str, trt_version: str) -> Path:
    """Where the timing cache of this GPU model and TensorRT version lives."""
    return Path(cache_dir, "timing", f"{slug(gpu_model)}-trt{slug(trt_version)}.cache")


def default_cache_dir() -> Path:
    """``$HWNAS_TRT_CACHE`` or ``~/.cache/hwnas/tensorrt``."""
    return Path(os.environ.get("HWNAS_TRT_CACHE") or Path.home() / ".cache/hwnas/tensorrt")


def onnx_has_qdq(model_bytes: bytes) -> bool:
    """True if the ONNX graph (or a subgraph) has QuantizeLinear / DequantizeLinear nodes."""
    import onnx

    model = onnx.load_from_string(model_bytes)

    def walk(graph: Any) -> bool:
        for node in graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                return True
            for attr in node.attribute:
                subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
                if any(walk(g) for g in subgraphs):
                    return True
        return False

    return walk(model.graph)


_PRECISION_TOKENS = (("int8", ("int8",)), ("fp8", ("fp8",)), ("bf16", ("bf16", "bfloat16")),
                     ("fp16", ("fp16", "half")), ("fp32", ("fp32", "float", "tf32")))


def _dtype_token(text: str) -> str | None:
    low = text.lower()
    for name, tokens in _PRECISION_TOKENS:
        if any(re.search(rf"\b{t}\b", low) for t in tokens):
            return name
    return None


def precision_from_inspector(info_json: str) -> dict[str, Any]:
    """Precision obtained, from ``IEngineInspector.get_engine_information(JSON)``.

    Reads each layer's output types: ``"Format/Datatype"`` (TensorRT 8.x-10) or ``"DataType"``
    (11). Returns ``{"precision": fp32|fp16|int8|mixed|unknown, "layer_types": {type: count}}``.
    """
    try:
        data = json.loads(info_json)
    except (TypeError, ValueError):
        return {"precision": "unknown", "layer_types": {}}
    counts: dict[str, int] = defaultdict(int)
    for layer in data.get("Layers", []) if isinstance(data, dict) else []:
        if not isinstance(layer, dict):
            continue
        kinds = set()
        for out in layer.get("Outputs", []) or []:
            if isinstance(out, dict):
                text = str(out.get("DataType") or out.get("Format/Datatype") or "")
                kind = _dtype_token(text)
                if kind:
                    kinds.add(kind)
        for kind in kinds:
            counts[kind] += 1
    compute = {k: v for k, v in counts.items()}
    if not compute:
        precision = "unknown"
    elif len(compute) == 1:
        precision = next(iter(compute))
    else:
        precision = "mixed"
    return {"precision": precision, "layer_types": dict(sorted(counts.items()))}


def format_parser_errors(errors: list[dict[str, Any]]) -> str:
    """One message listing every ONNX parser error (node, operator, description)."""
    parts = []
    for e in errors:
        where = f"node {e.get('node')}"
        if e.get("node_name"):
            where += f" {e['node_name']!r}"
        if e.get("operator"):
            where += f" ({e['operator']})"
        parts.append(f"{where}: {e.get('desc', '')}".strip())
    return f"ONNX parser: {len(errors)} error(s): " + "; ".join(parts)


def aggregate_layer_times(samples: dict[str, list[float]], order: list[str]) -> list[dict[str, Any]]:
    """Per-layer mean / median ms from IProfiler reports, in execution order."""
    return [{"name": n, "op_type": "", "mean_ms": statistics.fmean(samples[n]),
             "median_ms": statistics.median(samples[n]), "count": len(samples[n])}
            for n in order if samples[n]]


# ----------------------------------------------------------------------------- lazy imports
def _import_trt() -> Any:
    import tensorrt as trt  # noqa: PLC0415 - lazily: the package imports without TensorRT

    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _cuda(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise ``BackendError`` on failure."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            msg = cudart.cudaGetErrorString(err)[1].decode()
        except Exception:  # noqa: BLE001
            msg = str(err)
        raise BackendError(f"{what}: {msg}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def gpu_properties(cudart: Any, device: int = 0) -> dict[str, Any]:
    """Name and compute capability of CUDA device ``device``."""
    prop = _cuda(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}",
            "total_memory_bytes": int(prop.totalGlobalMem)}


def _make_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        """Keeps warnings and errors so a failed build can say why."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING) and len(self.messages) < 200:
                self.messages.append(f"[{severity.name}] {msg}")

    return _Logger()


def _make_profiler(trt: Any) -> Any:
    class _Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.samples: dict[str, list[float]] = defaultdict(list)
            self.order: list[str] = []

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if layer_name not in self.samples:
                self.order.append(layer_name)
            self.samples[layer_name].append(float(ms))

    return _Profiler()


# ------------------------------------------------------------------------------------- runner
class TensorRTRunner(Runner):
    """A deserialized engine with device buffers, a non-blocking stream and CUDA events."""

    def __init__(self, *, plan: bytes, batch_size: int, build_info: dict[str, Any]) -> None:
        super().__init__()
        self._trt, self._rt = _import_trt(), _import_cudart()
        self._plan = bytes(plan)
        self._info = dict(build_info)
        self._buffers: dict[str, int] = {}
        self._graph_exec: Any = None
        self._graph: Any = None
        self._stream: Any = None
        self._events: list[Any] = []
        self._logger = _make_logger(self._trt)
        self._runtime = self._engine = self._context = None
        self._inputs: list[TensorSpec] = []
        self._outputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        try:
            self._setup(batch_size)
        except BaseException:
            self.close_impl()  # free whatever was allocated before the failure
            raise

    def _setup(self, batch_size: int) -> None:
        trt, rt = self._trt, self._rt
        free_before = _cuda(rt, rt.cudaMemGetInfo(), "cudaMemGetInfo")[0]
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self._plan)
        if self._engine is None:
            raise BuildError("deserialize_cuda_engine failed: " + " | ".join(self._logger.messages[-5:]))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BuildError("create_execution_context failed (out of device memory?)")
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = resolve_shape(name, tuple(self._engine.get_tensor_shape(name)), batch_size)
                if not self._context.set_input_shape(name, shape):
                    raise UnsupportedError(f"set_input_shape({name!r}, {shape}) rejected")
                self._inputs.append(TensorSpec(name, shape, dtype.name))
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise UnsupportedError(f"output {name!r} has a data-dependent shape {shape}")
                self._outputs[name] = (shape, np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
        io_bytes = 0
        for spec in self._inputs:
            io_bytes += self._alloc(spec.name, int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize)
        for name, (shape, dtype) in self._outputs.items():
            io_bytes += self._alloc(name, int(np.prod(shape)) * dtype.itemsize)
        self._stream = _cuda(rt, rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking),
                             "cudaStreamCreateWithFlags")
        self._ev_start = self._event(0)
        self._ev_end = self._event(0)
        self._ev_block = self._event(rt.cudaEventBlockingSync | rt.cudaEventDisableTiming)
        free_after = _cuda(rt, rt.cudaMemGetInfo(), "cudaMemGetInfo")[0]
        activations = getattr(self._engine, "device_memory_size_v2", None)
        if activations is None:  # before TensorRT 10.1
            activations = self._engine.device_memory_size
        self._info["memory"] = {
            "activation_bytes": int(activations), "io_bytes": io_bytes,
            "plan_bytes": len(self._plan),
            "cuda_mem_delta_bytes": int(free_before - free_after),
            "method": "cudaMemGetInfo delta over deserialize + context + I/O buffers; "
                      "activation bytes from device_memory_size(_v2)"}
        self._info["cuda_graph"] = False

    # -- device helpers
    def _alloc(self, name: str, nbytes: int) -> int:
        ptr = _cuda(self._rt, self._rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({name})")
        self._buffers[name] = int(ptr)
        if not self._context.set_tensor_address(name, int(ptr)):
            raise BackendError(f"set_tensor_address({name!r}) rejected")
        return nbytes

    def _event(self, flags: int) -> Any:
        ev = _cuda(self._rt, self._rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self._events.append(ev)
        return ev

    def _enqueue(self) -> None:
        rt = self._rt
        if self._graph_exec is not None:
            _cuda(rt, rt.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")
        elif not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("execute_async_v3 failed: " + " | ".join(self._logger.messages[-3:]))

    def _capture_graph(self) -> None:
        """Capture one enqueue into a CUDA graph; on any failure keep plain enqueue."""
        rt = self._rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        try:
            _cuda(rt, rt.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        except BackendError as exc:
            self._info["cuda_graph_error"] = str(exc)
            return
        ok = self._context.execute_async_v3(int(self._stream))
        result = rt.cudaStreamEndCapture(self._stream)
        try:
            graph = _cuda(rt, result, "cudaStreamEndCapture")
            if not ok:
                raise BackendError("execute_async_v3 failed during capture")
            try:
                graph_exec = _cuda(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            except TypeError:  # CUDA 11 signature (logBuffer, bufferSize)
                graph_exec = _cuda(rt, rt.cudaGraphInstantiate(graph, b"", 0), "cudaGraphInstantiate")
            if isinstance(graph_exec, tuple):  # (graphExec, errorNode) on CUDA 11
                graph_exec = graph_exec[0]
            self._graph, self._graph_exec = graph, graph_exec
            self._info["cuda_graph"] = True
        except BackendError as exc:
            self._info["cuda_graph_error"] = str(exc)
            rt.cudaGetLastError()  # clear the sticky capture error

    # -- Runner interface
    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def precision(self) -> str:
        """From the engine inspector; ``unknown`` when it could not tell (never the request)."""
        return str(self._info.get("precision_obtained", {}).get("precision", "unknown"))

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def prepare_impl(self, inputs: dict[str, np.ndarray]) -> None:
        rt = self._rt
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, arr in inputs.items():
            arr = np.asarray(arr, order="C")  # ascontiguousarray would make a scalar 1-d
            _cuda(rt, rt.cudaMemcpy(self._buffers[name], arr.ctypes.data, arr.nbytes, kind),
                  f"cudaMemcpy({name})")
        # One plain enqueue flushes deferred setup (TensorRT's advice before graph capture).
        self._enqueue()
        _cuda(rt, rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        if self._graph_exec is None and "cuda_graph_error" not in self._info:
            self._capture_graph()

    def run_impl(self) -> None:
        rt = self._rt
        self._enqueue()
        _cuda(rt, rt.cudaEventRecord(self._ev_block, self._stream), "cudaEventRecord")
        _cuda(rt, rt.cudaEventSynchronize(self._ev_block), "cudaEventSynchronize")  # blocking

    def timed_run_impl(self) -> float | None:
        rt = self._rt
        t0 = time.perf_counter()
        _cuda(rt, rt.cudaEventRecord(self._ev_start, self._stream), "cudaEventRecord")
        self._enqueue()
        _cuda(rt, rt.cudaEventRecord(self._ev_end, self._stream), "cudaEventRecord")
        self.last_enqueue_ms = (time.perf_counter() - t0) * 1e3
        _cuda(rt, rt.cudaEventSynchronize(self._ev_end), "cudaEventSynchronize")
        return float(_cuda(rt, rt.cudaEventElapsedTime(self._ev_start, self._ev_end),
                           "cudaEventElapsedTime"))

    def outputs_impl(self) -> dict[str, np.ndarray]:
        rt = self._rt
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        out = {}
        for name, (shape, dtype) in self._outputs.items():
            host = np.empty(shape, dtype=dtype)
            _cuda(rt, rt.cudaMemcpy(host.ctypes.data, self._buffers[name], host.nbytes, kind),
                  f"cudaMemcpy({name})")
            out[name] = host
        return out

    def profile_impl(self, iterations: int) -> list[dict[str, Any]]:
        """IProfiler on a second execution context (never attached to the timed one)."""
        rt = self._rt
        ctx = self._engine.create_execution_context()
        profiler = _make_profiler(self._trt)
        ctx.profiler = profiler
        for spec in self._inputs:
            ctx.set_input_shape(spec.name, spec.shape)
        for name, ptr in self._buffers.items():
            ctx.set_tensor_address(name, ptr)
        for i in range(iterations + 1):  # the first (warm-up) report is dropped
            if i == 1:
                profiler.samples.clear()
                profiler.order.clear()
            if not ctx.execute_async_v3(int(self._stream)):
                raise BackendError("execute_async_v3 failed while profiling")
            _cuda(rt, rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        del ctx
        return aggregate_layer_times(profiler.samples, profiler.order)

    def serialize_impl(self) -> bytes | None:
        return self._plan

    def close_impl(self) -> None:
        rt = self._rt
        if self._graph_exec is not None:
            rt.cudaGraphExecDestroy(self._graph_exec)
        if self._graph is not None:
            rt.cudaGraphDestroy(self._graph)
        for ev in self._events:
            rt.cudaEventDestroy(ev)
        for ptr in self._buffers.values():
            rt.cudaFree(ptr)
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
        self._buffers, self._events = {}, []
        self._context = self._engine = self._runtime = None


# ------------------------------------------------------------------------------------ backend
@register_backend("tensorrt")
class TensorRTBackend(Backend):
    """TensorRT 8.5-11 from ONNX, with timing and engine caches per GPU model."""

    def __init__(self, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            trt = _import_trt()
        except ImportError as exc:
            return False, (f"tensorrt Python module not importable ({exc}); install TensorRT "
                           ">= 8.5 (pip install tensorrt, or JetPack on Jetson)")
        except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer)
            return False, f"tensorrt import failed: {type(exc).__name__}: {exc}"
        try:
            version = parse_version(trt.__version__)
        except ValueError as exc:
            return False, str(exc)
        if version < MIN_VERSION:
            return False, (f"TensorRT {trt.__version__} < 8.5: lacks named tensors / "
                           "execute_async_v3 / memory pools")
        try:
            rt = _import_cudart()
        except ImportError as exc:
            return False, f"cuda-python not importable ({exc}); pip install cuda-python"
        try:
            count = _cuda(rt, rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except BackendError as exc:
            return False, f"no usable CUDA device: {exc}"
        if not count:
            return False, "no CUDA device"
        return True, f"TensorRT {trt.__version__} on {gpu_properties(rt)['name']}"

    supports_calibration = True

    def build_impl(self, model_path: str, build: BuildConfig, *, workdir: str,
                   batch_size: int, calibration: str | None = None) -> TensorRTRunner:
        trt, rt = _import_trt(), _import_cudart()
        version = parse_version(trt.__version__)
        data = Path(model_path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        plan_cfg = select_precision(build.precision, version, has_qdq=onnx_has_qdq(data),
                                    calibrated=calibration is not None)
        gpu = gpu_properties(rt)
        key = engine_cache_key(onnx_sha256=sha, trt_version=trt.__version__, gpu_model=gpu["name"],
                               build=build.to_dict(), batch_size=batch_size)
        engine_path = self.cache_dir / "engines" / f"{key}.plan"
        info: dict[str, Any] = {"tensorrt": trt.__version__, "gpu": gpu, "engine_key": key,
                                "precision_requested": build.precision,
                                "precision_note": plan_cfg.note, "batch_size": batch_size}
        if engine_path.exists():
            plan = engine_path.read_bytes()
            info["engine_cache"] = "hit"
        else:
            plan, build_info = self._build_plan(trt, data, model_path, build, plan_cfg, version,
                                                gpu["name"], batch_size, calibration)
            info.update(build_info, engine_cache="miss")
            _atomic_write(engine_path, plan)
        runner = TensorRTRunner(plan=plan, batch_size=batch_size, build_info=info)
        try:
            inspector = runner._engine.create_engine_inspector()
            text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            runner._info["precision_obtained"] = precision_from_inspector(text)
        except Exception as exc:  # noqa: BLE001 - the inspector is provenance, not required
            runner._info["precision_obtained"] = {"precision": "unknown",
                                                  "error": f"{type(exc).__name__}: {exc}"}
        return runner

    def _build_plan(self, trt: Any, data: bytes, model_path: str, build: BuildConfig,
                    plan_cfg: PrecisionPlan,
                    version: tuple[int, int, int], gpu_name: str,
                    batch_size: int, calibration: str | None = None) -> tuple[bytes, dict[str, Any]]:
        logger = _make_logger(trt)
        builder = trt.Builder(logger)
        flags = 0
        for name in network_flag_names(version):
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(data, model_path):  # the path resolves external weights
            errors = []
            for i in range(parser.num_errors):
                e = parser.get_error(i)
                errors.append({"node": e.node(), "desc": e.desc(),
                               "node_name": getattr(e, "node_name", lambda: "")(),
                               "operator": getattr(e, "node_operator", lambda: "")()})
            raise BuildError(format_parser_errors(errors))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_mb << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        for flag in plan_cfg.set_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in plan_cfg.clear_flags:
            if hasattr(trt.BuilderFlag, flag):
                config.clear_flag(getattr(trt.BuilderFlag, flag))
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = tuple(tensor.shape)
            if any(d < 0 for d in dims):
                # --batch MIN,OPT,MAX: one engine for a range of batch sizes; else fixed at the job's
                lo, opt, hi = ((build.batch_min, build.batch_opt, build.batch_max) if build.batch_max
                               else (batch_size,) * 3)
                profile = profile or builder.create_optimization_profile()
                profile.set_shape(tensor.name, *(resolve_shape(tensor.name, dims, b) for b in (lo, opt, hi)))
        if profile is not None:
            config.add_optimization_profile(profile)
        calibrator = None
        if calibration is not None and "INT8" in plan_cfg.set_flags:
            from device_agent.core.calibration import read_calibration

            images = read_calibration(calibration)
            cal_path = Path(self.cache_dir, "calibration",
                            f"{slug(gpu_name)}-trt{slug(trt.__version__)}-{Path(calibration).stem[:16]}-{hashlib.sha256(data).hexdigest()[:16]}.cache")
            calibrator = _make_calibrator(trt, _import_cudart(), images=images,
                                          batch_size=max(1, build.batch_opt or batch_size), cache_path=cal_path)
            config.int8_calibrator = calibrator  # deprecated in TensorRT 10, absent in 11 (refused above)
            if profile is not None:
                config.set_calibration_profile(profile)
        tc_path = timing_cache_path(self.cache_dir, gpu_name, trt.__version__)
        cache_bytes = tc_path.read_bytes() if tc_path.exists() else b""
        timing_cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        t0 = time.perf_counter()
        try:
            plan = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.free()
        build_s = time.perf_counter() - t0
        if plan is None:
            raise BuildError("build_serialized_network failed: "
                             + (" | ".join(logger.messages[-5:]) or "no message"))
        _atomic_write(tc_path, bytes(config.get_timing_cache().serialize()))
        return bytes(plan), {"build_s": build_s, "timing_cache": str(tc_path),
                             "timing_cache_reused": bool(cache_bytes),
                             "builder_flags": list(plan_cfg.set_flags),
                             "cleared_flags": list(plan_cfg.clear_flags),
                             "network_flags": network_flag_names(version),
                             "workspace_mb": build.workspace_mb,
                             "calibration": ({"images": int(len(calibrator.batches) * calibrator.get_batch_size()),
                                              "cache": str(cal_path)} if calibrator is not None else None),
                             "build_warnings": logger.messages[-20:]}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
