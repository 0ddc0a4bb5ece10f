"""The metric catalogue: for every metric the search knows, its unit, direction, whether it
belongs to a device key, where its value is read from, and what kind of number it is.

Everything that turns a metric's name into a value, a unit or a provenance reads this table:
the loop's objective values (:mod:`search.loop.tracker`), the results and the report
(:mod:`search.reporting`), the provenance (:mod:`search.provenance`), status, and deploy.

A value lives in one of three places:

- ``train``: the candidate's training record (``accuracy``; ``memory``: the figures
  :mod:`search.memory` computes from the exported ONNX graph, ``peak_activation_kb`` and
  ``weights_kb`` at the build config's precision);
- ``candidate``: the candidate's own row (``params``, ``size_mb``);
- ``measurement``: a device agent's measurement result on the metric's device key.

``kind`` is what the number is when it is there: ``measured`` (a timer, a sensor, a held-out
split), ``published`` (a table's column), ``simulated``, ``estimated`` (a model) or ``computed``
(counted from the network). A measurement that carries its own ``status`` (peak memory, energy)
says per value which of these it is (see ``status_field``).
"""
from __future__ import annotations

import math
from collections import abc
from dataclasses import dataclass
from typing import Any, Mapping

#: the kinds of number (plus ``unavailable`` for a value that is not there)
KINDS = ("measured", "published", "simulated", "estimated", "computed")


@dataclass(frozen=True)
class Metric:
    """One metric of the catalogue."""

    name: str
    unit: str
    direction: str  # "min" or "max"
    source: str  # "train", "candidate" or "measurement"
    path: tuple[str, ...]  # keys from the source dict down to the number
    kind: str
    description: str
    #: the measurement's field (beside the number) that states the value's kind, if any
    status_field: str | None = None
    #: the closed range ``[low, high]`` a device's reply may hold (anything else is impossible)
    valid: tuple[float, float] = (-math.inf, math.inf)

    @property
    def device_bound(self) -> bool:
        """True for a metric measured by an agent on a device key (``latency_ms@cpu-x86``)."""
        return self.source == "measurement"

    def read(self, cand: Mapping[str, Any], result: Mapping[str, Any] | None = None) -> float | None:
        """The metric's value for a candidate row ``cand`` (its ``train`` record, ``params``,
        ``size_mb``) or a device measurement ``result``; None when it is not there."""
        if self.source == "train":
            node: Any = cand.get("train") or {}
        elif self.source == "candidate":
            node = cand
        else:
            node = result
        for key in self.path:
            # a plain dict first: isinstance against typing's Mapping alias goes through its
            # subclass hook, a measurable share of the loop's time per reply at 16 agents
            if type(node) is not dict and not isinstance(node, abc.Mapping):
                return None
            node = node.get(key)
        return node  # type: ignore[return-value]

    def impossible(self, value: Any) -> str | None:
        """Why ``value`` cannot be a reading of this metric (not a finite number in
        :attr:`valid`), or None when it can."""
        low, high = self.valid
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{self.name} of {value!r} is not a finite number"
        if not low <= value <= high:
            return f"{self.name} of {value:g} is outside [{low:g}, {high:g}] {self.unit}".rstrip()
        return None

    def status(self, result: Mapping[str, Any] | None) -> str:
        """The kind of this measurement's value, or ``unavailable`` (device metrics only)."""
        if result is None:
            return "unavailable"
        if self.read({}, result) is None and self.path[0] != "energy":
            return "unavailable"
        if self.status_field is not None:  # a result from before the field existed: the entry's kind
            return (result.get(self.path[0]) or {}).get(self.status_field) or (
                self.kind if self.read({}, result) is not None else "unavailable")
        return self.kind


def _m(name: str, unit: str, direction: str, source: str, path: tuple[str, ...], kind: str,
       description: str, status_field: str | None = None,
       valid: tuple[float, float] = (-math.inf, math.inf)) -> tuple[str, Metric]:
    return name, Metric(name, unit, direction, source, path, kind, description, status_field, valid)


