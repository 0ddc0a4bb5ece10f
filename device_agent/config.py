"""Build and measurement settings: frozen, stored with every result.

``BuildConfig`` says how a model is compiled on the device, ``MeasureConfig`` how it is timed
(the protocol of ``docs/measurement.md``, after trtexec). Both travel in the ``Measure`` header
and come back inside the result, so every number can be traced to the settings that made it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    data = dict(data or {})
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {unknown}")
    return cls(**data)


@dataclass(frozen=True)
class BuildConfig:
    """How the agent compiles a model.

    backend: ``onnxruntime`` (everywhere), ``tensorrt`` (NVIDIA, where installed), ``table``
      (look-up of published measurements, no model run).
    execution_provider: for ``onnxruntime``: ``cpu``, ``cuda`` or ``tensorrt``.
    precision: requested precision (``fp32``, ``fp16``, ``int8``); the result reports the
      precision actually obtained.
    intra_op_threads: ONNX Runtime intra-op threads (recorded; 0 = the agent's default).
    workspace_mb: TensorRT builder workspace limit.
    """

    backend: str = "onnxruntime"
    execution_provider: str = "cpu"
    precision: str = "fp32"
    intra_op_threads: int = 1
    workspace_mb: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "BuildConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class MeasureConfig:
    """How the agent times a model (docs/measurement.md, "One job, step by step", latency).

    warmup_s: warm-up by time before timing.
    min_iterations / min_duration_s: run until both are reached.
    max_duration_s: hard cap on the timed loop.
    target_precision: stop early once the median's confidence interval half-width is below this
      fraction of the median (0 = never stop early).
    cv_threshold: above this coefficient of variation the loop is run again, then the result is
      flagged ``unstable``.
    batch_size: batch dimension used for dynamic batch inputs.
    seed: seed of the random inputs (output check and timing).
    check_outputs: compare outputs with ONNX Runtime CPU before timing.
    profile_layers: take a per-layer profile in a separate pass.
    energy: measure power/energy where a sensor exists.
    end_to_end: include host<->device transfers in the timed region.
    timeout_s / memory_limit_mb: limits of the job's child process.
    """

    warmup_s: float = 0.2
    min_iterations: int = 100
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0
    target_precision: float = 0.0
    cv_threshold: float = 0.025
    batch_size: int = 1
    seed: int = 0
    check_outputs: bool = True
    profile_layers: bool = False
    energy: bool = True
    end_to_end: bool = False
    timeout_s: float = 120.0
    memory_limit_mb: int = 4096

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "MeasureConfig":
        return _from_dict(cls, data)
