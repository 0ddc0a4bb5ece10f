"""The sensor used when the device has none: energy is reported ``unavailable``, never invented."""
from __future__ import annotations

import time
from collections.abc import Sequence

from device_agent.core.result import UNAVAILABLE, Energy
from device_agent.sensors.base import EnergyWindow, PowerSensor, register_sensor


@register_sensor("none")
class NoSensor(PowerSensor):
    """No power sensor. ``reasons`` says why each real sensor was unavailable."""

    def __init__(self, *, reasons: dict[str, str] | None = None) -> None:
        self.reasons = dict(reasons or {})

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, "always available (reports energy as unavailable)"

    def rails(self) -> list[str]:
        return []

    def read(self) -> dict[str, float]:
        return {}

    def method(self) -> str:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()))
        return f"no power sensor: {why}" if why else "no power sensor"

    def snapshot(self) -> dict[str, object]:
        return {"sensor": "none", "reasons": dict(self.reasons)}

    def window(self, *, board_rail: str | Sequence[str] | None = None,
               idle_power_w: float | None = None, idle_method: str = "") -> EnergyWindow:
        return _NoEnergyWindow(self)


class _NoEnergyWindow(EnergyWindow):
    """Times the block (``window_s``) but never reports an energy value."""

    def __init__(self, sensor: NoSensor) -> None:
        super().__init__(sensor, board_rail=[])

    def __enter__(self) -> "_NoEnergyWindow":
        self.t_start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t_end = time.perf_counter()

    def energy(self, iterations: int) -> Energy:
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        return Energy(status=UNAVAILABLE, method=self.sensor.method(), window_s=self.window_s,
                      iterations=iterations)

    def mean_power_w(self) -> float | None:
        return None
