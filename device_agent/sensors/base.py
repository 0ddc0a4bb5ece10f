"""Power sensor base class, the energy window, and the sensor registry.

A :class:`PowerSensor` reads instant power per rail (``read()``, watts) and, where the hardware
keeps one, a cumulative energy counter (``read_energy()``, joules). Energy over a timed loop is
taken with a window::

    with sensor.window(idle_power_w=idle) as w:
        for _ in range(n):
            runner.run()
    energy = w.energy(n)          # device_agent.core.result.Energy
    result.flags += w.flags       # e.g. "energy_window_short", "throttled:SwThermal"

The window starts a polling thread (``poll_hz``, at least 10 Hz). With an energy counter it
accumulates counter deltas poll by poll, so a counter that wraps is handled as long as it wraps
at most once per poll; without one it integrates power x dt with the trapezoid rule over the
samples, including one taken synchronously when the window opens and one when it closes.
Energy is never invented: a sensor that cannot read returns ``status="unavailable"``.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from device_agent.core.result import MEASURED, UNAVAILABLE, Energy
from device_agent.plugins import PluginRegistry

#: Flag added when a window is shorter than the sensor's ``min_window_s`` / ``min_iterations``.
FLAG_SHORT_WINDOW = "energy_window_short"


class SensorError(RuntimeError):
    """A sensor could not be read."""


def trapezoid(times: Sequence[float], values: Sequence[float]) -> float:
    """Integral of ``values`` over ``times`` by the trapezoid rule (e.g. W x s -> J)."""
    if len(times) != len(values):
        raise ValueError("times and values differ in length")
    total = 0.0
    for i in range(1, len(times)):
        total += 0.5 * (values[i] + values[i - 1]) * (times[i] - times[i - 1])
    return total


def wrapped_delta(start: float, end: float, max_range: float | None) -> float:
    """``end - start`` for a counter that wraps to 0 after ``max_range`` (one wrap at most)."""
    delta = end - start
    if delta < 0:
        if not max_range:
            raise SensorError(f"energy counter went backwards ({start} -> {end}) "
                              "and the sensor gives no wrap range")
        delta += max_range
    return delta


class PowerSensor(ABC):
    """A source of power readings on this device.

    Subclasses set ``name`` (via ``@register_sensor``), implement ``availability``, ``rails``,
    ``read`` and, for counter sensors, ``read_energy`` (+ ``counter_range`` if it wraps).
    """

    name: str = ""
    #: Shortest window (s) and iteration count for which the sensor's energy is trustworthy.
    min_window_s: float = 0.0
    min_iterations: int = 1
    #: Polling rate of the window thread.
    poll_hz: float = 20.0
    #: True when ``read_energy`` returns a hardware energy counter (delta used, not polling).
    has_energy_counter: bool = False

    @classmethod
    @abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """``(available, reason)`` on this machine; never raises."""

    @abstractmethod
    def rails(self) -> list[str]:
        """Every rail this sensor records."""

    def board_rails(self) -> list[str]:
        """Rails whose sum is the fitness ("board") energy; default: all rails."""
        return self.rails()

    @abstractmethod
    def read(self) -> dict[str, float]:
        """Instant power per rail, in watts."""

    def read_energy(self) -> dict[str, float] | None:
        """Cumulative energy counter per rail in joules, or ``None`` without a counter."""
        return None

    def counter_range(self, rail: str) -> float | None:
        """Value (J) at which ``rail``'s counter wraps to 0; ``None``: it does not wrap."""
        return None

    def method(self) -> str:
        """How this sensor obtains energy (goes into ``Energy.method``)."""
        return self.name

    def snapshot(self) -> dict[str, Any]:
        """Provenance of the device state (names, clocks, modes...)."""
        return {"sensor": self.name}

    # -- window hooks (NVML overrides them to watch throttling and temperature)
    def window_started(self, window: "EnergyWindow") -> None:
        """Called when a window opens (before the first sample)."""

    def window_polled(self, window: "EnergyWindow") -> None:
        """Called by the polling thread after each sample."""

    def window_finished(self, window: "EnergyWindow") -> None:
        """Called when a window closes (after the last sample)."""

    def window(self, *, board_rail: str | Sequence[str] | None = None,
               idle_power_w: float | None = None, idle_method: str = "") -> "EnergyWindow":
        """A context manager measuring energy over the ``with`` block."""
        return EnergyWindow(self, board_rail=board_rail, idle_power_w=idle_power_w,
                            idle_method=idle_method)

    def close(self) -> None:
        """Release handles (NVML shutdown)."""


