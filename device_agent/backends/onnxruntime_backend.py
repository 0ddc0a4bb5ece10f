"""ONNX Runtime backend: CPU everywhere, CUDA / TensorRT execution providers where installed.

Session settings (the build step of docs/measurement.md, "One job, step by step"): ``ORT_ENABLE_ALL`` graph optimizations,
``ORT_SEQUENTIAL`` execution, ``intra_op_num_threads`` set explicitly from the build config and
recorded, ``inter_op_num_threads=1``; the CUDA EP uses ``arena_extend_strategy=kSameAsRequested``
so peak memory reflects the model. Inputs are bound once through IOBinding.

Precision: ``fp16`` on the CPU or CUDA provider converts the graph with ONNX Runtime's own
float16 converter (``onnxruntime.transformers.float16``, inputs and outputs kept float32). The
precision obtained is read from the weights of the graph that runs: on the CPU provider the
graph as ORT optimized it, because the CPU provider casts fp16 nodes it has no kernel for back
to fp32 (on x86 it has none, so an fp16 request fails there: fp32 compute is not fp16); ``fp16`` on the TensorRT provider sets
``trt_fp16_enable`` but ORT cannot say what TensorRT picked, so the precision is ``unknown`` and
the build fails (use the ``tensorrt`` backend, whose inspector can tell). ``int8`` needs a Q/DQ
model; ``best`` is a TensorRT builder mode. A session whose providers do not start with the
requested one (ORT silently drops a CUDA/TensorRT provider it cannot load) fails the build.
"""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from typing import Any

import numpy as np
import onnxruntime as ort

from device_agent.backends.base import (
    Backend,
    BuildError,
    Runner,
    TensorSpec,
    UnsupportedError,
    register_backend,
)
from device_agent.config import BuildConfig

#: ONNX Runtime type strings -> numpy dtype names.
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}

_EP_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def default_threads() -> int:
    """The agent's default intra-op thread count: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def session_options(build: BuildConfig, *, optimized_path: str | None = None,
                    profile_prefix: str | None = None) -> ort.SessionOptions:
    """The session options (see the module docstring) for ``build``."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = build.intra_op_threads if build.intra_op_threads > 0 else default_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def providers_for(build: BuildConfig, *, workdir: str) -> list[Any]:
    """The provider list for ``build.execution_provider``; raises if ORT lacks it here."""
    ep = build.execution_provider
    if ep not in _EP_NAMES:
        raise UnsupportedError(f"unknown execution provider {ep!r}; known: {sorted(_EP_NAMES)}")
    have = ort.get_available_providers()
    if _EP_NAMES[ep] not in have:
        raise UnsupportedError(f"{_EP_NAMES[ep]} is not available in this onnxruntime build "
                               f"(available: {', '.join(have)})")
    cuda = ("CUDAExecutionProvider", {"device_id": 0, "arena_extend_strategy": "kSameAsRequested"})
    if ep == "cpu":
        return ["CPUExecutionProvider"]
    if ep == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt_opts = {"device_id": 0, "trt_fp16_enable": build.precision == "fp16",
                "trt_max_workspace_size": build.workspace_mb * 1024 * 1024,
                "trt_engine_cache_enable": True, "trt_engine_cache_path": workdir}
    return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]


def provider_fallback(execution_provider: str, session_providers: list[str]) -> str | None:
    """Why a session is not running on the requested provider, or None.

    ``InferenceSession`` drops a CUDA or TensorRT provider it cannot initialise (missing CUDA or
    cuDNN libraries, no device) with only a log warning and runs on the CPU; that would time the
    CPU under the GPU's name, so it is an error (``session.get_providers()`` tells).
    """
    want = _EP_NAMES.get(execution_provider, execution_provider)
    if session_providers and session_providers[0] == want:
        return None
    return (f"{want} was requested but the session runs on {', '.join(session_providers) or 'nothing'}: "
            "ONNX Runtime fell back (CUDA/cuDNN/TensorRT libraries missing or no device?)")


