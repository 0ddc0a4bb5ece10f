"""What a device agent can do here: hardware, versions, backends, power sensors, limits.

``describe_device`` is the payload of the agent's ``Describe`` call. Backends and sensors report
``available`` with a reason, so a missing TensorRT or power sensor is visible, never silent.
"""
from __future__ import annotations

from typing import Any

from device_agent.backends import list_backends
from device_agent.config import MeasureConfig
from device_agent.core.provenance import collect_provenance, default_device_key
from device_agent.core.validate import DEFAULT_MAX_BYTES, DEFAULT_MAX_TENSOR_ELEMS
from device_agent.tables import describe_table, table_names


def _sensors() -> dict[str, dict[str, Any]]:
    try:
        from device_agent.sensors import detect_sensor, list_sensors
    except ImportError:
        return {}
    out: dict[str, dict[str, Any]] = {name: {"available": ok, "reason": reason}
                                      for name, (ok, reason) in list_sensors().items()}
    try:
        sensor = detect_sensor()
        out["selected"] = {"available": sensor.name != "none", "reason": sensor.method(),
                           "name": sensor.name}
        sensor.close()
    except Exception as exc:  # noqa: BLE001 - describe must not fail on a broken sensor
        out["selected"] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return out


def describe_device(*, device_key: str | None = None, default_backend: str | None = None,
                    table: Any = None) -> dict[str, Any]:
    """The device description. ``table`` is the agent's configured ``TableSource``, if any."""
    prov = collect_provenance(None, device_key=device_key or default_device_key())
    hardware = {k: prov[k] for k in ("hostname", "cpu_model", "cpu_count_logical", "cpu_affinity",
                                     "cpu_count_physical", "memory_total_mb", "os", "kernel")
                if k in prov}
    hardware.update(cpu_governors=prov.get("cpu_governors", {}),
                    temperatures_c=prov.get("temperatures_c", {}))
    if "nvpmodel" in prov:
        hardware["nvpmodel"] = prov["nvpmodel"]
    backends = {name: {"available": ok, "reason": reason}
                for name, (ok, reason) in list_backends().items()}
    backends.update({name: describe_table(table) for name in table_names()})
    defaults = MeasureConfig()
    desc: dict[str, Any] = {
        "device_key": prov["device_key"],
        "hardware": hardware,
        "versions": dict(prov.get("versions", {}), python=prov.get("python", "")),
        "backends": backends,
        "sensors": _sensors(),
        "limits": {"max_model_bytes": DEFAULT_MAX_BYTES, "max_tensor_elems": DEFAULT_MAX_TENSOR_ELEMS,
                   "default_timeout_s": defaults.timeout_s,
                   "default_memory_limit_mb": defaults.memory_limit_mb},
    }
    if default_backend:
        desc["default_backend"] = default_backend
    return desc
