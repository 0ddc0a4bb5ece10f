"""Idle power baseline: measured at agent start and again when older than ``max_age_s``.

Net energy per inference is ``(E_window - P_idle x t_window) / iterations``; ``P_idle`` is the
board power measured with nothing running for ``duration_s`` (5 s by default, as in
MEASUREMENT.md section 5). The cache is thread-safe: concurrent callers wait for one measurement.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from device_agent.sensors.base import PowerSensor


@dataclass(frozen=True)
class IdleReading:
    """One idle measurement: mean board power, when, over how long, and how."""

    power_w: float
    measured_at: float  # time.time()
    duration_s: float
    method: str

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the measurement."""
        return (time.time() if now is None else now) - self.measured_at


class IdleBaseline:
    """Thread-safe cache of a sensor's idle board power."""

    def __init__(self, sensor: PowerSensor, *, duration_s: float = 5.0,
                 max_age_s: float = 600.0) -> None:
        if duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        self.sensor = sensor
        self.duration_s = duration_s
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._reading: IdleReading | None = None
        self.last_error: str | None = None

    def measure(self) -> IdleReading | None:
        """Measure idle power now (blocks ``duration_s``); ``None`` if the sensor cannot read."""
        with self._lock:
            return self._measure_locked()

    def _measure_locked(self) -> IdleReading | None:
        window = self.sensor.window()
        with window:
            time.sleep(self.duration_s)
        power = window.mean_power_w()
        if power is None:
            self.last_error = "; ".join(window.errors[:3]) or f"{self.sensor.name}: no reading"
            return None
        self.last_error = None
        self._reading = IdleReading(power_w=power, measured_at=time.time(),
                                    duration_s=window.window_s,
                                    method=f"{self.sensor.method()}, idle for {window.window_s:.1f} s")
        return self._reading

    def get(self) -> IdleReading | None:
        """The cached reading, re-measured first when missing or older than ``max_age_s``."""
        with self._lock:
            if self._reading is None or self._reading.age_s() > self.max_age_s:
                return self._measure_locked()
            return self._reading

    def cached(self) -> IdleReading | None:
        """The cached reading without measuring (may be stale or ``None``)."""
        with self._lock:
            return self._reading

    def invalidate(self) -> None:
        """Forget the reading (e.g. after a power-mode change)."""
        with self._lock:
            self._reading = None
