"""Objectives and constraints of a search.

An objective names a metric, its direction and, for hardware metrics, the device key it is
measured on: ``accuracy`` (max), ``params`` (min), ``latency_ms@cpu-x86`` (min), ...
A metric without ``@key`` that needs a device is bound to the run's default device key.

The metrics the search knows (units, directions, where each value is read from) are listed
once, in :mod:`search.metrics`.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from search.metrics import CATALOGUE, DEVICE_METRICS  # noqa: F401 - DEVICE_METRICS re-exported

#: Metric name -> default direction (the catalogue in :mod:`search.metrics` is the source).
METRICS: dict[str, str] = {name: m.direction for name, m in CATALOGUE.items()}

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z0-9_@.\-:]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


class ObjectiveError(ValueError):
    """A malformed objective or constraint specification."""


def split_metric(name: str) -> tuple[str, str | None]:
    """``"latency_ms@gpu"`` -> ``("latency_ms", "gpu")``; ``"accuracy"`` -> ``("accuracy", None)``."""
    metric, _, key = name.partition("@")
    if metric not in METRICS:
        raise ObjectiveError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    if key == "" and "@" in name:
        raise ObjectiveError(f"empty device key in {name!r}")
    return metric, (key or None)


class _Named:
    """``metric`` and ``device_key`` of a ``name`` such as ``latency_ms@gpu``."""

    name: str

    @property
    def metric(self) -> str:
        """The bare metric name (a key of :data:`search.metrics.CATALOGUE`)."""
        return split_metric(self.name)[0]

    @property
    def device_key(self) -> str | None:
        """The device key after ``@``, or None."""
        return split_metric(self.name)[1]


@dataclass(frozen=True)
class Objective(_Named):
    """One objective: ``name`` is ``metric`` or ``metric@device_key``; direction ``min``/``max``."""

    name: str
    direction: str

    def __post_init__(self) -> None:
        split_metric(self.name)
        if self.direction not in ("min", "max"):
            raise ObjectiveError(f"direction of {self.name!r} must be 'min' or 'max'")

    def minimized(self, value: float) -> float:
        """The value on a to-be-minimised scale (negated for ``max``)."""
        return -value if self.direction == "max" else value

    @classmethod
    def parse(cls, spec: str) -> "Objective":
        """``"accuracy"`` / ``"latency_ms@gpu"`` / ``"max:accuracy"`` -> Objective."""
        direction, sep, name = spec.partition(":")
        if not sep:
            name = spec
            direction = METRICS.get(split_metric(spec)[0], "min")
        return cls(name=name.strip(), direction=direction.strip())


@dataclass(frozen=True)
class Constraint(_Named):
    """``name op bound``, e.g. ``latency_ms <= 5``. Violation is 0 when satisfied."""

    name: str
    op: str
    bound: float

    def __post_init__(self) -> None:
        split_metric(self.name)
        if self.op not in _OPS:
            raise ObjectiveError(f"constraint operator must be one of {list(_OPS)}")

    def violation(self, value: float | None) -> float:
        """How far ``value`` is outside the bound (0 if satisfied; ``inf`` if unknown)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        if _OPS[self.op](value, self.bound):
            return 0.0
        return abs(value - self.bound) / max(abs(self.bound), 1e-12)

    @classmethod
    def parse(cls, spec: str) -> "Constraint":
        m = _CONSTRAINT_RE.match(spec)
        if not m:
            raise ObjectiveError(
                f"cannot parse constraint {spec!r}; expected e.g. 'latency_ms <= 5'"
            )
        return cls(name=m.group(1), op=m.group(2), bound=float(m.group(3)))


def bind(name: str, default_key: str | None) -> str:
    """Bind a device metric without ``@key`` to ``default_key``; leave others unchanged."""
    metric, key = split_metric(name)
    if metric in DEVICE_METRICS and key is None and default_key:
        return f"{metric}@{default_key}"
    return name


def total_violation(constraints: list[Constraint], values: dict[str, float]) -> float:
    """Sum of normalised violations over ``constraints`` for ``values`` (0 = feasible)."""
    return float(sum(c.violation(values.get(c.name)) for c in constraints))
