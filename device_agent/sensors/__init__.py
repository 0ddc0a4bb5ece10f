"""Power sensors: NVML (NVIDIA GPUs), Jetson INA3221, RAPL (CPUs), or none.

``detect_sensor()`` returns the first available of ``nvml``, ``jetson``, ``rapl``, else a
:class:`NoSensor` whose energy is ``unavailable`` with each sensor's reason. Hardware libraries
(``pynvml``) are imported lazily, so this package imports anywhere.
"""
from __future__ import annotations

from typing import Any

from device_agent.sensors.base import (
    DETECTION_ORDER,
    FLAG_SHORT_WINDOW,
    EnergyWindow,
    PowerSensor,
    SensorError,
    register_sensor,
    sensor_classes,
    trapezoid,
    wrapped_delta,
)
from device_agent.sensors import jetson as _jetson  # noqa: F401  (registers "jetson")
from device_agent.sensors import none as _none  # noqa: F401  (registers "none")
from device_agent.sensors import nvml as _nvml  # noqa: F401  (registers "nvml")
from device_agent.sensors import rapl as _rapl  # noqa: F401  (registers "rapl")
from device_agent.sensors.idle import IdleBaseline, IdleReading
from device_agent.sensors.none import NoSensor


def _options(name: str, root: str) -> dict[str, Any]:
    return {"root": root} if name in ("jetson", "rapl") else {}


def list_sensors(*, root: str = "/") -> dict[str, tuple[bool, str]]:
    """Every registered sensor -> ``(available, reason)``; never raises."""
    out: dict[str, tuple[bool, str]] = {}
    for name, cls in sorted(sensor_classes().items()):
        try:
            out[name] = tuple(cls.availability(**_options(name, root)))  # type: ignore[assignment]
        except Exception as exc:  # noqa: BLE001
            out[name] = (False, f"availability check failed: {type(exc).__name__}: {exc}")
    return out


def detect_sensor(preferred: str | None = None, *, root: str = "/") -> PowerSensor:
    """The sensor to use: ``preferred`` if given and available, else the first available of
    ``nvml``, ``jetson``, ``rapl``; otherwise a :class:`NoSensor` naming every reason.

    ``root`` points the sysfs sensors at another tree (tests). Unknown names raise ``ValueError``.
    """
    classes = sensor_classes()
    if preferred is not None and preferred not in classes:
        raise ValueError(f"unknown power sensor {preferred!r}; known: {sorted(classes)}")
    if preferred == "none":
        return NoSensor(reasons={"none": "requested"})
    order = [preferred] if preferred else list(DETECTION_ORDER)
    reasons: dict[str, str] = {}
    for name in order:
        cls = classes[name]
        try:
            ok, reason = cls.availability(**_options(name, root))
            if ok:
                return cls(**_options(name, root))
        except Exception as exc:  # noqa: BLE001 - a broken sensor must not stop the agent
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        reasons[name] = reason
    return NoSensor(reasons=reasons)


__all__ = [
    "DETECTION_ORDER", "FLAG_SHORT_WINDOW", "EnergyWindow", "IdleBaseline", "IdleReading",
    "NoSensor", "PowerSensor", "SensorError", "detect_sensor", "list_sensors", "register_sensor",
    "sensor_classes", "trapezoid", "wrapped_delta",
]