def graph_precision(model: Any) -> dict[str, Any]:
    """Precision of an ONNX graph from its floating-point initializers (weights):
    ``{"precision": fp32|fp16|int8|mixed|unknown, "layer_types": {type: count}}``."""
    import onnx

    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
             onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "fp64"}
    counts: dict[str, int] = defaultdict(int)
    for init in model.graph.initializer:
        if init.data_type in names and len(init.dims) > 1:  # weights, not scalars or shapes
            counts[names[init.data_type]] += 1
    if any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in model.graph.node):
        counts["int8"] += 1
    kinds = sorted(counts)
    precision = "unknown" if not kinds else kinds[0] if len(kinds) == 1 else "mixed"
    return {"precision": precision, "layer_types": dict(sorted(counts.items())),
            "method": "weight initializer dtypes"}


def convert_to_fp16(model_path: str, out_path: str) -> str:
    """The model with float16 weights and compute, float32 inputs/outputs kept (ORT's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(model_path)
    try:
        onnx.save(convert_float_to_float16(model, keep_io_types=True), out_path)
    except Exception as exc:  # noqa: BLE001 - the converter raises several types
        raise BuildError(f"fp16 conversion failed: {type(exc).__name__}: {exc}") from None
    return out_path


def resolve_inputs(sess: ort.InferenceSession, batch_size: int) -> list[TensorSpec]:
    """Concrete input specs: a dynamic leading dim becomes ``batch_size``; others are errors."""
    specs = []
    for inp in sess.get_inputs():
        if inp.type not in ORT_DTYPES:
            raise UnsupportedError(f"input {inp.name!r}: unsupported type {inp.type}")
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(batch_size)
            else:
                raise UnsupportedError(f"unsupported dynamic dim {d!r} at axis {i} of input {inp.name!r}")
        specs.append(TensorSpec(inp.name, tuple(shape), ORT_DTYPES[inp.type]))
    return specs


class OrtRunner(Runner):
    """An ONNX Runtime session with inputs bound once through IOBinding."""

    def __init__(self, *, model_path: str, build: BuildConfig, workdir: str, batch_size: int,
                 providers: list[Any]) -> None:
        super().__init__()
        self._model_path, self._build, self._workdir = model_path, build, workdir
        self._providers = providers
        # The CPU provider runs fp16 nodes it has no kernels for by casting them to fp32 (x86
        # MLAS has none): the precision obtained is read from the graph ORT actually runs.
        self._optimized = os.path.join(workdir, "optimized.onnx") if build.execution_provider == "cpu" else None
        self._so = session_options(build, optimized_path=self._optimized)
        self._nvml_before: int | None = None
        if build.execution_provider in ("cuda", "tensorrt"):  # accelerator memory: NVML delta
            from device_agent.sensors.nvml import gpu_used_bytes

            self._nvml_before = gpu_used_bytes()
        try:
            self._sess = ort.InferenceSession(model_path, sess_options=self._so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several exception types
            raise BuildError(f"onnxruntime session creation failed: {exc}") from None
        fallback = provider_fallback(build.execution_provider, self._sess.get_providers())
        if fallback is not None:
            raise BuildError(fallback)
        if build.execution_provider == "tensorrt":
            self._precision = {"precision": "unknown", "layer_types": {},
                               "method": "the TensorRT provider does not report what it picked"}
        else:
            import onnx

            self._precision = graph_precision(onnx.load(self._optimized or model_path, load_external_data=False))
            self._precision["method"] += (" of the graph as ORT optimized it for the CPU provider" if self._optimized
                                          else " (the CUDA provider runs the graph's types)")
        self._specs = resolve_inputs(self._sess, batch_size)
        self._device = "cuda" if build.execution_provider in ("cuda", "tensorrt") else "cpu"
        self._binding: ort.IOBinding | None = None
        self._keep: list[Any] = []
        self._out_names = [o.name for o in self._sess.get_outputs()]

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._specs)

    @property
    def precision(self) -> str:
        return str(self._precision["precision"])

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._nvml_before is not None:
            from device_agent.sensors.nvml import gpu_used_bytes

            now = gpu_used_bytes()
            if now is not None:
                out["memory"] = {"nvml_used_delta_bytes": now - self._nvml_before,
                                 "method": "NVML device-wide used memory, after the session ran minus "
                                           "before it was created (other processes included)"}
        return {**out, "onnxruntime": ort.__version__, "providers": self._sess.get_providers(),
                "precision_obtained": dict(self._precision),
                "intra_op_num_threads": self._so.intra_op_num_threads,
                "inter_op_num_threads": self._so.inter_op_num_threads,
                "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
                "io_binding": True}

    def prepare_impl(self, inputs: dict[str, np.ndarray]) -> None:
        binding = self._sess.io_binding()
        self._keep = []
        for name, arr in inputs.items():
            arr = np.asarray(arr, order="C")  # ascontiguousarray would make a scalar 1-d
            if self._device == "cpu":
                binding.bind_cpu_input(name, arr)
                self._keep.append(arr)  # the binding points at this memory
            else:
                val = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
                binding.bind_ortvalue_input(name, val)
                self._keep.append(val)
        for name in self._out_names:
            binding.bind_output(name, self._device)
        self._binding = binding

    def run_impl(self) -> None:
        self._sess.run_with_iobinding(self._binding)

    def outputs_impl(self) -> dict[str, np.ndarray]:
        assert self._binding is not None
        return dict(zip(self._out_names, self._binding.copy_outputs_to_cpu()))

    def profile_impl(self, iterations: int) -> list[dict[str, Any]]:
        """ORT's profiler in a separate session; the first (warm-up) run is discarded."""
        prefix = os.path.join(self._workdir, "ort_profile")
        so = session_options(self._build, profile_prefix=prefix)
        sess = ort.InferenceSession(self._model_path, sess_options=so, providers=self._providers)
        feeds = {}
        for name, arr in zip([s.name for s in self._specs], self._keep):
            feeds[name] = arr if isinstance(arr, np.ndarray) else arr.numpy()
        for _ in range(iterations + 1):
            sess.run(None, feeds)
        trace = sess.end_profiling()
        try:
            with open(trace) as f:
                events = json.load(f)
        finally:
            os.unlink(trace)
        return aggregate_profile(events, iterations)

    def serialize_impl(self) -> bytes | None:
        """The graph as optimized by ORT_ENABLE_ALL for this machine (a second session writes it)."""
        path = self._optimized or os.path.join(self._workdir, "optimized.onnx")
        if self._optimized is None:
            so = session_options(self._build, optimized_path=path)
            ort.InferenceSession(self._model_path, sess_options=so, providers=self._providers)
        with open(path, "rb") as f:
            return f.read()

    def close_impl(self) -> None:
        self._binding = None
        self._keep = []
        del self._sess


