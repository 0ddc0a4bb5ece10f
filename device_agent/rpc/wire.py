"""Translation between the wire messages (``hwnas.agent.v1``) and the domain objects.

Used by both the servicer and the client, so a field is converted the same way in both
directions. Free-form parts of a result (output check, per-layer records, settings,
provenance) travel as JSON strings; latency, metrics and energy are typed messages.
"""
from __future__ import annotations

import json
import math
from dataclasses import fields
from collections.abc import Mapping
from typing import Any

from device_agent.config import BuildConfig, MeasureConfig
from device_agent.errors import InvalidRequest
from device_agent.core.result import (
    COMPUTED, ESTIMATED, MEASURED, PUBLISHED, SIMULATED, UNAVAILABLE, Energy, LatencyStats, MeasureResult, Metric)
from protos.hwnas.agent.v1 import agent_pb2 as pb

PROTOCOL = "hwnas.agent.v1"

_STATUS_TO_PB = {MEASURED: pb.MEASURED, ESTIMATED: pb.ESTIMATED, UNAVAILABLE: pb.UNAVAILABLE,
                 PUBLISHED: pb.PUBLISHED, SIMULATED: pb.SIMULATED, COMPUTED: pb.COMPUTED}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def dumps(value: Any) -> str:
    """JSON for a free-form field ("" for None; numpy scalars become numbers)."""
    if value is None:
        return ""
    return json.dumps(value, default=_json_default, sort_keys=True)


def loads(text: str, default: Any = None) -> Any:
    """Inverse of :func:`dumps`."""
    return json.loads(text) if text else default


# ---- configs
def _config_to_pb(cfg: Any, msg: Any) -> Any:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        try:
            setattr(msg, f.name, value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{type(cfg).__name__}.{f.name}={value!r}: {exc}") from None
    return msg


def _config_from_pb(cls: type, msg: Any, defaults: Any = None) -> Any:
    data = {f.name: getattr(msg, f.name) for f in fields(cls) if msg.HasField(f.name)}
    for name, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"{cls.__name__}.{name} must be finite")
    if defaults is not None:  # absent fields: the agent's defaults, not the dataclass's
        data = {**defaults.to_dict(), **data}
    try:
        return cls.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"bad {cls.__name__}: {exc}") from None


def build_to_pb(build: BuildConfig | Mapping[str, Any] | None) -> pb.BuildConfig:
    """``BuildConfig`` -> message (every field set). A mapping sets only its fields and ``None``
    none: the agent fills the others with its defaults (``agent serve --backend/--precision``)."""
    if build is None:
        return pb.BuildConfig()
    if isinstance(build, Mapping):
        try:
            BuildConfig.from_dict(dict(build))  # names and values checked before sending
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"bad BuildConfig: {exc}") from None
        msg = pb.BuildConfig()
        for name, value in build.items():
            setattr(msg, name, value)
        return msg
    return _config_to_pb(build, pb.BuildConfig())


def build_from_pb(msg: pb.BuildConfig, defaults: BuildConfig | None = None) -> BuildConfig:
    """Message -> ``BuildConfig``: absent fields take ``defaults`` (the agent's) or the
    dataclass defaults; ``InvalidRequest`` if bad."""
    return _config_from_pb(BuildConfig, msg, defaults)


def measure_to_pb(measure: MeasureConfig) -> pb.MeasureConfig:
    """``MeasureConfig`` -> message (every field set)."""
    return _config_to_pb(measure, pb.MeasureConfig())


def measure_from_pb(msg: pb.MeasureConfig) -> MeasureConfig:
    """Message -> ``MeasureConfig`` (absent fields take the defaults); ``InvalidRequest`` if bad."""
    return _config_from_pb(MeasureConfig, msg)


