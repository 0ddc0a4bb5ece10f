"""Power sensors: parsers on sysfs trees laid out like the real ones, counter arithmetic,
integration against analytic energy, NVML's answer on a machine without a driver."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from device_agent.core.result import MEASURED, UNAVAILABLE
from device_agent.sensors import (
    FLAG_SHORT_WINDOW,
    IdleBaseline,
    NoSensor,
    detect_sensor,
    list_sensors,
    trapezoid,
    wrapped_delta,
)
from device_agent.sensors.base import SensorError
from device_agent.sensors.jetson import (
    JetsonSensor,
    clock_state,
    find_channels,
    parse_nvpmodel_query,
    power_mode,
)
from device_agent.sensors.nvml import (
    INVALIDATING_MASK,
    NvmlSensor,
    decode_reasons,
    energy_delta_j,
    invalidating_flags,
    min_window_for,
    target_from_env,
)
from device_agent.sensors.rapl import RaplSensor


# ------------------------------------------------------------------------------- tree builders
def _write(path: Path, value: object) -> None:
    """Atomic write (sysfs reads never see a half-written value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def orin_nx_tree(root: Path, *, volts_mv=(5080, 5072, 5072), curr_ma=(1200, 400, 600)) -> Path:
    """JetPack 5/6 Orin NX / Orin Nano: ina3221 hwmon at 1-0040, labels as on the module."""
    drv = root / "sys/bus/i2c/drivers/ina3221"
    for f in ("bind", "unbind", "uevent"):
        _write(drv / f, "")
    hw = drv / "1-0040/hwmon/hwmon3"
    _write(hw / "name", "ina3221")
    for n, (label, v, i) in enumerate(zip(("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"), volts_mv,
                                          curr_ma), start=1):
        _write(hw / f"in{n}_label", label)
        _write(hw / f"in{n}_input", v)
        _write(hw / f"curr{n}_input", i)
        _write(hw / f"curr{n}_max", 32760)
        _write(hw / f"curr{n}_crit", 32760)
        _write(hw / f"in{n + 3}_input", 12)  # shunt voltage channels have no label
    _write(hw / "in7_label", "sum of shunt voltages")
    _write(hw / "in7_input", 36)
    _write(hw / "curr4_input", 2200)
    return hw


def agx_orin_tree(root: Path) -> None:
    """JetPack 5/6 AGX Orin: two ina3221 at 1-0040 and 1-0041, no module-input rail, NC channels."""
    drv = root / "sys/bus/i2c/drivers/ina3221"
    rails = {"1-0040": [("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 400),
                        ("VIN_SYS_5V0", 5000, 600)],
             "1-0041": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 200), ("NC", 0, 0)]}
    for k, (dev, chans) in enumerate(rails.items()):
        hw = drv / dev / f"hwmon/hwmon{k + 1}"
        _write(hw / "name", "ina3221")
        for n, (label, v, i) in enumerate(chans, start=1):
            _write(hw / f"in{n}_label", label)
            _write(hw / f"in{n}_input", v)
            _write(hw / f"curr{n}_input", i)


