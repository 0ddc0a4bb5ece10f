"""Backend and runner base classes, and the backend registry.

Polygraphy style: the public methods (``build``, ``prepare``, ``run``, ...) enforce the
lifecycle and check their arguments; subclasses implement the ``*_impl`` methods.

Lifecycle of a runner::

    runner = get_backend("onnxruntime")().build(path, build_cfg, workdir=d, batch_size=1)
    runner.prepare(inputs)       # pre-allocate / copy inputs to the device once
    runner.run()                 # one synchronous inference (outputs() then valid)
    ms = runner.timed_run()      # one iteration timed by the device (None: host clock)
    layers = runner.profile(20)  # per-node timings, separate from the timed loop
    blob = runner.serialize()    # deployable artifact (bytes) or None
    runner.close()

Backends are registered with ``@register_backend(name)`` in their own module; the registry
imports those modules lazily so that this package imports on machines without TensorRT/CUDA.
Errors raised by backends carry the ``error_kind`` of ``device_agent.core.result``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_agent.config import BuildConfig
from device_agent.plugins import PluginRegistry, PluginUnavailable, UnknownPlugin


# --------------------------------------------------------------------------------------- errors
class BackendError(Exception):
    """A failure inside a backend; ``kind`` is the result's ``error_kind``."""

    kind = "run"


class BuildError(BackendError):
    """The model could not be compiled / a session could not be created."""

    kind = "build"


class UnsupportedError(BackendError):
    """The backend cannot handle this model or request (e.g. an unsupported dynamic dim)."""

    kind = "unsupported"


class BackendUnavailable(BackendError):
    """The backend's runtime library or hardware is absent on this machine."""

    kind = "unsupported"


