"""NVIDIA Jetson on-module INA3221 power monitors, both sysfs layouts.

JetPack 5/6 (L4T r35/r36, mainline ``ina3221`` hwmon driver)::

    /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon<k>/in<N>_label    rail name ("VDD_IN")
    /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon<k>/in<N>_input    bus voltage, mV
    /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon<k>/curr<N>_input  current, mA
    -> P = V x I. Channels labelled "NC" (not connected) and the "sum of shunt voltages"
       channel (in7) are skipped.

JetPack 4 (L4T r32, NVIDIA ``ina3221x`` iio driver)::

    /sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_<N>      rail name ("POM_5V_IN")
    /sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power<N>_input  power, mW
    (also in_voltage<N>_input mV and in_current<N>_input mA, used when power is absent)

Rail names per module (from NVIDIA's L4T power guides): Orin NX / Orin Nano and Xavier NX:
``VDD_IN`` (module input), ``VDD_CPU_GPU_CV``, ``VDD_SOC``. Nano (JP4): ``POM_5V_IN`` (input),
``POM_5V_GPU``, ``POM_5V_CPU``. TX2: ``VDD_IN``, ``VDD_SYS_CPU``, ``VDD_SYS_GPU``, ``VDD_SYS_SOC``,
``VDD_SYS_DDR``, ``VDD_4V0_WIFI``. AGX Orin: ``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``,
``VDDQ_VDD2_1V8AO``; AGX Xavier: ``GPU``, ``CPU``, ``SOC``, ``CV``, ``VDDRQ``, ``SYS5V``. The
fitness ("board") energy uses the module input rail (``VDD_IN`` or ``POM_5V_IN``); the AGX
modules have none, so their board energy is the sum of all connected rails (as jtop does).
Every rail is recorded. The sensors cover the module, not the carrier board.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from device_agent.sensors.base import PowerSensor, SensorError, register_sensor

HWMON_DRIVER = "sys/bus/i2c/drivers/ina3221"
IIO_DRIVER = "sys/bus/i2c/drivers/ina3221x"
#: Module input rails, in order of preference.
BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_SKIP_LABELS = ("NC", "sum of shunt voltages")


@dataclass(frozen=True)
class Channel:
    """One INA3221 channel: rail name and the files that give its power."""

    rail: str
    layout: str  # "hwmon" (JetPack 5/6) or "iio" (JetPack 4)
    device: str  # i2c device, e.g. "1-0040"
    volt_mv: Path | None = None
    curr_ma: Path | None = None
    power_mw: Path | None = None

    def read_w(self) -> float:
        """Instant power in watts."""
        if self.power_mw is not None:
            return _read_number(self.power_mw) / 1e3
        if self.volt_mv is None or self.curr_ma is None:
            raise SensorError(f"{self.rail}: no power, voltage or current file")
        return _read_number(self.volt_mv) * _read_number(self.curr_ma) / 1e6


def _read_number(path: Path) -> float:
    text = path.read_text().strip()
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        raise SensorError(f"unreadable value {text!r} in {path}") from None


def _rails(root: Path, driver: str, folders: str, labels: str,
           pattern: str) -> Iterator[tuple[str, Path, str, str]]:
    """``(device name, folder, channel number, rail)`` of every labelled channel of ``driver``:
    ``folders`` globs the channel folders below each device, ``labels`` the label files in them,
    ``pattern`` (one group: the channel number) matches a label file's name."""
    for dev in sorted(Path(root, driver).glob("*")):
        for folder in sorted(dev.glob(folders)):
            for label in sorted(folder.glob(labels)):
                m = re.fullmatch(pattern, label.name)
                if not m:
                    continue
                rail = label.read_text().strip()
                if rail not in _SKIP_LABELS:
                    yield dev.name, folder, m.group(1), rail


def _hwmon_channels(root: Path) -> list[Channel]:
    out: list[Channel] = []
    for dev, hw, n, rail in _rails(root, HWMON_DRIVER, "hwmon/hwmon*", "in*_label", r"in(\d+)_label"):
        if rail.lower().startswith("sum of"):
            continue
        volt, curr = hw / f"in{n}_input", hw / f"curr{n}_input"
        if volt.exists() and curr.exists():
            out.append(Channel(rail, "hwmon", dev, volt_mv=volt, curr_ma=curr))
    return out


def _iio_channels(root: Path) -> list[Channel]:
    out: list[Channel] = []
    for dev, iio, n, rail in _rails(root, IIO_DRIVER, "iio:device*", "rail_name_*", r"rail_name_(\d+)"):
        power = iio / f"in_power{n}_input"
        volt, curr = iio / f"in_voltage{n}_input", iio / f"in_current{n}_input"
        if power.exists():
            out.append(Channel(rail, "iio", dev, power_mw=power))
        elif volt.exists() and curr.exists():
            out.append(Channel(rail, "iio", dev, volt_mv=volt, curr_ma=curr))
    return out


def find_channels(root: str = "/") -> dict[str, Channel]:
    """All INA3221 rails under ``root`` (hwmon layout first, then iio), by unique rail name."""
    base = Path(root)
    channels = _hwmon_channels(base) or _iio_channels(base)
    if not channels:
        raise SensorError(f"no INA3221 rails under {base / HWMON_DRIVER} (JetPack 5/6) or "
                          f"{base / IIO_DRIVER} (JetPack 4): not a Jetson")
    out: dict[str, Channel] = {}
    for ch in channels:
        key = ch.rail if ch.rail not in out else f"{ch.rail}@{ch.device}"
        out[key] = ch
    return out


