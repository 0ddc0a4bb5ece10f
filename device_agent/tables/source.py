"""A table source: answers measurement requests from a CSV of published measurements by the
request's ``arch_key`` instead of running a model.

``metrics`` maps result metrics to columns, e.g. ``{"latency_ms": "lat_raspi4", "energy_mj":
"energy_raspi4"}`` (``latency_ms`` required, ``energy_mj`` and ``peak_memory_mb`` optional); the
file is read by :func:`device_agent.tables.load.load_table`, so a look-up costs microseconds.

A table's numbers were not measured by this agent: each column is ``published`` (a benchmark's
measurement on a real device, the default) or ``simulated`` (a simulator's output), written
``COLUMN:simulated`` (``--metric latency_ms=lat_eyeriss:simulated``); the kind travels as the
value's ``status`` and the source (table file and column) as its ``method``. Never ``measured``.
"""
from __future__ import annotations

import os
from typing import Any

from device_agent.config import BuildConfig
from device_agent.core.result import (
    PUBLISHED, SIMULATED, UNAVAILABLE, Energy, LatencyStats, MeasureResult, Metric)
from device_agent.tables.load import load_table

#: The name a build config or ``--backend`` uses to ask for a table look-up.
TABLE = "table"
_SUPPORTED_METRICS = ("latency_ms", "energy_mj", "peak_memory_mb")
_TABLE_BUILD = BuildConfig(backend=TABLE).to_dict()
#: what a table's column may be
COLUMN_KINDS = (PUBLISHED, SIMULATED)


def parse_column(spec: str) -> tuple[str, str]:
    """``"lat_fpga:simulated"`` -> ``("lat_fpga", "simulated")``; no suffix means ``published``."""
    column, sep, kind = spec.rpartition(":")
    if not sep or kind not in COLUMN_KINDS:
        return spec, PUBLISHED
    if not column:
        raise ValueError(f"empty column name in {spec!r}")
    return column, kind


class TableSource:
    """Look-up of published per-architecture measurements (no model is run)."""

    def __init__(self, *, table_path: str | None = None, metrics: dict[str, str] | None = None,
                 key_column: str = "arch_str") -> None:
        self.table_path = table_path
        self.metrics: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        for name, spec in (metrics or {}).items():
            self.metrics[name], self.kinds[name] = parse_column(spec)
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
        """Always ``(True, reason)``: any agent can answer from a table it is given."""
        return True, "answers from a CSV of published measurements when the agent has a table"

    def describe(self) -> dict[str, Any]:
        """What this table answers (for ``Describe``)."""
        if self.table_path is None:
            return {"configured": False}
        return {"configured": True, "table_path": self.table_path, "key_column": self.key_column,
                "metrics": dict(self.metrics), "kinds": dict(self.kinds), "rows": len(self._table)}

    def _method(self, metric: str) -> str:
        return f"table:{os.path.basename(self.table_path or '')}:{self.metrics[metric]}"

    def lookup(self, arch_key: str | None, *, job_id: str = "", device_key: str = "",
               model_sha256: str = "", build: BuildConfig | None = None) -> MeasureResult:
        """The table's row for ``arch_key`` as a :class:`MeasureResult` (unknown -> ``unsupported``)."""
        base = dict(job_id=job_id, device_key=device_key, backend=TABLE, model_sha256=model_sha256,
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
                             method=self._method("latency_ms"), status=self.kinds["latency_ms"])
        if "energy_mj" in values and values["energy_mj"] is not None:
            energy = Energy(status=self.kinds["energy_mj"], value_mj=values["energy_mj"],
                            method=self._method("energy_mj"))
        else:
            energy = Energy(status=UNAVAILABLE, method="the table has no energy value for this arch")
        mem = None
        if values.get("peak_memory_mb") is not None:
            mem = Metric(values["peak_memory_mb"], self.kinds["peak_memory_mb"],
                         self._method("peak_memory_mb"), "MB")
        return MeasureResult(**base, latency_ms=stats, energy=energy, peak_memory_mb=mem,
                             provenance={"source": TABLE, "table_path": self.table_path,
                                         "key_column": self.key_column, "metrics": dict(self.metrics),
                                         "kinds": dict(self.kinds)})