#: sane ranges of device readings: a time and an energy are positive (a picosecond, a femtojoule
#: at least), one inference takes at most an hour, 10 TB, 1 MJ; a memory increase may be 0
_MS, _MB, _MJ = (1e-9, 3.6e6), (0.0, 1e7), (1e-12, 1e9)


#: every metric by name
CATALOGUE: dict[str, Metric] = dict([
    _m("accuracy", "", "max", "train", ("accuracy",), "measured",
       "held-out accuracy of the trained candidate (0..1), or a table's published accuracy"),
    _m("params", "", "min", "candidate", ("params",), "computed", "trainable parameter count"),
    _m("size_mb", "MB", "min", "candidate", ("size_mb",), "computed", "size of the exported ONNX file"),
    _m("peak_activation_kb", "kB", "min", "train", ("memory", "peak_activation_kb"), "computed",
       "largest set of activations alive at once over the ONNX graph's schedule, batch 1 (search.memory)"),
    _m("weights_kb", "kB", "min", "train", ("memory", "weights_kb"), "computed",
       "floating-point parameters at the deployed precision ([build].precision; search.memory)"),
    # a table agent's latency is published or simulated: the result's latency says which
    _m("latency_ms", "ms", "min", "measurement", ("latency_ms", "median"), "measured",
       "median latency of the timed runs on the agent (or a table's published/simulated value)",
       status_field="status", valid=_MS),
    _m("latency_p99_ms", "ms", "min", "measurement", ("latency_ms", "p99"), "measured",
       "99th-percentile latency of the timed runs on the agent", status_field="status", valid=_MS),
    _m("host_peak_mb", "MB", "min", "measurement", ("peak_memory_mb", "value"), "measured",
       "peak host RSS of the measurement job on the agent (not accelerator memory)", status_field="status",
       valid=_MB),
    _m("device_peak_mb", "MB", "min", "measurement", ("device_peak_mb", "value"), "measured",
       "accelerator memory: a TensorRT engine's device memory size (computed) or the NVML/CUDA "
       "delta during the job (measured); absent on a CPU", status_field="status", valid=_MB),
    _m("peak_memory_mb", "MB", "min", "measurement", ("peak_memory_mb", "value"), "measured",
       "older name of host_peak_mb (host RSS of the job)", status_field="status", valid=_MB),
    _m("energy_mj", "mJ", "min", "measurement", ("energy", "value_mj"), "measured",
       "energy per inference (gross) from the agent's power sensor; never invented", status_field="status",
       valid=_MJ),
    _m("energy_net_mj", "mJ", "min", "measurement", ("energy", "net_value_mj"), "measured",
       "energy per inference above the idle baseline", status_field="status",
       valid=(-_MJ[1], _MJ[1])),  # idle noise can make a small net value negative
])

#: metrics measured by an agent on a device key
DEVICE_METRICS = frozenset(name for name, m in CATALOGUE.items() if m.device_bound)

#: cost metrics of a candidate's own row, compared in the report even when they are not objectives
CANDIDATE_COSTS = tuple(name for name, m in CATALOGUE.items() if m.source == "candidate")

#: metrics computed from the exported ONNX graph (the network is exported when one is asked for)
ONNX_METRICS = frozenset({"size_mb", "peak_activation_kb", "weights_kb"})

#: device metrics the report compares per device key (one statistic per quantity)
DEVICE_COSTS = ("latency_ms", "host_peak_mb", "device_peak_mb", "energy_mj")


def impossible_reading(result: Mapping[str, Any]) -> str | None:
    """The first device reading of an agent's successful ``result`` that cannot be real
    (negative, zero, infinite, absurdly large), or None when every reading present is sane."""
    for name in sorted(DEVICE_METRICS):
        m = CATALOGUE[name]
        value = m.read({}, result)
        if value is not None and (why := m.impossible(value)):
            return why
    return None


def metric(name: str) -> Metric:
    """The catalogue entry of ``name`` (a bare metric name, no ``@key``)."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(CATALOGUE))}") from None


def unit(name: str) -> str:
    """The unit of a bare metric name ('' for a count or a fraction)."""
    return CATALOGUE[name].unit if name in CATALOGUE else ""