# ---- results
def _metric_to_pb(m: Metric, msg: pb.Metric) -> None:
    if m.value is not None:
        msg.value = float(m.value)
    msg.status = _STATUS_TO_PB.get(m.status, pb.METRIC_STATUS_UNSPECIFIED)
    msg.method = m.method or ""
    msg.unit = m.unit or ""


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def result_to_pb(r: MeasureResult, *, bytes_received: int = 0) -> pb.MeasureReply:
    """``MeasureResult`` -> ``MeasureReply``."""
    msg = pb.MeasureReply(
        job_id=r.job_id, device_key=r.device_key or "", backend=r.backend or "",
        model_sha256=r.model_sha256 or "", flags=[str(f) for f in r.flags],
        output_check_json=dumps(r.output_check), layers_json=dumps(r.layers) if r.layers else "",
        build_config_json=dumps(r.build_config), measure_config_json=dumps(r.measure_config),
        provenance_json=dumps(r.provenance), model_bytes_received=bytes_received)
    if r.error is not None:
        msg.error = str(r.error)
    if r.error_kind is not None:
        msg.error_kind = str(r.error_kind)
    if r.latency_ms is not None:
        lat = r.latency_ms
        for f in fields(LatencyStats):
            if f.name == "status":
                continue
            value = getattr(lat, f.name)
            setattr(msg.latency_ms, f.name, int(value) if f.name == "count" else
                    (value if f.name == "method" else float(value)))
        msg.latency_ms.status = _STATUS_TO_PB.get(lat.status, pb.METRIC_STATUS_UNSPECIFIED)
    if r.peak_memory_mb is not None:
        _metric_to_pb(r.peak_memory_mb, msg.peak_memory_mb)
    if r.device_peak_mb is not None:
        _metric_to_pb(r.device_peak_mb, msg.device_peak_mb)
    if r.energy is not None:
        e, me = r.energy, msg.energy
        me.status = _STATUS_TO_PB.get(e.status, pb.METRIC_STATUS_UNSPECIFIED)
        me.method = e.method or ""
        for name in ("value_mj", "net_value_mj", "avg_power_w", "idle_power_w", "window_s"):
            if getattr(e, name) is not None:
                setattr(me, name, float(getattr(e, name)))
        if e.iterations is not None:
            me.iterations = int(e.iterations)
        for rail, watts in (e.rails or {}).items():
            me.rails[str(rail)] = float(watts)
    return msg


def result_from_pb(msg: pb.MeasureReply) -> MeasureResult:
    """``MeasureReply`` -> ``MeasureResult``."""
    r = MeasureResult(
        job_id=msg.job_id, device_key=msg.device_key, backend=msg.backend,
        model_sha256=msg.model_sha256, error=_opt(msg, "error"), error_kind=_opt(msg, "error_kind"),
        flags=list(msg.flags), output_check=loads(msg.output_check_json),
        layers=loads(msg.layers_json, []), build_config=loads(msg.build_config_json, {}),
        measure_config=loads(msg.measure_config_json, {}), provenance=loads(msg.provenance_json, {}))
    if msg.HasField("latency_ms"):
        lat = msg.latency_ms
        r.latency_ms = LatencyStats(**{f.name: getattr(lat, f.name) for f in fields(LatencyStats)
                                       if f.name != "status"},
                                    status=_STATUS_FROM_PB.get(lat.status, MEASURED))
    for name in ("peak_memory_mb", "device_peak_mb"):
        if msg.HasField(name):
            m = getattr(msg, name)
            setattr(r, name, Metric(value=_opt(m, "value"), status=_STATUS_FROM_PB.get(m.status, ""),
                                    method=m.method, unit=m.unit))
    if msg.HasField("energy"):
        e = msg.energy
        r.energy = Energy(status=_STATUS_FROM_PB.get(e.status, ""), method=e.method,
                          value_mj=_opt(e, "value_mj"), net_value_mj=_opt(e, "net_value_mj"),
                          avg_power_w=_opt(e, "avg_power_w"), idle_power_w=_opt(e, "idle_power_w"),
                          window_s=_opt(e, "window_s"), iterations=_opt(e, "iterations"),
                          rails=dict(e.rails))
    return r


# ---- Describe
def _available(value: Any) -> list[str]:
    """Names of the available entries of ``{name: {"available": bool, ...}}``."""
    if not isinstance(value, dict):
        return []
    return [str(k) for k, v in value.items()
            if k != "selected" and isinstance(v, dict) and v.get("available")]


def describe_to_pb(info: dict[str, Any]) -> pb.DeviceInfo:
    """The agent's description (a dict) -> ``DeviceInfo``; the whole dict rides in details_json."""
    limits = info.get("limits") or {}
    msg = pb.DeviceInfo(
        device_key=str(info.get("device_key", "")), protocol=PROTOCOL,
        agent_version=str(info.get("agent_version", "")),
        backends=_available(info.get("backends")), sensors=_available(info.get("sensors")),
        details_json=dumps(info))
    for k, v in (info.get("versions") or {}).items():
        if v is not None:
            msg.versions[str(k)] = str(v)
    for name in ("max_model_bytes", "max_chunk_bytes", "queue_size", "queue_depth"):
        if name in limits:
            setattr(msg.limits, name, int(limits[name]))
    return msg


def describe_from_pb(msg: pb.DeviceInfo) -> dict[str, Any]:
    """``DeviceInfo`` -> dict (details_json, with the typed fields on top)."""
    info = loads(msg.details_json, {}) or {}
    info.update(device_key=msg.device_key, protocol=msg.protocol, agent_version=msg.agent_version)
    info.setdefault("versions", dict(msg.versions))
    info["limits"] = dict(info.get("limits") or {}, max_model_bytes=msg.limits.max_model_bytes,
                          max_chunk_bytes=msg.limits.max_chunk_bytes, queue_size=msg.limits.queue_size,
                          queue_depth=msg.limits.queue_depth)
    info["backends_available"] = list(msg.backends)
    info["sensors_available"] = list(msg.sensors)
    return info
