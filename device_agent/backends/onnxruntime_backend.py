"""ONNX Runtime backend: CPU everywhere, CUDA / TensorRT execution providers where installed.

Session settings (the build step of docs/measurement.md, "One job, step by step"): ``ORT_ENABLE_ALL`` graph optimizations,
``ORT_SEQUENTIAL`` execution, ``intra_op_num_threads`` set explicitly from the build config and
recorded, ``inter_op_num_threads=1``; the CUDA EP uses ``arena_extend_strategy=kSameAsRequested``
so peak memory reflects the model. Inputs are bound once through IOBinding.
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
        self._so = session_options(build)
        try:
            self._sess = ort.InferenceSession(model_path, sess_options=self._so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several exception types
            raise BuildError(f"onnxruntime session creation failed: {exc}") from None
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
        if self._build.execution_provider == "tensorrt" and self._build.precision == "fp16":
            return "fp16"
        types = {o.type for o in self._sess.get_outputs()} | {i.type for i in self._sess.get_inputs()}
        return "fp16" if "tensor(float16)" in types else "fp32"

    def info(self) -> dict[str, Any]:
        return {"onnxruntime": ort.__version__, "providers": self._sess.get_providers(),
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
        path = os.path.join(self._workdir, "optimized.onnx")
        so = session_options(self._build, optimized_path=path)
        ort.InferenceSession(self._model_path, sess_options=so, providers=self._providers)
        with open(path, "rb") as f:
            return f.read()

    def close_impl(self) -> None:
        self._binding = None
        self._keep = []
        del self._sess


def aggregate_profile(events: list[dict[str, Any]], iterations: int) -> list[dict[str, Any]]:
    """Per-node mean/median ms from an ORT profiler trace (``*_kernel_time`` node events)."""
    times: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    providers: dict[str, str] = {}
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
    out = []
    for name in order:
        t = times[name][-iterations:] if len(times[name]) > iterations else times[name]
        out.append({"name": name, "op_type": ops[name], "provider": providers[name],
                    "mean_ms": statistics.fmean(t), "median_ms": statistics.median(t),
                    "count": len(t)})
    return out


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with the CPU, CUDA or TensorRT execution provider."""

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, f"onnxruntime {ort.__version__}; providers: {', '.join(ort.get_available_providers())}"

    def build_impl(self, model_path: str, build: BuildConfig, *, workdir: str,
                   batch_size: int) -> OrtRunner:
        if build.precision not in ("fp32", "fp16", "int8"):
            raise UnsupportedError(f"unknown precision {build.precision!r}")
        if build.precision == "int8":
            raise UnsupportedError("int8 needs a quantized (QDQ) model; requested int8 on onnxruntime")
        providers = providers_for(build, workdir=workdir)
        return OrtRunner(model_path=model_path, build=build, workdir=workdir,
                         batch_size=batch_size, providers=providers)