def aggregate_profile(events: list[dict[str, Any]], iterations: int) -> list[dict[str, Any]]:
    """Per-node mean/median ms from an ORT profiler trace (``*_kernel_time`` node events), with
    the node's ``input_type_shape``/``output_type_shape`` as ORT reports them (the shapes the
    cost model's features are checked against; issue 12)."""
    times: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    providers: dict[str, str] = {}
    shapes: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        if name not in times:
            order.append(name)
        times[name].append(float(ev.get("dur", 0)) / 1000.0)
        args = ev.get("args", {})
        ops[name] = args.get("op_name", "")
        providers[name] = args.get("provider", "")
        shapes.setdefault(name, {k: args[k] for k in ("input_type_shape", "output_type_shape") if k in args})
    out = []
    for name in order:
        t = times[name][-iterations:] if len(times[name]) > iterations else times[name]
        out.append({"name": name, "op_type": ops[name], "provider": providers[name],
                    "mean_ms": statistics.fmean(t), "median_ms": statistics.median(t),
                    "count": len(t), **shapes[name]})
    return out


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with the CPU, CUDA or TensorRT execution provider."""

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, f"onnxruntime {ort.__version__}; providers: {', '.join(ort.get_available_providers())}"

    def build_impl(self, model_path: str, build: BuildConfig, *, workdir: str,
                   batch_size: int) -> OrtRunner:
        if build.precision not in ("fp32", "fp16", "int8", "best"):
            raise UnsupportedError(f"unknown precision {build.precision!r}")
        if build.precision == "best":
            raise UnsupportedError("precision 'best' is a TensorRT builder mode; ask onnxruntime for fp32 or fp16")
        if build.precision == "int8":
            raise UnsupportedError("int8 needs a quantized (QDQ) model; requested int8 on onnxruntime")
        providers = providers_for(build, workdir=workdir)
        if build.precision == "fp16" and build.execution_provider != "tensorrt":
            model_path = convert_to_fp16(model_path, os.path.join(workdir, "model-fp16.onnx"))
        return OrtRunner(model_path=model_path, build=build, workdir=workdir,
                         batch_size=batch_size, providers=providers)
