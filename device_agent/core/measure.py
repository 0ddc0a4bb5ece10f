"""The timed loop, output check and energy pass of one job (docs/measurement.md, section
"One job, step by step": output check, latency, energy).

Runs in the job's child process on a prepared :class:`~device_agent.backends.base.Runner`:

1. ``make_inputs``: seeded random inputs (same seed for the check and the timing).
2. ``check_outputs``: one run compared with a fresh ONNX Runtime CPU session.
3. ``measure_latency``: warm-up by time, then iterate until ``min_iterations`` and
   ``min_duration_s`` are both reached (capped by ``max_duration_s``; early stop only when the
   median CI is tighter than ``target_precision``); re-measured once when CV is above
   ``cv_threshold``, then flagged ``unstable``.
4. ``measure_energy``: a separate window of >= 5 s and >= 32 iterations, only with a sensor.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agent.backends.base import Runner, TensorSpec
from device_agent.config import MeasureConfig
from device_agent.core.result import UNAVAILABLE, Energy, LatencyStats
from device_agent.core.stats import ci_tight_enough, summarize

HOST_METHOD = "host wall clock, time.perf_counter_ns around each synchronous run"
DEVICE_METHOD = "device timer reported by the runner per iteration ({backend})"
#: Tolerances of the output check, by obtained precision (docs/measurement.md, "One job, step by step", output check).
TOLERANCES = {"fp32": 1e-5, "fp16": 2e-2, "mixed": 2e-2, "int8": 1e-1}  # fp16: ~3 digits, compounded over layers
ENERGY_MIN_S, ENERGY_MIN_ITERS = 5.0, 32
HOST_BOUND_RATIO = 0.8
_CHECK_EVERY = 16  # iterations between early-stop checks (sorting is not free)


class OutputMismatch(Exception):
    """The runner's outputs differ from the reference beyond tolerance; ``details`` says how."""

    kind = "output_mismatch"

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def make_inputs(specs: list[TensorSpec], seed: int) -> dict[str, np.ndarray]:
    """Seeded random inputs: floats ~ N(0, 1), integers in [0, 10), booleans fair coins."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            arr = rng.standard_normal(s.shape)
        elif dt.kind in "iu":
            arr = rng.integers(0, 10, size=s.shape)
        elif dt.kind == "b":
            arr = rng.random(s.shape) < 0.5
        else:
            raise ValueError(f"input {s.name!r}: cannot generate dtype {s.dtype}")
        # a rank-0 draw can come back as a numpy scalar, which ONNX Runtime does not take
        out[s.name] = np.asarray(arr, dtype=dt)
    return out


def reference_outputs(model_path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a fresh single-threaded ONNX Runtime CPU session on ``inputs``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def compare_outputs(got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                    tol: float) -> dict[str, Any]:
    """Per-output comparison with ``atol = rtol = tol``; ``ok`` false on any mismatch."""
    per: dict[str, Any] = {}
    ok = set(got) == set(ref)
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            per[name] = {"ok": False, "reason": f"shape {None if g is None else g.shape} != {r.shape}"}
            ok = False
            continue
        gf, rf = g.astype(np.float64), r.astype(np.float64)
        diff = np.abs(gf - rf)
        finite = np.isfinite(diff)
        max_abs = float(diff[finite].max()) if finite.any() else 0.0
        close = bool(np.allclose(gf, rf, atol=tol, rtol=tol, equal_nan=True))
        per[name] = {"ok": close, "max_abs_diff": max_abs}
        ok = ok and close
    return {"ok": ok, "atol": tol, "rtol": tol, "outputs": per,
            "max_abs_diff": max((p.get("max_abs_diff", float("inf")) for p in per.values()),
                                default=0.0)}


def check_outputs(runner: Runner, model_path: str, inputs: dict[str, np.ndarray], *,
                  reference_model_path: str | None = None) -> dict[str, Any]:
    """Run once on the prepared ``inputs`` and compare with ONNX Runtime CPU (output check).

    ``reference_model_path`` defaults to ``model_path``. Raises :class:`OutputMismatch`.
    """
    runner.run()
    got = runner.outputs()
    ref = reference_outputs(reference_model_path or model_path, inputs)
    tol = TOLERANCES.get(runner.precision, 1e-3)
    res = compare_outputs(got, ref, tol)
    res["reference"] = "onnxruntime CPUExecutionProvider, fresh session, 1 thread"
    if not res["ok"]:
        raise OutputMismatch(f"outputs differ from ONNX Runtime CPU: max abs diff "
                             f"{res['max_abs_diff']:.3g} (atol=rtol={tol:g})", res)
    return res


@dataclass
class LoopResult:
    """Raw samples of one timed loop."""

    samples_ms: list[float]
    enqueue_ms: list[float] = field(default_factory=list)
    device_timed: bool = False
    duration_s: float = 0.0
    stop_reason: str = ""


def warm_up(runner: Runner, seconds: float) -> int:
    """Run for at least ``seconds`` (and at least once); returns the iteration count."""
    n, end = 0, time.perf_counter() + seconds
    while True:
        runner.timed_run()
        n += 1
        if time.perf_counter() >= end:
            return n


def timed_loop(runner: Runner, cfg: MeasureConfig) -> LoopResult:
    """One timed loop under the stop rules of ``cfg`` (no warm-up)."""
    samples: list[float] = []
    enqueue: list[float] = []
    device_timed = False
    clock = time.perf_counter_ns
    start = clock()
    min_ns, max_ns = cfg.min_duration_s * 1e9, cfg.max_duration_s * 1e9
    reason = ""
    while True:
        t0 = clock()
        dev = runner.timed_run()
        t1 = clock()
        if dev is None:
            samples.append((t1 - t0) / 1e6)
        else:
            device_timed = True
            samples.append(float(dev))
            if runner.last_enqueue_ms is not None:
                enqueue.append(float(runner.last_enqueue_ms))
        n, elapsed = len(samples), t1 - start
        if elapsed >= max_ns:
            reason = "max_duration_s"
            break
        if n >= cfg.min_iterations:
            if elapsed >= min_ns:
                reason = "min_iterations and min_duration_s reached"
                break
            if (cfg.target_precision > 0 and n % _CHECK_EVERY == 0
                    and ci_tight_enough(samples, cfg.target_precision)):
                reason = "median CI within target_precision"
                break
    return LoopResult(samples, enqueue, device_timed, (clock() - start) / 1e9, reason)


def _stats(loop: LoopResult, backend: str) -> LatencyStats:
    method = DEVICE_METHOD.format(backend=backend) if loop.device_timed else HOST_METHOD
    return summarize(loop.samples_ms, method=method)


def measure_latency(runner: Runner, cfg: MeasureConfig, *,
                    backend: str = "") -> tuple[LatencyStats, list[str], dict[str, Any]]:
    """Warm-up, timed loop, CV re-measure. Returns ``(stats, flags, info)``."""
    info: dict[str, Any] = {"warmup_iterations": warm_up(runner, cfg.warmup_s)}
    loop = timed_loop(runner, cfg)
    stats = _stats(loop, backend)
    flags: list[str] = []
    if stats.cv > cfg.cv_threshold:
        info["first_pass"] = {"cv": stats.cv, "median": stats.median, "count": stats.count}
        loop = timed_loop(runner, cfg)  # trtexec: measure again before flagging
        stats = _stats(loop, backend)
        if stats.cv > cfg.cv_threshold:
            flags.append("unstable")
    if loop.device_timed and loop.enqueue_ms:
        enq = float(np.median(loop.enqueue_ms))
        info["host_enqueue_median_ms"] = enq
        if enq > HOST_BOUND_RATIO * stats.median:
            flags.append("host_bound")
    info.update(duration_s=loop.duration_s, stop_reason=loop.stop_reason)
    return stats, flags, info


def measure_energy(runner: Runner, cfg: MeasureConfig, *, idle_power_w: float | None = None,
                   idle_method: str = "") -> tuple[Energy, list[str]]:
    """Energy per inference from the device's power sensor in a separate window (docs/measurement.md, "The energy window").

    Returns ``(energy, flags)`` (flags from the window, e.g. throttling). Without a sensor the
    energy is ``unavailable`` and no window is run: energy is never invented.
    """
    if not cfg.energy:
        return Energy(status=UNAVAILABLE, method="energy not requested (MeasureConfig.energy=False)"), []
    try:
        from device_agent.sensors import detect_sensor
    except ImportError:
        return Energy(status=UNAVAILABLE, method="no power sensor on this device"), []
    sensor = detect_sensor()
    try:
        if sensor is None or sensor.name == "none":
            method = sensor.method() if sensor is not None else "no power sensor on this device"
            return Energy(status=UNAVAILABLE, method=method), []
        min_s = max(ENERGY_MIN_S, cfg.min_duration_s, sensor.min_window_s)
        min_n = max(ENERGY_MIN_ITERS, sensor.min_iterations)
        n = 0
        with sensor.window(idle_power_w=idle_power_w, idle_method=idle_method) as window:
            end = time.perf_counter() + min_s
            while n < min_n or time.perf_counter() < end:
                runner.run()
                n += 1
        return window.energy(n), list(window.flags)
    finally:
        if sensor is not None:
            sensor.close()
