"""The result of one measurement job, as the agent returns it and the search stores it.

A failed job is a value, not an exception: ``error`` holds the reason and ``error_kind`` one of
``invalid_model``, ``build``, ``run``, ``output_mismatch``, ``timeout``, ``oom``, ``crash``,
``cancelled``, ``unsupported``. Every metric says how it was obtained: ``status`` is
``measured`` (a timer or sensor on this device), ``published`` (a table's column from a
benchmark), ``simulated`` (a table's column from a simulator), ``computed`` (derived, e.g. an
engine's device memory size), ``estimated`` or ``unavailable``; ``method`` names the sensor,
procedure or table column. ``peak_memory_mb`` is the job's host RSS (``host_peak_mb`` in the
search's catalogue), ``device_peak_mb`` the accelerator's memory (absent on a CPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MEASURED, ESTIMATED, UNAVAILABLE = "measured", "estimated", "unavailable"
PUBLISHED, SIMULATED, COMPUTED = "published", "simulated", "computed"
#: every value a ``status`` may take
STATUSES = (MEASURED, PUBLISHED, SIMULATED, COMPUTED, ESTIMATED, UNAVAILABLE)


@dataclass
class LatencyStats:
    """Latency statistics of the timed loop, in milliseconds."""

    median: float
    mean: float
    min: float
    max: float
    p90: float
    p95: float
    p99: float
    std: float
    cv: float
    count: int
    ci_low: float
    ci_high: float
    ci_level: float = 0.95
    method: str = ""
    status: str = MEASURED  # published / simulated for a table's column

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Metric:
    """A scalar with its provenance (``value`` is ``None`` when unavailable)."""

    value: float | None
    status: str
    method: str
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Energy:
    """Energy per inference with its provenance. Never invented: no sensor -> unavailable."""

    status: str
    method: str
    value_mj: float | None = None  # gross energy per inference
    net_value_mj: float | None = None  # minus idle power x time
    avg_power_w: float | None = None
    idle_power_w: float | None = None
    window_s: float | None = None
    iterations: int | None = None
    rails: dict[str, float] = field(default_factory=dict)  # mean power per rail, W

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MeasureResult:
    """One job's outcome on one device."""

    job_id: str
    device_key: str
    backend: str
    model_sha256: str
    error: str | None = None
    error_kind: str | None = None
    latency_ms: LatencyStats | None = None
    peak_memory_mb: Metric | None = None  # host RSS of the job
    device_peak_mb: Metric | None = None  # accelerator memory
    energy: Energy | None = None
    flags: list[str] = field(default_factory=list)
    output_check: dict[str, Any] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    build_config: dict[str, Any] = field(default_factory=dict)
    measure_config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MeasureResult":
        d = dict(d)
        if d.get("latency_ms") is not None:
            d["latency_ms"] = LatencyStats(**d["latency_ms"])
        for name in ("peak_memory_mb", "device_peak_mb"):
            if d.get(name) is not None:
                d[name] = Metric(**d[name])
        if d.get("energy") is not None:
            d["energy"] = Energy(**d["energy"])
        return cls(**d)

    @classmethod
    def failure(cls, *, job_id: str, device_key: str, backend: str, model_sha256: str,
                error: str, error_kind: str, **extra: Any) -> "MeasureResult":
        """A failed job as a value."""
        return cls(job_id=job_id, device_key=device_key, backend=backend,
                   model_sha256=model_sha256, error=error, error_kind=error_kind, **extra)
