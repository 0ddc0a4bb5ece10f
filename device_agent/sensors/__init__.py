"""Power sensors: NVML (NVIDIA GPUs), Jetson INA3221, RAPL (CPUs), or none.

``detect_sensor()`` returns the first available of ``nvml``, ``jetson``, ``rapl``, else a
:class:`NoSensor` whose energy is ``unavailable`` with each sensor's reason. Hardware libraries
(``pynvml``) are imported lazily, so this package imports anywhere.
"""
from __future__ import annotations

from typing import Any

from device_agent.sensors.base import (
    DETECTION_ORDER,
    SENSORS,
    FLAG_SHORT_WINDOW,
    EnergyWindow,
    PowerSensor,
    SensorError,
    register_sensor,
    sensor_classes,
    trapezoid,
    wrapped_delta,
)
from device_agent.sensors.idle import IdleBaseline, IdleReading
from device_agent.sensors.none import NoSensor


def _options(name: str, root: str) -> dict[str, Any]:
    return {"root": root} if name in ("jetson", "rapl") else {}


def list_sensors(*, root: str = "/") -> dict[str, tuple[bool, str]]:
    """Every registered sensor -> ``(available, reason)``; never raises."""
    return {name: SENSORS.availability(name, **_options(name, root)) for name in SENSORS.names()}


def detect_sensor(preferred: str | None = None, *, root: str = "/") -> PowerSensor:
    """The sensor to use: ``preferred`` if given and available, else the first available of
    ``nvml``, ``jetson``, ``rapl``; otherwise a :class:`NoSensor` naming every reason.

    ``root`` points the sysfs sensors at another tree (tests). Unknown names raise ``ValueError``.
    """
    if preferred is not None and preferred not in SENSORS:
        raise ValueError(f"unknown power sensor {preferred!r}; known: {SENSORS.names()}")
    if preferred == "none":
        return NoSensor(reasons={"none": "requested"})
    order = [preferred] if preferred else list(DETECTION_ORDER)
    reasons: dict[str, str] = {}
    for name in order:
        ok, reason = SENSORS.availability(name, **_options(name, root))
        try:
            if ok:
                return SENSORS.get(name)(**_options(name, root))
        except Exception as exc:  # noqa: BLE001 - a broken sensor must not stop the agent
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        reasons[name] = reason
    return NoSensor(reasons=reasons)


__all__ = [
    "DETECTION_ORDER", "FLAG_SHORT_WINDOW", "EnergyWindow", "IdleBaseline", "IdleReading",
    "NoSensor", "PowerSensor", "SENSORS", "SensorError", "detect_sensor", "list_sensors",
    "register_sensor", "sensor_classes", "trapezoid", "wrapped_delta",
]
