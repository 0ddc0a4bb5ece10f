"""Intel/AMD RAPL energy counters through the Linux powercap sysfs tree.

Layout (``root`` defaults to ``/``)::

    /sys/class/powercap/intel-rapl:0/name                 "package-0"
    /sys/class/powercap/intel-rapl:0/energy_uj            cumulative energy, microjoules
    /sys/class/powercap/intel-rapl:0/max_energy_range_uj  value at which energy_uj wraps to 0
    /sys/class/powercap/intel-rapl:0/intel-rapl:0:0/...   nested domains (core, uncore, dram)
    /sys/class/powercap/intel-rapl:1/name                 "package-1" (or "psys" on laptops)

Only top-level ``package-*`` domains are summed for the board energy: nested domains
(``intel-rapl:0:0`` ...) are contained in their package and ``psys`` contains the packages, so
adding them would count energy twice. They are still recorded as rails. Since Linux 5.10
``energy_uj`` is readable by root only; that case is reported unavailable with the reason.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from device_agent.sensors.base import PowerSensor, SensorError, register_sensor, wrapped_delta

POWERCAP = "sys/class/powercap"
_TOP = re.compile(r"^intel-rapl:(\d+)$")
_SUB = re.compile(r"^intel-rapl:(\d+):(\d+)$")


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def find_domains(root: str | os.PathLike[str] = "/") -> dict[str, dict[str, object]]:
    """Every RAPL domain under ``root``: rail name -> {path, top, max_range_uj, zone}.

    Rail names are ``name`` file contents, made unique (``package-0``, ``package-0/core``...).
    Raises ``SensorError`` with the reason when no readable domain exists.
    """
    base = Path(root, POWERCAP)
    if not base.is_dir():
        raise SensorError(f"{base} does not exist (no powercap/RAPL driver)")
    zones: list[tuple[Path, bool, str]] = []
    for entry in sorted(base.iterdir()):
        if _TOP.match(entry.name):
            zones.append((entry, True, entry.name))
            for sub in sorted(entry.iterdir()):
                if _SUB.match(sub.name) and sub.is_dir():
                    zones.append((sub, False, sub.name))
    if not zones:
        raise SensorError(f"no intel-rapl:* domain under {base}")
    out: dict[str, dict[str, object]] = {}
    parent_names: dict[str, str] = {}
    for path, top, zone in zones:
        try:
            name = (path / "name").read_text().strip() or zone
        except OSError:
            name = zone
        if top:
            parent_names[zone] = name
        else:
            parent = zone.rsplit(":", 1)[0]
            name = f"{parent_names.get(parent, parent)}/{name}"
        if name in out:
            name = f"{name}@{zone}"
        energy = path / "energy_uj"
        if not energy.exists():
            continue
        try:
            _read_int(energy)
        except PermissionError:
            raise SensorError(f"permission denied reading {energy} (Linux >= 5.10 restricts "
                              "RAPL to root: run the agent as root or grant read access)") from None
        except (OSError, ValueError) as exc:
            raise SensorError(f"cannot read {energy}: {exc}") from None
        try:
            max_range = _read_int(path / "max_energy_range_uj")
        except (OSError, ValueError):
            max_range = None
        out[name] = {"path": energy, "top": top, "max_range_uj": max_range, "zone": zone}
    if not out:
        raise SensorError(f"no RAPL domain under {base} exposes energy_uj")
    return out


@register_sensor("rapl")
class RaplSensor(PowerSensor):
    """CPU package energy from RAPL counters (counter delta; wraps handled)."""

    has_energy_counter = True
    poll_hz = 10.0  # only to catch wraps and record per-poll deltas; the counter gives energy

    def __init__(self, *, root: str = "/") -> None:
        self.root = root
        self._domains = find_domains(root)

    @classmethod
    def availability(cls, *, root: str = "/") -> tuple[bool, str]:
        try:
            domains = find_domains(root)
        except SensorError as exc:
            return False, str(exc)
        packages = [n for n, d in domains.items() if d["top"] and n.startswith("package")]
        if not packages:
            return False, f"RAPL domains {sorted(domains)} include no top-level package"
        return True, f"RAPL packages {packages}"

    def rails(self) -> list[str]:
        return sorted(self._domains)

    def board_rails(self) -> list[str]:
        return sorted(n for n, d in self._domains.items() if d["top"] and n.startswith("package"))

    def read_energy(self) -> dict[str, float]:
        out = {}
        for name, dom in self._domains.items():
            out[name] = _read_int(dom["path"]) * 1e-6  # type: ignore[arg-type]
        return out

    def counter_range(self, rail: str) -> float | None:
        max_uj = self._domains[rail]["max_range_uj"]
        return None if max_uj is None else float(max_uj) * 1e-6  # type: ignore[arg-type]

    def read(self) -> dict[str, float]:
        """Mean power per domain over 100 ms (RAPL has no instant power reading)."""
        t0, e0 = time.perf_counter(), self.read_energy()
        time.sleep(0.1)
        t1, e1 = time.perf_counter(), self.read_energy()
        return {r: wrapped_delta(e0[r], e1[r], self.counter_range(r)) / (t1 - t0) for r in e0}

    def method(self) -> str:
        return ("RAPL powercap energy_uj counter delta (wrap via max_energy_range_uj), "
                "top-level packages only")

    def snapshot(self) -> dict[str, object]:
        gov = None
        try:
            gov = Path(self.root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
                       ).read_text().strip()
        except OSError:
            pass
        return {"sensor": self.name, "domains": {n: d["zone"] for n, d in self._domains.items()},
                "board_rails": self.board_rails(), "cpu_governor": gov}