class EnergyWindow:
    """Energy over a ``with`` block, polled from a background thread."""

    def __init__(self, sensor: PowerSensor, *, board_rail: str | Sequence[str] | None = None,
                 idle_power_w: float | None = None, idle_method: str = "") -> None:
        self.sensor = sensor
        if board_rail is None:
            self.board = list(sensor.board_rails())
        elif isinstance(board_rail, str):
            self.board = [board_rail]
        else:
            self.board = list(board_rail)
        self.idle_power_w = idle_power_w
        self.idle_method = idle_method
        self.flags: list[str] = []
        self.provenance: dict[str, Any] = {}
        self.errors: list[str] = []
        self.t_start: float | None = None
        self.t_end: float | None = None
        #: (time, {rail: W}) samples; empty for counter sensors except for provenance.
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._use_counter = False
        self._last_counter: dict[str, float] = {}
        self._counter_j: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- sampling
    def _sample(self) -> float:
        """Take one sample; returns its time (``perf_counter``)."""
        now = time.perf_counter()
        try:
            if self._use_counter:
                counters = self.sensor.read_energy() or {}
                with self._lock:
                    for rail, value in counters.items():
                        if rail in self._last_counter:
                            self._counter_j[rail] = self._counter_j.get(rail, 0.0) + wrapped_delta(
                                self._last_counter[rail], value, self.sensor.counter_range(rail))
                        self._last_counter[rail] = value
                    self.samples.append((now, {}))
            else:
                power = self.sensor.read()
                with self._lock:
                    self.samples.append((now, dict(power)))
        except Exception as exc:  # noqa: BLE001 - a failed read is recorded, not fatal
            with self._lock:
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        return now

    def _loop(self) -> None:
        period = 1.0 / max(self.sensor.poll_hz, 10.0)
        while not self._stop.wait(period):
            self._sample()
            try:
                self.sensor.window_polled(self)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"poll hook: {type(exc).__name__}: {exc}")

    def __enter__(self) -> "EnergyWindow":
        self._use_counter = self.sensor.has_energy_counter
        self.sensor.window_started(self)
        # The window spans first to last sample, so integration covers exactly [t_start, t_end].
        self.t_start = self._sample()
        self._thread = threading.Thread(target=self._loop, name=f"power-{self.sensor.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.t_end = self._sample()
        self.sensor.window_finished(self)

    # -- results
    @property
    def window_s(self) -> float:
        """Length of the window in seconds."""
        if self.t_start is None or self.t_end is None:
            raise SensorError("window not closed yet")
        return self.t_end - self.t_start

    def rail_energy_j(self) -> dict[str, float]:
        """Energy per rail over the window, in joules."""
        if self._use_counter:
            return dict(self._counter_j)
        rails = sorted({r for _, p in self.samples for r in p})
        out: dict[str, float] = {}
        for rail in rails:
            pts = [(t, p[rail]) for t, p in self.samples if rail in p]
            if len(pts) >= 2:
                out[rail] = trapezoid([t for t, _ in pts], [v for _, v in pts])
        return out

    def energy(self, iterations: int) -> Energy:
        """Energy per inference over ``iterations`` runs inside the window."""
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        window_s = self.window_s
        per_rail = self.rail_energy_j()
        missing = [r for r in self.board if r not in per_rail]
        if missing or window_s <= 0:
            why = "; ".join(self.errors[:3]) or "no samples"
            return Energy(status=UNAVAILABLE, window_s=window_s, iterations=iterations,
                          method=f"{self.sensor.method()}: board rail(s) {missing} not read ({why})")
        gross_j = sum(per_rail[r] for r in self.board)
        short = window_s < self.sensor.min_window_s or iterations < self.sensor.min_iterations
        if short and FLAG_SHORT_WINDOW not in self.flags:
            self.flags.append(FLAG_SHORT_WINDOW)
        method = self.sensor.method()
        if self.board != self.sensor.rails():
            method += f"; board energy = {' + '.join(self.board)}"
        if short:
            method += (f"; window {window_s:.2f} s / {iterations} it shorter than the sensor's "
                       f"minimum {self.sensor.min_window_s:g} s / {self.sensor.min_iterations} it "
                       f"(flagged {FLAG_SHORT_WINDOW})")
        net_mj = None
        if self.idle_power_w is not None:
            net_mj = (gross_j - self.idle_power_w * window_s) * 1e3 / iterations
            method += f"; net = gross - idle {self.idle_power_w:.3f} W x window"
            if self.idle_method:
                method += f" (idle {self.idle_method})"
        return Energy(status=MEASURED, method=method, value_mj=gross_j * 1e3 / iterations,
                      net_value_mj=net_mj, avg_power_w=gross_j / window_s,
                      idle_power_w=self.idle_power_w, window_s=window_s, iterations=iterations,
                      rails={r: e / window_s for r, e in sorted(per_rail.items())})

    def mean_power_w(self) -> float | None:
        """Mean board power over the window (W), or ``None`` if unread."""
        per_rail = self.rail_energy_j()
        if any(r not in per_rail for r in self.board) or self.window_s <= 0:
            return None
        return sum(per_rail[r] for r in self.board) / self.window_s


# ------------------------------------------------------------------------------------ registry
#: Every sensor by name; the built-in modules import without their hardware libraries.
SENSORS: PluginRegistry[type[PowerSensor]] = PluginRegistry("sensor", base=PowerSensor, modules={
    "nvml": "device_agent.sensors.nvml",
    "jetson": "device_agent.sensors.jetson",
    "rapl": "device_agent.sensors.rapl",
    "none": "device_agent.sensors.none",
})
#: Class decorator: register a :class:`PowerSensor` subclass under a name.
register_sensor = SENSORS.register
#: Detection order: the first available one is used.
DETECTION_ORDER = ("nvml", "jetson", "rapl")


def sensor_classes() -> dict[str, type[PowerSensor]]:
    """Every sensor class that imports here, by name."""
    return SENSORS.loaded()