def parse_nvpmodel_query(text: str) -> dict[str, Any]:
    """Parse ``nvpmodel -q`` output ("NV Power Mode: MAXN" then the mode id)."""
    out: dict[str, Any] = {}
    m = re.search(r"NV Power Mode:\s*(\S.*?)\s*$", text, re.M)
    if m:
        out["name"] = m.group(1)
        rest = text[m.end():].split()
        if rest and rest[0].isdigit():
            out["id"] = int(rest[0])
    return out


def power_mode(root: str = "/") -> dict[str, Any]:
    """nvpmodel mode: ``nvpmodel -q`` when it is on PATH (and root is ``/``), else its status file."""
    if root == "/" and shutil.which("nvpmodel"):
        try:
            proc = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            parsed = parse_nvpmodel_query(proc.stdout)
            if parsed:
                return {**parsed, "source": "nvpmodel -q"}
        except (OSError, subprocess.SubprocessError):
            pass
    status = Path(root, "var/lib/nvpmodel/status")
    try:
        m = re.search(r"pmode:(\d+)", status.read_text())
    except OSError:
        m = None
    if m:
        return {"id": int(m.group(1)), "source": str(status)}
    return {"source": "unavailable"}


def clock_state(root: str = "/") -> dict[str, Any]:
    """Whether CPU and GPU clocks are pinned (min == max), as ``jetson_clocks`` leaves them."""
    base = Path(root)
    cpus: dict[str, tuple[int, int]] = {}
    for pol in sorted(base.glob("sys/devices/system/cpu/cpufreq/policy*")):
        try:
            cpus[pol.name] = (int(_read_number(pol / "scaling_min_freq")),
                              int(_read_number(pol / "scaling_max_freq")))
        except (OSError, SensorError):
            continue
    gpus: dict[str, tuple[int, int]] = {}
    for dev in sorted(base.glob("sys/class/devfreq/*")):
        if not re.search(r"gpu|ga10b|gv11b|gp10b|gb10b", dev.name):
            continue
        try:
            gpus[dev.name] = (int(_read_number(dev / "min_freq")),
                              int(_read_number(dev / "max_freq")))
        except (OSError, SensorError):
            continue
    cpu_locked = all(a == b for a, b in cpus.values()) if cpus else None
    gpu_locked = all(a == b for a, b in gpus.values()) if gpus else None
    if cpu_locked is None and gpu_locked is None:
        state = "unknown"
    else:
        state = "on" if cpu_locked is not False and gpu_locked is not False else "off"
    return {"jetson_clocks": state, "cpu_locked": cpu_locked, "gpu_locked": gpu_locked,
            "cpu_min_max_khz": cpus, "gpu_min_max_hz": gpus,
            "method": "min == max frequency in cpufreq / devfreq sysfs"}


@register_sensor("jetson")
class JetsonSensor(PowerSensor):
    """INA3221 rails polled at ``poll_hz`` and integrated with the trapezoid rule."""

    poll_hz = 20.0

    def __init__(self, *, root: str = "/", poll_hz: float = 20.0,
                 board_rail: str | None = None) -> None:
        if poll_hz < 10:
            raise ValueError("poll_hz must be >= 10 (MEASUREMENT.md section 5)")
        self.root = root
        self.poll_hz = poll_hz
        self._channels = find_channels(root)
        if board_rail is not None and board_rail not in self._channels:
            raise ValueError(f"board rail {board_rail!r} not among {sorted(self._channels)}")
        self._board = board_rail

    @classmethod
    def availability(cls, *, root: str = "/") -> tuple[bool, str]:
        try:
            channels = find_channels(root)
        except (SensorError, OSError) as exc:
            return False, str(exc)
        layout = next(iter(channels.values())).layout
        return True, f"INA3221 ({layout}) rails {sorted(channels)}"

    @property
    def layout(self) -> str:
        """``hwmon`` (JetPack 5/6) or ``iio`` (JetPack 4)."""
        return next(iter(self._channels.values())).layout

    def rails(self) -> list[str]:
        return sorted(self._channels)

    def board_rails(self) -> list[str]:
        if self._board:
            return [self._board]
        for rail in BOARD_INPUT_RAILS:
            if rail in self._channels:
                return [rail]
        return self.rails()

    def read(self) -> dict[str, float]:
        return {name: ch.read_w() for name, ch in self._channels.items()}

    def method(self) -> str:
        unit = "V x I (mV, mA)" if self.layout == "hwmon" else "in_power (mW)"
        return (f"INA3221 {self.layout} {'+'.join(self.board_rails())} power {unit} polled at "
                f"{self.poll_hz:g} Hz, trapezoidal integration")

    def snapshot(self) -> dict[str, Any]:
        base = Path(self.root)
        info: dict[str, Any] = {"sensor": self.name, "layout": self.layout,
                                "rails": self.rails(), "board_rails": self.board_rails()}
        for key, rel in (("model", "proc/device-tree/model"), ("l4t", "etc/nv_tegra_release")):
            try:
                info[key] = (base / rel).read_text().replace("\x00", "").splitlines()[0].strip()
            except (OSError, IndexError):
                info[key] = None
        info["nvpmodel"] = power_mode(self.root)
        info["clocks"] = clock_state(self.root)
        return info