# ----------------------------------------------------------------------------------- tensor spec
@dataclass(frozen=True)
class TensorSpec:
    """A model input: ``name``, concrete ``shape`` (dynamic dims resolved), numpy ``dtype`` name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


# -------------------------------------------------------------------------------------- runner
class Runner(ABC):
    """A compiled model ready to run. Subclasses implement the ``*_impl`` methods.

    ``last_enqueue_ms`` may be set by ``timed_run_impl`` to the host time spent enqueuing the
    iteration (used for the ``host_bound`` flag when the device times the run).
    """

    #: Host-side enqueue time of the last ``timed_run`` in ms, if the runner measures it.
    last_enqueue_ms: float | None = None

    def __init__(self) -> None:
        self._prepared = False
        self._ran = False
        self._closed = False

    # -- description
    @property
    @abstractmethod
    def input_specs(self) -> list[TensorSpec]:
        """The model's inputs with concrete shapes."""

    @property
    @abstractmethod
    def precision(self) -> str:
        """The precision actually obtained (``fp32``, ``fp16``, ``int8``, ``mixed``)."""

    def info(self) -> dict[str, Any]:
        """Backend-specific provenance (providers, thread counts, versions...)."""
        return {}

    # -- lifecycle (public: checks, then *_impl)
    def prepare(self, inputs: dict[str, np.ndarray]) -> None:
        """Pre-allocate and copy ``inputs`` (name -> array matching ``input_specs``) once."""
        self._check_open()
        specs = {s.name: s for s in self.input_specs}
        if set(inputs) != set(specs):
            raise BackendError(f"inputs {sorted(inputs)} do not match model inputs {sorted(specs)}")
        for name, arr in inputs.items():
            spec = specs[name]
            if tuple(arr.shape) != tuple(spec.shape) or np.dtype(arr.dtype) != np.dtype(spec.dtype):
                raise BackendError(f"input {name!r}: got {arr.dtype}{list(arr.shape)}, "
                                   f"expected {spec.dtype}{list(spec.shape)}")
        self.prepare_impl(inputs)
        self._prepared = True
        self._ran = False

    def run(self) -> None:
        """One synchronous inference on the prepared inputs."""
        self._check_prepared()
        self.run_impl()
        self._ran = True

    def timed_run(self) -> float | None:
        """One synchronous inference timed by the device, in ms; ``None``: use the host clock."""
        self._check_prepared()
        ms = self.timed_run_impl()
        self._ran = True
        return ms

    def outputs(self) -> dict[str, np.ndarray]:
        """Outputs of the last run, as host numpy arrays."""
        self._check_prepared()
        if not self._ran:
            raise BackendError("outputs() before run()")
        return self.outputs_impl()

    def profile(self, iterations: int) -> list[dict[str, Any]]:
        """Per-node timings over ``iterations`` runs, taken apart from the timed loop.

        Each entry: ``name``, ``op_type``, ``mean_ms``, ``median_ms``, ``count``.
        """
        self._check_prepared()
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        return self.profile_impl(iterations)

    def serialize(self) -> bytes | None:
        """The deployable artifact (optimized ONNX, TensorRT plan) or ``None``."""
        self._check_open()
        return self.serialize_impl()

    def close(self) -> None:
        """Release the session / engine / device buffers. Idempotent."""
        if not self._closed:
            self._closed = True
            self.close_impl()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- to implement
    @abstractmethod
    def prepare_impl(self, inputs: dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def run_impl(self) -> None: ...

    def timed_run_impl(self) -> float | None:
        """Default: no device timer; run and let the loop use the host clock."""
        self.run_impl()
        return None

    @abstractmethod
    def outputs_impl(self) -> dict[str, np.ndarray]: ...

    def profile_impl(self, iterations: int) -> list[dict[str, Any]]:
        raise UnsupportedError(f"{type(self).__name__} has no per-layer profiler")

    def serialize_impl(self) -> bytes | None:
        return None

    def close_impl(self) -> None:
        return None

    # -- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("runner is closed")

    def _check_prepared(self) -> None:
        self._check_open()
        if not self._prepared:
            raise BackendError("prepare() must be called first")


# ------------------------------------------------------------------------------------- backend
class Backend(ABC):
    """Compiles an ONNX model into a :class:`Runner`."""

    #: Registry name, set by ``register_backend``.
    name: str = ""

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """``(available, reason)``: whether this backend can run here, and why (not)."""
        return True, "available"

    #: whether ``build(calibration=...)`` (INT8 calibration images) is understood
    supports_calibration: bool = False

    def build(self, model_path: str, build: BuildConfig, *, workdir: str,
              batch_size: int = 1, calibration: str | None = None) -> Runner:
        """Compile ``model_path`` with ``build``; dynamic batch dims become ``batch_size``;
        ``calibration``: the path of INT8 calibration images (``device_agent.core.calibration``)."""
        ok, reason = self.availability()
        if not ok:
            raise BackendUnavailable(f"backend {self.name!r} unavailable: {reason}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if calibration is not None and not self.supports_calibration:
            raise UnsupportedError(f"backend {self.name!r} does not calibrate INT8 (TensorRT does)")
        extra = {"calibration": calibration} if calibration is not None else {}
        runner = self.build_impl(model_path, build, workdir=workdir, batch_size=batch_size, **extra)
        problem = precision_problem(build.precision, runner.precision,
                                    runner.info().get("precision_obtained"))
        if problem is not None:  # a fallback (fp32 instead of fp16) is an error, not a label
            runner.close()
            raise BuildError(problem)
        return runner

    @abstractmethod
    def build_impl(self, model_path: str, build: BuildConfig, *, workdir: str,
                   batch_size: int) -> Runner: ...


def precision_problem(requested: str, obtained: str, detail: Any = None) -> str | None:
    """Why a build that asked for ``requested`` and got ``obtained`` is not acceptable, or None.

    ``obtained`` is fp32 / fp16 / int8 / mixed / unknown; ``detail`` may hold ``layer_types``
    (layers per output type, from TensorRT's inspector). fp16 and int8 must be seen in the
    engine (``mixed`` counts when that type has layers); fp32 accepts ``unknown`` because no
    reduced-precision flag was set; ``best`` accepts anything the inspector could read.
    """
    if requested == obtained:
        return None
    layer_types = (detail or {}).get("layer_types", {}) if isinstance(detail, dict) else {}
    if requested == "best" and obtained != "unknown":
        return None
    if requested == "fp32" and obtained == "unknown":
        return None
    if obtained == "mixed" and requested in ("fp16", "int8") and layer_types.get(requested, 0) > 0:
        return None
    if obtained == "unknown":
        return (f"requested precision {requested} could not be confirmed: the runtime does not "
                "report the precision it obtained")
    how = "; ".join(x for x in (f"layers by type: {layer_types}" if layer_types else "",
                                 str((detail or {}).get("method", "")) if isinstance(detail, dict) else "") if x)
    return f"requested precision {requested} was not obtained: the build gave {obtained}" + (f" ({how})" if how else "")


# ------------------------------------------------------------------------------------ registry
#: Every backend: built-in ones imported lazily from their modules, others by ``register_backend``.
BACKENDS: PluginRegistry[type[Backend]] = PluginRegistry("backend", base=Backend, modules={
    "onnxruntime": "device_agent.backends.onnxruntime_backend",
    "tensorrt": "device_agent.backends.tensorrt",
})
#: Class decorator: register a :class:`Backend` subclass under a name.
register_backend = BACKENDS.register


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (imports its module on first use).

    Raises :class:`UnsupportedError` for an unknown name and :class:`BackendUnavailable` when
    its runtime library cannot be imported here.
    """
    try:
        return BACKENDS.get(name)
    except UnknownPlugin as exc:
        raise UnsupportedError(str(exc)) from exc
    except PluginUnavailable as exc:
        raise BackendUnavailable(str(exc)) from exc


def list_backends() -> dict[str, tuple[bool, str]]:
    """Every known backend -> ``(available, reason)``; never raises."""
    return BACKENDS.list()