def nano_jp4_tree(root: Path, *, power_mw=(4000, 1000, 1500)) -> Path:
    """JetPack 4 Nano: ina3221x iio at 6-0040, rail_name_N + in_power/voltage/current."""
    iio = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    _write(iio / "name", "ina3221x")
    for n, (rail, p) in enumerate(zip(("POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"), power_mw)):
        _write(iio / f"rail_name_{n}", rail)
        _write(iio / f"in_power{n}_input", p)
        _write(iio / f"in_voltage{n}_input", 5000)
        _write(iio / f"in_current{n}_input", p // 5)
        _write(iio / f"crit_current_limit_{n}", 32760)
    return iio


def agx_xavier_jp4_tree(root: Path) -> None:
    """JetPack 4 AGX Xavier: two ina3221x (1-0040: GPU CPU SOC, 1-0041: CV VDDRQ SYS5V)."""
    drv = root / "sys/bus/i2c/drivers/ina3221x"
    for k, (dev, names) in enumerate({"1-0040": ("GPU", "CPU", "SOC"),
                                      "1-0041": ("CV", "VDDRQ", "SYS5V")}.items()):
        iio = drv / dev / f"iio:device{k}"
        for n, rail in enumerate(names):
            _write(iio / f"rail_name_{n}", rail)
            _write(iio / f"in_power{n}_input", 1000 * (n + 1))


def rapl_tree(root: Path, *, max_uj: int = 262_143_328_850) -> Path:
    """Powercap tree: two packages with nested core/dram domains, psys-free, plus mmio alias."""
    base = root / "sys/class/powercap"
    _write(base / "intel-rapl/enabled", 1)  # the control type: no energy_uj
    for pkg in (0, 1):
        top = base / f"intel-rapl:{pkg}"
        _write(top / "name", f"package-{pkg}")
        _write(top / "energy_uj", 0)
        _write(top / "max_energy_range_uj", max_uj)
        for sub, name in ((0, "core"), (2, "dram")):
            d = top / f"intel-rapl:{pkg}:{sub}"
            _write(d / "name", name)
            _write(d / "energy_uj", 0)
            _write(d / "max_energy_range_uj", max_uj)
    mmio = base / "intel-rapl-mmio:0"  # same package through MMIO: must not be added
    _write(mmio / "name", "package-0")
    _write(mmio / "energy_uj", 0)
    return base


class _Writer(threading.Thread):
    """Writes a time-varying value into sysfs files every ``period`` s until stopped."""

    def __init__(self, fn, period: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.fn, self.period = fn, period
        self.t0 = time.perf_counter()
        self.stop = threading.Event()
        fn(0.0)

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.fn(time.perf_counter() - self.t0)


# --------------------------------------------------------------------------- pure arithmetic
def test_trapezoid_and_wrapped_delta():
    assert trapezoid([0, 1, 3], [2.0, 4.0, 4.0]) == pytest.approx(3.0 + 8.0)
    assert trapezoid([0.0], [5.0]) == 0.0
    assert wrapped_delta(100.0, 350.0, 1000.0) == 250.0
    assert wrapped_delta(900.0, 50.0, 1000.0) == 150.0  # one wrap
    with pytest.raises(SensorError, match="backwards"):
        wrapped_delta(900.0, 50.0, None)


# ------------------------------------------------------------------------------------- NVML
def test_nvml_reports_no_driver_clearly():
    pynvml = pytest.importorskip("pynvml")
    ok, reason = NvmlSensor.availability()
    if ok:
        pytest.skip(f"NVML works on this machine: {reason}")
    assert "NVML" in reason
    assert ("Library Not Found" in reason or "Driver Not Loaded" in reason
            or "no NVIDIA driver" in reason), reason
    with pytest.raises(pynvml.NVMLError):
        NvmlSensor()
    assert list_sensors()["nvml"] == (False, reason)


def test_throttle_bits_match_pynvml_constants():
    pynvml = pytest.importorskip("pynvml")
    pairs = {"SwPowerCap": 0x4, "HwSlowdown": 0x8, "SwThermalSlowdown": 0x20,
             "HwThermalSlowdown": 0x40, "HwPowerBrakeSlowdown": 0x80}
    for name, bit in pairs.items():
        const = getattr(pynvml, f"nvmlClocksEventReason{name}",
                        getattr(pynvml, f"nvmlClocksThrottleReason{name}", None))
        assert const == bit, name
        assert INVALIDATING_MASK & bit
    assert not INVALIDATING_MASK & pynvml.nvmlClocksEventReasonGpuIdle
    mask = pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonSwPowerCap | 0x40
    assert decode_reasons(mask) == ["GpuIdle", "SwPowerCap", "HwThermalSlowdown"]
    assert invalidating_flags(mask) == ["throttled:SwPowerCap", "throttled:HwThermalSlowdown"]
    assert invalidating_flags(0x1 | 0x2 | 0x10) == []
    assert decode_reasons(0x4000_0000) == ["0x40000000"]


def test_nvml_counter_delta_and_window_rule():
    assert energy_delta_j(1_000, 3_500) == pytest.approx(2.5)
    with pytest.raises(SensorError, match="backwards"):
        energy_delta_j(5_000, 4_000)
    assert min_window_for("NVIDIA H100 80GB HBM3") == (5.0, 32)
    assert min_window_for("NVIDIA A100-SXM4-40GB") == (5.0, 32)
    assert min_window_for("NVIDIA H200") == (5.0, 32)
    assert min_window_for("NVIDIA A10") == (1.0, 1)
    assert min_window_for("NVIDIA GeForce RTX 4090") == (1.0, 1)


def test_nvml_target_follows_cuda_visible_devices():
    assert target_from_env(None) == (0, None)
    assert target_from_env("") == (0, None)
    assert target_from_env("2,3") == (2, None)
    uuid = "GPU-5a1b2c3d-0000-1111-2222-333344445555"
    assert target_from_env(f"{uuid},1") == (0, uuid)
    with pytest.raises(SensorError, match="MIG"):
        target_from_env("MIG-5a1b2c3d-0000-1111-2222-333344445555")
    with pytest.raises(SensorError, match="cannot map"):
        target_from_env("gpu0")


# ----------------------------------------------------------------------------------- Jetson
def test_jetson_hwmon_orin_nx_parse(tmp_path):
    orin_nx_tree(tmp_path)
    chans = find_channels(str(tmp_path))
    assert sorted(chans) == ["VDD_CPU_GPU_CV", "VDD_IN", "VDD_SOC"]  # in7 "sum of shunt" skipped
    s = JetsonSensor(root=str(tmp_path))
    assert s.layout == "hwmon" and s.board_rails() == ["VDD_IN"]
    power = s.read()
    assert power["VDD_IN"] == pytest.approx(5.080 * 1.200)
    assert power["VDD_SOC"] == pytest.approx(5.072 * 0.600)
    ok, reason = JetsonSensor.availability(root=str(tmp_path))
    assert ok and "hwmon" in reason and "VDD_IN" in reason


def test_jetson_hwmon_agx_orin_sums_connected_rails(tmp_path):
    agx_orin_tree(tmp_path)
    s = JetsonSensor(root=str(tmp_path))
    assert s.rails() == ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]  # no NC
    assert s.board_rails() == s.rails()  # no module-input rail on AGX Orin
    assert sum(s.read().values()) == pytest.approx(5.0 * (1.0 + 0.4 + 0.6 + 0.2))


def test_jetson_iio_jp4_parse(tmp_path):
    nano_jp4_tree(tmp_path)
    s = JetsonSensor(root=str(tmp_path))
    assert s.layout == "iio" and s.board_rails() == ["POM_5V_IN"]
    assert s.read() == {"POM_5V_IN": 4.0, "POM_5V_GPU": 1.0, "POM_5V_CPU": 1.5}
    xav = tmp_path / "xavier"
    agx_xavier_jp4_tree(xav)
    sx = JetsonSensor(root=str(xav))
    assert sx.rails() == sorted(["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"])
    assert sum(sx.read().values()) == pytest.approx(2 * (1 + 2 + 3))


def test_jetson_constant_power_window_is_exact(tmp_path):
    orin_nx_tree(tmp_path, volts_mv=(5000, 5000, 5000), curr_ma=(1200, 400, 600))
    s = JetsonSensor(root=str(tmp_path), poll_hz=50)
    with s.window(idle_power_w=2.0, idle_method="test") as w:
        time.sleep(0.3)
    e = w.energy(30)
    assert e.status == MEASURED and e.iterations == 30
    assert len(w.samples) >= 5  # polled, not just the two edge samples
    assert e.avg_power_w == pytest.approx(6.0, rel=1e-9)
    assert e.value_mj == pytest.approx(6.0 * w.window_s * 1e3 / 30, rel=1e-9)
    assert e.net_value_mj == pytest.approx((6.0 - 2.0) * w.window_s * 1e3 / 30, rel=1e-9)
    assert e.rails == pytest.approx({"VDD_CPU_GPU_CV": 2.0, "VDD_IN": 6.0, "VDD_SOC": 3.0})
    assert "INA3221 hwmon VDD_IN" in e.method and "trapezoidal" in e.method
    assert w.flags == []


def test_jetson_ramp_integrates_to_analytic_energy(tmp_path):
    """VDD_IN current ramps while the window runs; compare with the integral of P(t)."""
    hw = orin_nx_tree(tmp_path)
    volts, i0, slope = 5.0, 1.0, 1.0  # P(t) = 5 V * (1 A + 1 A/s * t)

    def write(t: float) -> None:
        _write(hw / "in1_input", int(volts * 1e3))
        _write(hw / "curr1_input", round((i0 + slope * t) * 1e3, 3))

    writer = _Writer(write)
    writer.start()
    try:
        s = JetsonSensor(root=str(tmp_path), poll_hz=50)
        with s.window() as w:
            time.sleep(0.8)
    finally:
        writer.stop.set()
        writer.join()
    a, b = w.t_start - writer.t0, w.t_end - writer.t0
    analytic = volts * (i0 * (b - a) + slope * (b * b - a * a) / 2)
    e = w.energy(100)
    assert e.value_mj * 100 / 1e3 == pytest.approx(analytic, rel=0.03)


def test_jetson_iio_step_change(tmp_path):
    iio = nano_jp4_tree(tmp_path)
    s = JetsonSensor(root=str(tmp_path), poll_hz=100)
    with s.window() as w:
        time.sleep(0.3)
        t0 = time.perf_counter()
        _write(iio / "in_power0_input", 8000)
        t1 = time.perf_counter()  # the step happened in [t0, t1] (long if this thread was preempted)
        time.sleep(0.3)
    got = w.energy(1).value_mj / 1e3
    board = [(t, v["POM_5V_IN"]) for t, v in w.samples if "POM_5V_IN" in v]
    assert len(board) >= 20  # it was polled, not just opened and closed
    assert {v for _, v in board} == {4.0, 8.0}
    last_old = max(t for t, v in board if v == 4.0)
    first_new = min(t for t, v in board if v == 8.0)
    # the samples see the step where it was written: old values until the write, new ones after
    # (a sample is stamped when its read starts; a read the scheduler interrupts may have started
    # well before the write)
    assert last_old < first_new
    assert last_old <= t1 and first_new >= t0 - 0.25
    assert all(v == 4.0 for t, v in board if t < last_old) and all(v == 8.0 for t, v in board if t > first_new)
    # the trapezoid over the samples: exact on both sides, the mean of 4 and 8 W across the step,
    # i.e. a step at the middle of the two samples that bracket it
    mid = (last_old + first_new) / 2
    assert got == pytest.approx(4.0 * (mid - w.t_start) + 8.0 * (w.t_end - mid), rel=1e-9)


def test_unreadable_board_rail_gives_unavailable_not_a_number(tmp_path):
    hw = orin_nx_tree(tmp_path)
    s = JetsonSensor(root=str(tmp_path))
    (hw / "curr1_input").unlink()  # e.g. the driver unbound after detection
    with s.window() as w:
        time.sleep(0.1)
    e = w.energy(10)
    assert e.status == UNAVAILABLE and e.value_mj is None
    assert "VDD_IN" in e.method and "FileNotFoundError" in e.method


def test_short_window_is_flagged(tmp_path):
    orin_nx_tree(tmp_path)
    s = JetsonSensor(root=str(tmp_path))
    s.min_window_s, s.min_iterations = 5.0, 32  # the NVML A100/H100 rule on a real sensor
    with s.window() as w:
        time.sleep(0.1)
    e = w.energy(10)
    assert e.status == MEASURED and FLAG_SHORT_WINDOW in w.flags
    assert "shorter than the sensor's minimum 5 s / 32 it" in e.method


def test_jetson_provenance_files(tmp_path):
    orin_nx_tree(tmp_path)
    assert parse_nvpmodel_query("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert parse_nvpmodel_query("NVPM WARN: x\nNV Power Mode: 15W\n2\n") == {"name": "15W", "id": 2}
    assert parse_nvpmodel_query("garbage") == {}
    _write(tmp_path / "var/lib/nvpmodel/status", "pmode:0002 fmode:quiet")
    assert power_mode(str(tmp_path)) == {"id": 2, "source": str(tmp_path / "var/lib/nvpmodel/status")}
    for pol, (lo, hi) in {"policy0": (1984000, 1984000), "policy4": (1984000, 1984000)}.items():
        _write(tmp_path / f"sys/devices/system/cpu/cpufreq/{pol}/scaling_min_freq", lo)
        _write(tmp_path / f"sys/devices/system/cpu/cpufreq/{pol}/scaling_max_freq", hi)
    gpu = tmp_path / "sys/class/devfreq/17000000.ga10b"
    _write(gpu / "min_freq", 306000000)
    _write(gpu / "max_freq", 918000000)
    st = clock_state(str(tmp_path))
    assert st["cpu_locked"] is True and st["gpu_locked"] is False and st["jetson_clocks"] == "off"
    _write(gpu / "min_freq", 918000000)
    assert clock_state(str(tmp_path))["jetson_clocks"] == "on"
    _write(tmp_path / "proc/device-tree/model", "NVIDIA Jetson Orin NX Engineering Reference "
                                                "Developer Kit\x00")
    snap = JetsonSensor(root=str(tmp_path)).snapshot()
    assert snap["model"].startswith("NVIDIA Jetson Orin NX") and snap["nvpmodel"]["id"] == 2


# ------------------------------------------------------------------------------------- RAPL
def test_rapl_domains_and_board_rails(tmp_path):
    rapl_tree(tmp_path)
    s = RaplSensor(root=str(tmp_path))
    assert s.rails() == ["package-0", "package-0/core", "package-0/dram",
                         "package-1", "package-1/core", "package-1/dram"]
    assert s.board_rails() == ["package-0", "package-1"]  # nested domains are not added
    assert s.counter_range("package-0") == pytest.approx(262_143.328850)
    ok, reason = RaplSensor.availability(root=str(tmp_path))
    assert ok and "package-0" in reason


def test_rapl_counter_with_wraps_matches_analytic(tmp_path):
    max_uj = 3_000_000  # 3 J range at 10 W: wraps every 0.3 s, several times in the window
    base = rapl_tree(tmp_path, max_uj=max_uj)
    p_pkg, p_core = 10.0, 4.0

    def write(t: float) -> None:
        for pkg in (0, 1):
            top = base / f"intel-rapl:{pkg}"
            _write(top / "energy_uj", int(p_pkg * t * 1e6) % max_uj)
            _write(top / f"intel-rapl:{pkg}:0/energy_uj", int(p_core * t * 1e6) % max_uj)

    writer = _Writer(write, period=0.002)
    writer.start()
    try:
        s = RaplSensor(root=str(tmp_path))
        with s.window(idle_power_w=5.0) as w:
            time.sleep(1.0)
    finally:
        writer.stop.set()
        writer.join()
    e = w.energy(50)
    expected_j = 2 * p_pkg * w.window_s  # two packages, cores not added
    assert e.status == MEASURED
    assert e.value_mj * 50 / 1e3 == pytest.approx(expected_j, rel=0.03)
    assert e.avg_power_w == pytest.approx(20.0, rel=0.03)
    assert e.rails["package-0/core"] == pytest.approx(4.0, rel=0.05)
    assert e.net_value_mj == pytest.approx((expected_j - 5.0 * w.window_s) * 1e3 / 50, rel=0.05)
    assert "energy_uj counter delta" in e.method


def test_rapl_unavailable_reasons(tmp_path):
    ok, reason = RaplSensor.availability(root=str(tmp_path))
    assert not ok and "powercap does not exist" in reason
    base = rapl_tree(tmp_path)
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions cannot deny the read")
    (base / "intel-rapl:0/energy_uj").chmod(0)
    ok, reason = RaplSensor.availability(root=str(tmp_path))
    assert not ok and "permission denied" in reason and "root" in reason


# ---------------------------------------------------------------------- registry, none, idle
def test_detect_sensor_falls_back_to_none_with_reasons(tmp_path):
    sensor = detect_sensor(root=str(tmp_path))
    if not isinstance(sensor, NoSensor):
        pytest.skip(f"a real sensor exists here: {sensor.name}")
    assert set(sensor.reasons) == {"nvml", "jetson", "rapl"}
    with sensor.window() as w:
        time.sleep(0.01)
    e = w.energy(5)
    assert e.status == UNAVAILABLE and e.value_mj is None and e.avg_power_w is None
    assert e.method.startswith("no power sensor: ") and "jetson:" in e.method
    assert w.window_s > 0


def test_detect_sensor_finds_jetson_tree(tmp_path):
    orin_nx_tree(tmp_path)
    if NvmlSensor.availability()[0]:
        pytest.skip("NVML present: it comes first in detection order")
    sensor = detect_sensor(root=str(tmp_path))
    assert isinstance(sensor, JetsonSensor)
    assert isinstance(detect_sensor("rapl", root=str(tmp_path)), NoSensor)
    assert detect_sensor("none").window is not None
    with pytest.raises(ValueError, match="unknown power sensor"):
        detect_sensor("bogus")
    listed = list_sensors(root=str(tmp_path))
    assert listed["jetson"][0] and not listed["rapl"][0] and listed["none"][0]


def test_idle_baseline_cache_and_refresh(tmp_path):
    orin_nx_tree(tmp_path, volts_mv=(5000, 5000, 5000), curr_ma=(500, 100, 100))
    sensor = JetsonSensor(root=str(tmp_path))
    idle = IdleBaseline(sensor, duration_s=0.2, max_age_s=60)
    results = []
    threads = [threading.Thread(target=lambda: results.append(idle.get())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1  # one measurement shared by concurrent callers
    first = results[0]
    assert first.power_w == pytest.approx(2.5) and first.duration_s >= 0.2
    assert idle.get() is first  # cached
    idle.max_age_s = 0.0
    again = idle.get()
    assert again is not first and again.measured_at >= first.measured_at
    assert IdleBaseline(NoSensor(), duration_s=0.05).get() is None


def test_every_registered_sensor_answers_availability(tmp_path):
    from device_agent.sensors import sensor_classes

    listed = list_sensors(root=str(tmp_path))
    assert set(listed) == set(sensor_classes()) >= {"nvml", "jetson", "rapl", "none"}
    for name, (ok, reason) in listed.items():
        assert isinstance(ok, bool) and isinstance(reason, str) and reason, name
