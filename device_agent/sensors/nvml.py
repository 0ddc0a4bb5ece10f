"""NVIDIA GPU energy through NVML (``pynvml`` from the ``nvidia-ml-py`` package, imported lazily).

Energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load, Volta and newer); the
window takes its delta. Instant power: field ``NVML_FI_DEV_POWER_INSTANT`` (mW) through
``nvmlDeviceGetFieldValues``; ``nvmlDeviceGetPowerUsage`` is a 1 s average on Ampere and newer
and is never integrated. The counter updates about every 100 ms and A100/H100-class boards
sample only part of each period, so their windows must last >= 5 s and >= 32 iterations
(``min_window_s`` / ``min_iterations``); shorter windows are flagged ``energy_window_short``.
Clock event (throttle) reasons are polled during the window; SwPowerCap 0x4, HwSlowdown 0x8,
SwThermal 0x20, HwThermal 0x40 and PowerBrake 0x80 invalidate it (flags ``throttled:<name>``).
"""
from __future__ import annotations

import os
import re
from typing import Any

from device_agent.sensors.base import PowerSensor, SensorError, register_sensor

#: Clock event reason bits (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*).
REASON_BITS: dict[int, str] = {
    0x1: "GpuIdle", 0x2: "ApplicationsClocksSetting", 0x4: "SwPowerCap", 0x8: "HwSlowdown",
    0x10: "SyncBoost", 0x20: "SwThermalSlowdown", 0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown", 0x100: "DisplayClockSetting",
}
#: Reasons that invalidate a latency/energy window.
INVALIDATING_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
#: Boards whose energy counter samples only part of each ~100 ms period (5 s / 32 it rule).
_PARTIAL_SAMPLING = re.compile(r"\b(A100|A800|A30|H100|H800|H200|GH200|B100|B200|GB200)\b", re.I)
#: ``c_nvmlFieldValue_t.valueType`` -> union member.
_VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def decode_reasons(mask: int) -> list[str]:
    """Names of the clock event reason bits set in ``mask``."""
    names = [name for bit, name in sorted(REASON_BITS.items()) if mask & bit]
    unknown = mask & ~sum(REASON_BITS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def invalidating_flags(mask: int) -> list[str]:
    """Result flags (``throttled:<reason>``) for the reasons in ``mask`` that invalidate a window."""
    return [f"throttled:{name}" for name in decode_reasons(mask & INVALIDATING_MASK)]


def energy_delta_j(start_mj: int, end_mj: int) -> float:
    """Joules between two readings of the (64-bit, monotonic) NVML energy counter."""
    if end_mj < start_mj:
        raise SensorError(f"NVML energy counter went backwards ({start_mj} -> {end_mj} mJ): "
                          "driver reloaded or GPU reset during the window")
    return (end_mj - start_mj) / 1e3


def min_window_for(gpu_name: str) -> tuple[float, int]:
    """``(seconds, iterations)`` a window needs on this GPU for a trustworthy counter delta."""
    if _PARTIAL_SAMPLING.search(gpu_name):
        return 5.0, 32
    return 1.0, 1  # ~10 counter updates: <= 10 % quantisation at worst


def target_from_env(value: str | None) -> tuple[int, str | None]:
    """The GPU this process sees first, from ``CUDA_VISIBLE_DEVICES``: ``(index, uuid)``.

    A UUID (``GPU-...``) selects by UUID; an integer is taken as the NVML (PCI-order) index, as
    with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; unset or empty -> GPU 0. A MIG instance raises
    ``SensorError``: the energy counter belongs to the whole GPU, not the instance.
    """
    first = (value or "").split(",")[0].strip()
    if not first:
        return 0, None
    if first.startswith("MIG-"):
        raise SensorError(f"CUDA_VISIBLE_DEVICES selects MIG instance {first}: NVML energy is "
                          "per physical GPU and cannot be attributed to one instance")
    if first.startswith("GPU-"):
        return 0, first
    if first.isdigit():
        return int(first), None
    raise SensorError(f"cannot map CUDA_VISIBLE_DEVICES={value!r} to an NVML device")


def _import_pynvml() -> Any:
    import pynvml  # nvidia-ml-py; lazily, so the package imports without it

    return pynvml


def gpu_used_bytes(index: int = 0) -> int | None:
    """Device-wide used memory of GPU ``index`` (``nvmlDeviceGetMemoryInfo().used``), or None
    without NVML or a GPU. Device-wide: other processes' allocations are included."""
    try:
        nv = _import_pynvml()
        nv.nvmlInit()
    except Exception:  # noqa: BLE001 - no nvidia-ml-py, no driver
        return None
    try:
        return int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(index)).used)
    except Exception:  # noqa: BLE001
        return None
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _hint(exc: Exception) -> str:
    name = type(exc).__name__
    if "LibraryNotFound" in name:
        return "libnvidia-ml.so not found: no NVIDIA driver on this machine"
    if "DriverNotLoaded" in name:
        return "the NVIDIA kernel driver is not loaded"
    if "NoPermission" in name:
        return "no permission to query the GPU"
    return ""


