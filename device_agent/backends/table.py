"""Table backend: answers from a CSV of published measurements instead of running a model.

File format: a CSV (plain, or gzip when the name ends in ``.gz``) with a header row, one row per
architecture. ``key_column`` (default ``arch_str``) holds the architecture key the search sends
as ``arch_key``; ``metrics`` maps result metrics to columns, e.g.
``{"latency_ms": "lat_raspi4", "energy_mj": "energy_raspi4"}`` (``latency_ms`` required,
``energy_mj`` and ``peak_memory_mb`` optional). Empty or non-numeric cells mean "no value".
Each table is read once per process into a dict, so a look-up costs microseconds.
"""
from __future__ import annotations

import csv
import gzip
import math
import os
import threading
from typing import Any

from device_agent.backends.base import Backend, UnsupportedError, register_backend
from device_agent.config import BuildConfig
from device_agent.core.result import MEASURED, UNAVAILABLE, Energy, LatencyStats, MeasureResult, Metric

_SUPPORTED_METRICS = ("latency_ms", "energy_mj", "peak_memory_mb")
_CACHE: dict[tuple[str, str, tuple[str, ...]], dict[str, tuple[float | None, ...]]] = {}
_LOCK = threading.Lock()
_TABLE_BUILD = BuildConfig(backend="table").to_dict()


def _number(cell: str | None) -> float | None:
    try:
        v = float(cell) if cell not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def load_table(path: str, key_column: str, columns: tuple[str, ...]) -> dict[str, tuple[float | None, ...]]:
    """``key -> values of columns`` for the CSV at ``path`` (cached per process)."""
    cache_key = (os.path.abspath(path), key_column, columns)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", newline="") as f:  # type: ignore[operator]
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in (key_column, *columns) if c not in header]
            if missing:
                raise ValueError(f"table {path}: missing columns {missing}; has {header[:20]}")
            table = {row[key_column]: tuple(_number(row[c]) for c in columns) for row in reader}
        _CACHE[cache_key] = table
        return table


@register_backend("table")
class TableBackend(Backend):
    """Look-up of published per-architecture measurements (no model is run)."""

    runs_models = False

    def __init__(self, *, table_path: str | None = None, metrics: dict[str, str] | None = None,
                 key_column: str = "arch_str") -> None:
        self.table_path = table_path
        self.metrics = dict(metrics or {})
        self.key_column = key_column
        if table_path is not None:
            unknown = sorted(set(self.metrics) - set(_SUPPORTED_METRICS))
            if unknown or "latency_ms" not in self.metrics:
                raise ValueError(f"table metrics must include latency_ms and only "
                                 f"{_SUPPORTED_METRICS}; got {sorted(self.metrics)}")
            self._names = tuple(self.metrics)
            self._table = load_table(table_path, key_column, tuple(self.metrics[m] for m in self._names))

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, "answers from a CSV of published measurements when the agent has a table"

    def describe(self) -> dict[str, Any]:
        """What this table answers (for ``Describe``)."""
        if self.table_path is None:
            return {"configured": False}
        return {"configured": True, "table_path": self.table_path, "key_column": self.key_column,
                "metrics": dict(self.metrics), "rows": len(self._table)}

    def build_impl(self, model_path: str, build: BuildConfig, *, workdir: str, batch_size: int):
        raise UnsupportedError("the table backend runs no model; it answers lookup(arch_key)")

    def _method(self, metric: str) -> str:
        return f"table:{os.path.basename(self.table_path or '')}:{self.metrics[metric]}"

    def lookup(self, arch_key: str | None, *, job_id: str = "", device_key: str = "",
               model_sha256: str = "", build: BuildConfig | None = None) -> MeasureResult:
        """The table's row for ``arch_key`` as a :class:`MeasureResult` (unknown -> ``unsupported``)."""
        base = dict(job_id=job_id, device_key=device_key, backend="table", model_sha256=model_sha256,
                    build_config=build.to_dict() if build is not None else dict(_TABLE_BUILD))
        if self.table_path is None:
            return MeasureResult.failure(**base, error="no table configured on this agent",
                                         error_kind="unsupported")
        row = self._table.get(arch_key or "")
        if row is None:
            return MeasureResult.failure(**base, error=f"arch_key {arch_key!r} not in table "
                                         f"{os.path.basename(self.table_path)}", error_kind="unsupported")
        values = dict(zip(self._names, row))
        lat = values["latency_ms"]
        if lat is None:
            return MeasureResult.failure(**base, error=f"no latency_ms value for {arch_key!r} in "
                                         f"column {self.metrics['latency_ms']}", error_kind="unsupported")
        stats = LatencyStats(median=lat, mean=lat, min=lat, max=lat, p90=lat, p95=lat, p99=lat,
                             std=0.0, cv=0.0, count=1, ci_low=lat, ci_high=lat,
                             method=self._method("latency_ms"))
        if "energy_mj" in values and values["energy_mj"] is not None:
            energy = Energy(status=MEASURED, value_mj=values["energy_mj"],
                            method=f"{self._method('energy_mj')} (published measurement)")
        else:
            energy = Energy(status=UNAVAILABLE, method="the table has no energy value for this arch")
        mem = None
        if values.get("peak_memory_mb") is not None:
            mem = Metric(values["peak_memory_mb"], MEASURED,
                         f"{self._method('peak_memory_mb')} (published measurement)", "MB")
        return MeasureResult(**base, latency_ms=stats, energy=energy, peak_memory_mb=mem,
                             provenance={"source": "table", "table_path": self.table_path,
                                         "key_column": self.key_column, "metrics": dict(self.metrics)})
