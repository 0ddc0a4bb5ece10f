"""Where a measurement was taken: host, CPU, OS, runtime versions, power/thermal state.

Every field is read from the machine (``/proc``, ``/sys``, package metadata, ``nvpmodel -q``);
what cannot be read is left out rather than guessed. Stored with every result (docs/measurement.md, "What ran here, and what did not").
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from typing import Any

from device_agent.config import BuildConfig

_VERSION_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt", "torch")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_versions() -> dict[str, str]:
    """Installed versions of the runtime packages that affect a measurement."""
    out: dict[str, str] = {}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_governors() -> dict[str, int]:
    """CPU frequency governor -> number of CPUs using it (empty where not readable)."""
    out: dict[str, int] = {}
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"):
        gov = _read(path)
        if gov:
            out[gov] = out.get(gov, 0) + 1
    return out


def temperatures() -> dict[str, float]:
    """Thermal zone (type or name) -> °C, from ``/sys/class/thermal`` where readable."""
    out: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(os.path.join(zone, "temp"))
        if raw is None:
            continue
        try:
            milli = int(raw)
        except ValueError:
            continue
        name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
        out[f"{name}:{os.path.basename(zone)}"] = milli / 1000.0
    return out


@lru_cache(maxsize=1)
def nvpmodel_mode() -> str | None:
    """Jetson power mode from ``nvpmodel -q`` (e.g. ``MAXN``), or None where absent."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"NV Power Mode:\s*(\S+)", out)
    return m.group(1) if m else (out.strip().splitlines() or [None])[0]


def default_device_key(build: BuildConfig | None = None, *, root: str = "/") -> str:
    """This machine's key for jobs built with ``build`` (``device_agent.core.devicekey``):
    ``<accelerator>-<runtime>-<precision>[-<power mode>]``, or ``cpu-<cpu model>-ort[-<mode>]``."""
    from device_agent.core.devicekey import accelerator, device_key, power_mode

    return device_key(cpu=cpu_model(), accel=accelerator(root), build=build or BuildConfig(),
                      versions=package_versions(),
                      mode=power_mode(root, nvpmodel=nvpmodel_mode() if root == "/" else None))


def collect_provenance(build: BuildConfig | None = None, *,
                       device_key: str | None = None) -> dict[str, Any]:
    """The provenance record of a measurement taken now with ``build``."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    prov: dict[str, Any] = {
        "device_key": device_key or default_device_key(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity": affinity,
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "cpu_governors": cpu_governors(),
        "temperatures_c": temperatures(),
    }
    try:
        import psutil

        prov["cpu_count_physical"] = psutil.cpu_count(logical=False)
        prov["memory_total_mb"] = psutil.virtual_memory().total / 2**20
    except ImportError:
        pass
    try:
        prov["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    mode = nvpmodel_mode()
    if mode:
        prov["nvpmodel"] = mode
    from device_agent.core.devicekey import describe_accelerator

    prov.update(describe_accelerator())  # Jetson module / GPU name, driver, L4T release
    if build is not None:
        prov["build"] = build.to_dict()
        if build.backend == "onnxruntime":
            from device_agent.backends.onnxruntime_backend import default_threads

            prov["intra_op_num_threads"] = (build.intra_op_threads if build.intra_op_threads > 0
                                            else default_threads())
    return prov