@register_sensor("nvml")
class NvmlSensor(PowerSensor):
    """One NVIDIA GPU's energy counter, instant power, throttle reasons and provenance."""

    has_energy_counter = True
    poll_hz = 10.0

    def __init__(self, *, index: int | None = None, uuid: str | None = None) -> None:
        if index is None and uuid is None:
            index, uuid = target_from_env(os.environ.get("CUDA_VISIBLE_DEVICES"))
        index = index or 0
        self._nv = _import_pynvml()
        self._nv.nvmlInit()
        self._open = True
        try:
            if uuid:
                self._handle = self._nv.nvmlDeviceGetHandleByUUID(uuid)
            else:
                count = self._nv.nvmlDeviceGetCount()
                if not 0 <= index < count:
                    raise SensorError(f"GPU index {index} out of range ({count} GPU(s))")
                self._handle = self._nv.nvmlDeviceGetHandleByIndex(index)
            self.gpu_name = str(self._nv.nvmlDeviceGetName(self._handle))
            self.gpu_uuid = str(self._nv.nvmlDeviceGetUUID(self._handle))
            try:
                self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            except self._nv.NVMLError as exc:
                raise SensorError(f"nvmlDeviceGetTotalEnergyConsumption on {self.gpu_name}: {exc} "
                                  "(the counter needs Volta or newer)") from None
        except BaseException:
            self.close()
            raise
        self.index = index
        self.min_window_s, self.min_iterations = min_window_for(self.gpu_name)
        self._reasons_seen = 0

    @classmethod
    def availability(cls, *, index: int | None = None) -> tuple[bool, str]:
        try:
            nv = _import_pynvml()
        except ImportError as exc:
            return False, f"pynvml not importable (pip install nvidia-ml-py): {exc}"
        try:
            sensor = cls(index=index)
        except nv.NVMLError as exc:
            hint = _hint(exc)
            return False, f"NVML: {exc}" + (f" ({hint})" if hint else "")
        except (SensorError, OSError) as exc:
            return False, str(exc)
        name = sensor.gpu_name
        sensor.close()
        return True, f"NVML energy counter on GPU {sensor.index} ({name}, {sensor.gpu_uuid})"

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._nv.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down twice or after a GPU loss
                pass

    # -- readings
    def rails(self) -> list[str]:
        return ["gpu"]

    def read_energy(self) -> dict[str, float]:
        return {"gpu": self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3}

    def read(self) -> dict[str, float]:
        """Instant board power from ``NVML_FI_DEV_POWER_INSTANT`` (mW -> W)."""
        nv = self._nv
        field = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is None:
            raise SensorError("this nvidia-ml-py has no NVML_FI_DEV_POWER_INSTANT")
        value = nv.nvmlDeviceGetFieldValues(self._handle, [field])[0]
        if value.nvmlReturn != nv.NVML_SUCCESS:
            raise SensorError(f"NVML_FI_DEV_POWER_INSTANT: {nv.NVMLError(value.nvmlReturn)}")
        member = _VALUE_MEMBER.get(int(value.valueType), "uiVal")
        return {"gpu": float(getattr(value.value, member)) / 1e3}

    def reasons_mask(self) -> int:
        """Current clock event (throttle) reasons bit mask."""
        nv = self._nv
        try:
            return int(nv.nvmlDeviceGetCurrentClocksEventReasons(self._handle))
        except (AttributeError, nv.NVMLError_FunctionNotFound):  # drivers before r535
            return int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(self._handle))

    def temperature_c(self) -> float | None:
        try:
            return float(self._nv.nvmlDeviceGetTemperature(self._handle,
                                                           self._nv.NVML_TEMPERATURE_GPU))
        except self._nv.NVMLError:
            return None

    def process_memory_mb(self, pid: int | None = None) -> float | None:
        """GPU memory used by process ``pid`` (default: this one) per NVML, in MiB."""
        pid = os.getpid() if pid is None else pid
        try:
            procs = self._nv.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nv.NVMLError:
            return None
        for proc in procs:
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory / 2**20
        return None

    def method(self) -> str:
        return (f"NVML nvmlDeviceGetTotalEnergyConsumption counter delta on {self.gpu_name} "
                f"(board power, minimum window {self.min_window_s:g} s / {self.min_iterations} it)")

    # -- window hooks
    def window_started(self, window: Any) -> None:
        self._reasons_seen = self._safe_reasons()
        window.provenance["temperature_before_c"] = self.temperature_c()

    def window_polled(self, window: Any) -> None:
        self._reasons_seen |= self._safe_reasons()

    def window_finished(self, window: Any) -> None:
        self._reasons_seen |= self._safe_reasons()
        window.provenance["temperature_after_c"] = self.temperature_c()
        window.provenance["clock_event_reasons"] = decode_reasons(self._reasons_seen)
        for flag in invalidating_flags(self._reasons_seen):
            if flag not in window.flags:
                window.flags.append(flag)

    def _safe_reasons(self) -> int:
        try:
            return self.reasons_mask()
        except self._nv.NVMLError:
            return 0

    def snapshot(self) -> dict[str, Any]:
        """Provenance: name, UUID, compute capability, driver, clocks, temperature, limits."""
        nv, h = self._nv, self._handle
        info: dict[str, Any] = {"sensor": self.name, "name": self.gpu_name, "uuid": self.gpu_uuid,
                                "index": self.index}
        probes: dict[str, Any] = {
            "compute_capability": lambda: "%d.%d" % nv.nvmlDeviceGetCudaComputeCapability(h),
            "driver": lambda: str(nv.nvmlSystemGetDriverVersion()),
            "cuda_driver": lambda: nv.nvmlSystemGetCudaDriverVersion(),
            "sm_clock_mhz": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
            "pstate": lambda: nv.nvmlDeviceGetPerformanceState(h),
            "temperature_c": self.temperature_c,
            "power_limit_w": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3,
            "clock_event_reasons": lambda: decode_reasons(self.reasons_mask()),
        }
        for key, probe in probes.items():
            try:
                info[key] = probe()
            except Exception as exc:  # noqa: BLE001 - each field is optional provenance
                info[key] = f"unavailable: {exc}"
        return info
