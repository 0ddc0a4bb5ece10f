"""A measurement job in a sandboxed child process: the agent stays up whatever the model does.

``run_job`` runs validation, build, output check, timed loop, optional per-layer profile and the
energy pass in a child started from a ``forkserver`` (numpy / onnxruntime preloaded, so start-up
is fast, and never ``fork`` of the threaded gRPC process) under a wall-clock timeout and an
``RLIMIT_DATA`` memory limit. Every outcome is a :class:`MeasureResult`: a timeout, crash, OOM
or cancellation becomes ``error_kind`` ``timeout`` / ``crash`` / ``oom`` / ``cancelled``.

Forkserver children import the caller's ``__main__`` module (as ``__mp_main__``), as with any
``spawn``/``forkserver`` start: the main module must keep its work under
``if __name__ == "__main__":`` and should keep heavy imports (torch) inside functions.

Test hooks: with ``HWNAS_TEST_HOOKS=1`` in the caller's environment, ``HWNAS_TEST_HOOK`` =
``hang`` | ``alloc`` | ``crash`` makes the child sleep, allocate until refused, or SIGSEGV itself
(to test the sandbox for real). Without ``HWNAS_TEST_HOOKS=1`` the hook is ignored.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import re
import resource
import signal
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from device_agent.compat import sha256_stream
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.core.result import COMPUTED, MEASURED, Energy, LatencyStats, MeasureResult, Metric
from device_agent.core.validate import DEFAULT_MAX_BYTES, DEFAULT_MAX_TENSOR_ELEMS
from device_agent.tables import answers_by_arch_key

PRELOAD = ["numpy", "onnx", "onnxruntime", "scipy.special", "device_agent.core.stats", "device_agent.core.jobs",
           "device_agent.core.measure", "device_agent.backends.onnxruntime_backend"]
PEAK_MEMORY_METHOD = "host RSS: peak RSS delta of the job process (ru_maxrss); not accelerator memory"
PROFILE_ITERATIONS = 20


def device_memory_metric(runner_info: dict[str, Any]) -> dict[str, Any] | None:
    """``device_peak_mb`` from a runner's ``info()["memory"]`` (None on a CPU): the measured
    CUDA (cudaMemGetInfo) or NVML delta where there is one, else TensorRT's computed
    ``device_memory_size`` plus I/O buffers."""
    mem = runner_info.get("memory") or {}
    mb = 2.0 ** 20
    for key in ("cuda_mem_delta_bytes", "nvml_used_delta_bytes"):
        if (mem.get(key) or 0) > 0:
            extra = (f"; engine device_memory_size {mem['activation_bytes'] / mb:.1f} MB"
                     if mem.get("activation_bytes") is not None else "")
            return Metric(mem[key] / mb, MEASURED, f"{mem.get('method', key)}{extra}", "MB").to_dict()
    if mem.get("activation_bytes") is not None:
        return Metric((mem["activation_bytes"] + mem.get("io_bytes", 0)) / mb, COMPUTED,
                      "TensorRT engine device_memory_size + I/O buffers (no measured delta)", "MB").to_dict()
    return None
_OOM_RE = re.compile(r"bad_alloc|failed to allocate|out of memory|cannot allocate|MemoryError|"
                     r"std::length_error|Unable to allocate", re.IGNORECASE)
_CTX_LOCK = threading.Lock()
_CTX: Any = None


class JobFailed(Exception):
    """A non-measurement job (``build_artifact``) failed; ``kind`` is an ``error_kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _context() -> Any:
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _CTX = ctx
        return _CTX


def file_sha256(path: str) -> str:
    """sha256 of the file at ``path`` ("" if unreadable)."""
    try:
        with open(path, "rb") as f:
            return sha256_stream(f)
    except OSError:
        return ""


def _test_hook() -> str | None:
    return os.environ.get("HWNAS_TEST_HOOK") if os.environ.get("HWNAS_TEST_HOOKS") == "1" else None


