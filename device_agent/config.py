"""Build and measurement settings: frozen, stored with every result.

``BuildConfig`` says how a model is compiled on the device, ``MeasureConfig`` how it is timed
(the protocol of ``docs/measurement.md``, after trtexec). Both travel in the ``Measure`` header
and come back inside the result, so every number can be traced to the settings that made it.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")

#: precisions a build may ask for; ``best`` lets TensorRT's builder pick per layer
PRECISIONS = ("fp32", "fp16", "int8", "best")


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
    precision: requested precision (``fp32``, ``fp16``, ``int8``, ``best``: TensorRT picks per
      layer); the result reports the precision actually obtained, and a build that did not
      obtain the requested one fails (``device_agent.backends.base.precision_problem``).
    intra_op_threads: ONNX Runtime intra-op threads (recorded; 0 = the agent's default).
    workspace_mb: TensorRT builder workspace limit.
    batch_min / batch_opt / batch_max: TensorRT optimization profile of a dynamic batch
      dimension (0 = a fixed profile at the job's batch size).
    calibration_sha256: INT8 calibration images (float32 NCHW, preprocessed as the model
      expects) that the caller uploaded like a model, in an ONNX container
      (``device_agent.core.calibration``);
      TensorRT calibrates on them (entropy calibrator), the calibration cache is kept.
    """

    backend: str = "onnxruntime"
    execution_provider: str = "cpu"
    precision: str = "fp32"
    intra_op_threads: int = 1
    workspace_mb: int = 1024
    batch_min: int = 0
    batch_opt: int = 0
    batch_max: int = 0
    calibration_sha256: str = ""

    def __post_init__(self) -> None:
        if self.calibration_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.calibration_sha256):
            raise ValueError("calibration_sha256 must be a lowercase hex sha256")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        batch = (self.batch_min, self.batch_opt, self.batch_max)
        if any(batch) and not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise ValueError(f"batch profile {batch}: expected 1 <= MIN <= OPT <= MAX")

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
