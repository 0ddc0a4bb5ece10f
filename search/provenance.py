"""Provenance: what each of a candidate's numbers is and how it was obtained.

``provenance(c, name)`` answers ``(status, how)`` for a results row ``c`` (as
:func:`search.reporting.results.collect` gives it) and an objective or metric name; status is a
kind from :data:`search.metrics.KINDS` or ``unavailable``. ``cost_values`` lists every cost
number a candidate has. Both read :mod:`search.metrics`; the report and ``deploy/`` use them.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from search.metrics import CANDIDATE_COSTS, CATALOGUE, DEVICE_COSTS
from search.objectives import Objective, split_metric


def num(v: Any) -> float | None:
    """``v`` as a finite float, or None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt(v: Any) -> str:
    """A number for people: ``n/a``, thousands separators, four significant digits."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _measurement_for(c: dict[str, Any], key: str | None) -> dict[str, Any] | None:
    ms = [m for m in c.get("measurements") or [] if key is None or m.get("device_key") == key]
    ok = [m for m in ms if m.get("ok", m.get("error") is None)]
    return (ok or ms or [None])[0]


def provenance(c: dict[str, Any], name: str) -> tuple[str, str]:
    """``(status, how)`` of candidate ``c``'s value for objective/metric ``name``.

    status is ``measured``, ``computed``, ``estimated`` (...) or ``unavailable``.
    """
    metric, key = split_metric(name)
    entry = CATALOGUE[metric]
    value = (c.get("objectives") or {}).get(name, c.get(name) if metric in CANDIDATE_COSTS else None)
    if entry.source == "train" and entry.kind == "computed":  # from the exported graph (memory)
        rec = (c.get("train") or {}).get(entry.path[0]) or {}
        value = value if value is not None else entry.read(c)
        how = f"{entry.description}; {rec.get('method', 'computed')}"
        return (entry.kind if value is not None else "unavailable"), how
    if entry.source == "train":
        train = c.get("train") or {}
        src = train.get("source") or "as recorded in the run's results (no training record)"
        how = src + (f"; {train['epochs']} epochs" if train.get("epochs") else "")
        kind = "published" if str(src).startswith("table:") else entry.kind  # --accuracy-table
        return (kind if value is not None else "unavailable"), how
    if entry.source == "candidate":
        return (entry.kind if value is not None else "unavailable"), entry.description
    m = _measurement_for(c, key)
    if m is None:
        return "unavailable", f"no measurement on {key or 'any device'}"
    if m.get("error"):
        return "unavailable", f"measurement failed: {m['error']}"
    where = f"on {m.get('device_key')}" + (f" via {m['agent']}" if m.get("agent") else "")
    if entry.path[0] == "latency_ms":  # a statistic of the timed runs, or a table's value
        lat = m.get("latency_ms") or {}
        if not lat:
            return "unavailable", f"no latency {where}"
        status = entry.status(m)
        if status in ("published", "simulated"):
            return status, f"{lat.get('method') or 'a table'} {where}"
        stat = entry.path[-1]
        ci = (f", 95% CI of median [{fmt(lat.get('ci_low'))}, {fmt(lat.get('ci_high'))}]"
              if lat.get("ci_low") is not None else "")
        flags = f"; flags: {', '.join(m['flags'])}" if m.get("flags") else ""
        return status, (f"{stat} of {lat.get('count', '?')} timed runs {where}"
                        f" ({lat.get('method') or m.get('backend') or 'timed loop'}){ci}{flags}")
    part = m.get(entry.path[0]) or {}
    return entry.status(m), f"{part.get('method') or 'not reported'} {where}"


def cost_values(c: dict[str, Any], objectives: Sequence[Objective]) -> dict[str, float]:
    """Every cost number of ``c``: cost objectives, params, size_mb, and the latency, host and
    device memory and energy on each device (energy only where a sensor or table gave a value);
    what each number is comes from :func:`provenance`."""
    out: dict[str, float] = {}
    objs = c.get("objectives") or {}
    for o in objectives:
        if o.metric != "accuracy" and num(objs.get(o.name)) is not None:
            out[o.name] = float(objs[o.name])
    for k in CANDIDATE_COSTS:
        v = num(objs.get(k, c.get(k)))
        if v is not None:
            out.setdefault(k, v)
    for m in c.get("measurements") or []:
        dk = m.get("device_key")
        if m.get("error") or not dk:
            continue
        for name in DEVICE_COSTS:
            entry = CATALOGUE[name]
            v = num(entry.read({}, m))
            if v is not None and entry.status(m) != "unavailable":
                out.setdefault(f"{name}@{dk}", v)
    return out