# ------------------------------------------------------------------------------------- child side
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _apply_hook(hook: str | None) -> None:
    if hook == "hang":
        time.sleep(3600)
    elif hook == "alloc":
        hog = []
        while True:
            hog.append(bytearray(64 * 2**20))
    elif hook == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)


def _classify(exc: BaseException, stage: str) -> str:
    from device_agent.backends.base import BackendError
    from device_agent.core.measure import OutputMismatch
    from device_agent.core.validate import InvalidModel

    if isinstance(exc, InvalidModel):
        return "invalid_model"
    if isinstance(exc, MemoryError) or _OOM_RE.search(f"{type(exc).__name__}: {exc}"):
        return "oom"
    if isinstance(exc, OutputMismatch):
        return "output_mismatch"
    if isinstance(exc, BackendError):
        return exc.kind
    return "build" if stage == "build" else "run"


def _measure_child(p: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """validate -> build -> prepare/run -> output check -> timed loop -> profile -> energy."""
    from device_agent.backends import get_backend
    from device_agent.core.measure import check_outputs, make_inputs, measure_energy, measure_latency
    from device_agent.core.provenance import collect_provenance, temperatures
    from device_agent.core.validate import validate_model

    build, cfg = BuildConfig.from_dict(p["build"]), MeasureConfig.from_dict(p["measure"])
    out: dict[str, Any] = {}
    state["stage"] = "validate"
    validate_model(p["model_path"], max_bytes=p["max_bytes"], max_tensor_elems=p["max_tensor_elems"])
    gc.collect()
    prov = collect_provenance(build, device_key=p["device_key"])
    state["stage"] = "build"
    with tempfile.TemporaryDirectory(prefix="hwnas-job-") as workdir:
        with get_backend(build.backend)().build(p["model_path"], build, workdir=workdir,
                                                batch_size=cfg.batch_size) as runner:
            state["stage"] = "run"
            inputs = make_inputs(runner.input_specs, cfg.seed)
            runner.prepare(inputs)
            runner.run()
            # Peak before the reference session of the output check exists: the model's own cost.
            out["peak_memory_mb"] = max(0.0, _maxrss_mb() - state["baseline_mb"])
            prov.update(runner=runner.info(), precision_obtained=runner.precision)
            if cfg.check_outputs:
                state["stage"] = "output_check"
                out["output_check"] = check_outputs(runner, p["model_path"], inputs,
                                                    reference_model_path=p.get("reference_model_path"))
            state["stage"] = "timing"
            stats, flags, info = measure_latency(runner, cfg, backend=build.backend)
            out.update(latency_ms=stats.to_dict(), flags=flags)
            prov["timing"] = info
            out["device_peak_mb"] = device_memory_metric(runner.info())  # after the timed loop
            if cfg.profile_layers:
                state["stage"] = "profile"
                out["layers"] = runner.profile(PROFILE_ITERATIONS)
            state["stage"] = "energy"
            energy, energy_flags = measure_energy(runner, cfg, idle_power_w=p.get("idle_power_w"),
                                                  idle_method=p.get("idle_method", ""))
            out["energy"] = energy.to_dict()
            out["flags"] = out["flags"] + [f for f in energy_flags if f not in out["flags"]]
    prov["temperatures_after_c"] = temperatures()
    out["provenance"] = prov
    return out


def _artifact_child(p: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    from device_agent.backends import get_backend
    from device_agent.core.provenance import collect_provenance
    from device_agent.core.validate import validate_model

    build = BuildConfig.from_dict(p["build"])
    state["stage"] = "validate"
    validate_model(p["model_path"], max_bytes=p["max_bytes"], max_tensor_elems=p["max_tensor_elems"])
    state["stage"] = "build"
    with tempfile.TemporaryDirectory(prefix="hwnas-artifact-") as workdir:
        with get_backend(build.backend)().build(p["model_path"], build, workdir=workdir,
                                                calibration=p.get("calibration_path")) as runner:
            blob = runner.serialize()
            prov = collect_provenance(build, device_key=p["device_key"])
            prov.update(runner=runner.info(), precision_obtained=runner.precision)
    if blob is None:
        raise JobFailed("unsupported", f"backend {build.backend!r} produces no deployable artifact")
    return {"artifact": blob, "provenance": prov}


def _child_main(conn: Connection, task: str, payload: dict[str, Any]) -> None:
    """Entry point of the job process: apply limits, run ``task``, send one reply."""
    state: dict[str, Any] = {"stage": "start", "baseline_mb": _maxrss_mb()}
    try:
        limit = payload["memory_limit_mb"] * 2**20
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        _apply_hook(payload.get("hook"))
        fn = _measure_child if task == "measure" else _artifact_child
        reply = {"ok": True, **fn(payload, state)}
    except BaseException as exc:  # noqa: BLE001 - everything becomes a reply
        kind = exc.kind if isinstance(exc, JobFailed) else _classify(exc, state["stage"])
        reply = {"ok": False, "error_kind": kind, "stage": state["stage"],
                 "error": f"{state['stage']}: {type(exc).__name__}: {exc}",
                 "details": getattr(exc, "details", None),
                 "traceback": traceback.format_exc(limit=5)[-2000:]}
    try:
        conn.send(reply)
    except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError pickling a huge reply
        conn.send({"ok": False, "error_kind": "run", "error": f"cannot send result: {exc!r}"})
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ parent side
def _run_child(task: str, payload: dict[str, Any], *, timeout_s: float,
               cancel: threading.Event | None) -> dict[str, Any]:
    try:
        ctx = _context()
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(send, task, payload), daemon=True,
                           name=f"hwnas-job-{payload.get('job_id', '')}")
        proc.start()
        send.close()
    except Exception as exc:  # noqa: BLE001 - e.g. out of processes / file descriptors
        return {"ok": False, "error_kind": "crash",
                "error": f"could not start the job process: {type(exc).__name__}: {exc}"}
    deadline = time.monotonic() + timeout_s
    reply: dict[str, Any] | None = None
    killed_by_us = ""
    try:
        while reply is None:
            if cancel is not None and cancel.is_set():
                killed_by_us = "cancelled"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                killed_by_us = "timeout"
                break
            ready = wait([recv, proc.sentinel], timeout=min(left, 0.05))
            if recv in ready:
                try:
                    reply = recv.recv()
                except (EOFError, OSError):  # the child closed the pipe without a reply
                    break
            elif proc.sentinel in ready and not recv.poll(0):  # died, nothing left to read
                break
    finally:
        if proc.is_alive() and (killed_by_us or reply is None):
            proc.kill()
        proc.join(5.0)
        recv.close()
    if reply is not None:
        return reply
    if killed_by_us == "cancelled":
        return {"ok": False, "error_kind": "cancelled", "error": "job cancelled; child killed"}
    if killed_by_us == "timeout":
        return {"ok": False, "error_kind": "timeout",
                "error": f"job exceeded its timeout of {timeout_s:g} s; child killed"}
    code = proc.exitcode
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        if -code == signal.SIGKILL:  # not sent by us: the kernel's OOM killer
            return {"ok": False, "error_kind": "oom",
                    "error": f"job process killed by {sig} (out of memory under a limit of "
                             f"{payload['memory_limit_mb']} MB?)"}
        return {"ok": False, "error_kind": "crash", "error": f"job process killed by signal {sig}"}
    return {"ok": False, "error_kind": "crash", "error": f"job process exited with code {code} "
                                                           "without a result"}


def run_job(model_path: str, build: BuildConfig, measure: MeasureConfig, *, job_id: str,
            device_key: str | None = None, arch_key: str | None = None,
            cancel: threading.Event | None = None, table: Any = None,
            reference_model_path: str | None = None, idle_power_w: float | None = None,
            idle_method: str = "", max_bytes: int = DEFAULT_MAX_BYTES,
            max_tensor_elems: int = DEFAULT_MAX_TENSOR_ELEMS) -> MeasureResult:
    """Measure the ONNX model at ``model_path`` on this device; never raises for a bad model.

    ``table`` (the agent's configured :class:`~device_agent.tables.TableSource`) answers jobs
    whose ``build.backend`` names a table look-up, in process, from ``arch_key``. ``reference_model_path`` overrides the output check's reference
    model (tests). ``idle_power_w`` (the agent's idle baseline, with ``idle_method``) gives the
    net energy where a power sensor exists. The result carries ``build``/``measure`` and the
    device's provenance.
    """
    if device_key is None:
        from device_agent.core.provenance import default_device_key

        device_key = default_device_key()
    sha = file_sha256(model_path) if model_path else ""
    base = dict(job_id=job_id, device_key=device_key, backend=build.backend, model_sha256=sha,
                build_config=build.to_dict(), measure_config=measure.to_dict())
    if answers_by_arch_key(build.backend):
        if table is None:
            return MeasureResult.failure(**base, error="no table configured on this agent",
                                         error_kind="unsupported")
        res = table.lookup(arch_key, job_id=job_id, device_key=device_key, model_sha256=sha,
                           build=build)
        res.measure_config = measure.to_dict()
        return res
    payload = dict(model_path=os.path.abspath(model_path), build=build.to_dict(),
                   measure=measure.to_dict(), job_id=job_id, device_key=device_key,
                   memory_limit_mb=measure.memory_limit_mb, max_bytes=max_bytes,
                   max_tensor_elems=max_tensor_elems, hook=_test_hook(),
                   reference_model_path=reference_model_path, idle_power_w=idle_power_w,
                   idle_method=idle_method)
    if cancel is not None and cancel.is_set():
        return MeasureResult.failure(**base, error="job cancelled before start", error_kind="cancelled")
    r = _run_child("measure", payload, timeout_s=measure.timeout_s, cancel=cancel)
    if not r["ok"]:
        return MeasureResult.failure(**base, error=r["error"], error_kind=r["error_kind"],
                                     output_check=r.get("details"))
    return MeasureResult(
        **base, latency_ms=LatencyStats(**r["latency_ms"]), flags=r["flags"],
        peak_memory_mb=Metric(r["peak_memory_mb"], MEASURED, PEAK_MEMORY_METHOD, "MB"),
        device_peak_mb=Metric(**r["device_peak_mb"]) if r.get("device_peak_mb") else None,
        energy=Energy(**r["energy"]), output_check=r.get("output_check"),
        layers=r.get("layers", []), provenance=r["provenance"])


def build_artifact(model_path: str, build: BuildConfig, *, job_id: str, timeout_s: float = 600.0,
                   device_key: str | None = None, memory_limit_mb: int = 8192,
                   calibration_path: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """Build the deployable artifact (ORT-optimized ONNX, TensorRT plan) in a child process.

    Returns ``(artifact bytes, provenance)``; raises :class:`JobFailed` with an ``error_kind``.
    """
    if device_key is None:
        from device_agent.core.provenance import default_device_key

        device_key = default_device_key()
    payload = dict(model_path=os.path.abspath(model_path), build=build.to_dict(), job_id=job_id,
                   device_key=device_key, memory_limit_mb=memory_limit_mb,
                   max_bytes=DEFAULT_MAX_BYTES, max_tensor_elems=DEFAULT_MAX_TENSOR_ELEMS,
                   hook=_test_hook(), calibration_path=calibration_path)
    r = _run_child("artifact", payload, timeout_s=timeout_s, cancel=None)
    if not r["ok"]:
        raise JobFailed(r["error_kind"], r["error"])
    prov = dict(r["provenance"], model_sha256=file_sha256(model_path))
    return r["artifact"], prov
