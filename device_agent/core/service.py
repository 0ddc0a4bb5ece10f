"""The agent's domain core: models in the cache, one job at a time, a bounded queue, draining.

The gRPC servicer (``device_agent.rpc.servicer``) only translates messages to calls on
:class:`AgentService` and its return values or :mod:`device_agent.errors` exceptions back.
Measurements never overlap: :class:`JobQueue` runs one job at a time and lets at most
``queue_size`` more wait (one more -> ``AgentBusy``). A job is cancelled when its caller goes
away (the servicer sets the ``cancel`` event) or when the agent drains for shutdown.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from device_agent.core.cache import ContentCache, artifact_key, is_sha256
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.tables import TableSource, answers_by_arch_key
from device_agent.settings import MAX_CHUNK_BYTES, DaemonSettings
from device_agent.errors import AgentUnavailable, InvalidRequest, ModelNotHeld
from device_agent.core.jobqueue import JobQueue
from device_agent.core.result import MeasureResult

log = logging.getLogger("device_agent.core.service")

AGENT_VERSION = "0.1.0"


@dataclass(frozen=True)
class MeasureRequest:
    """A decoded ``Measure`` header."""

    job_id: str
    model_sha256: str
    model_size: int
    build: BuildConfig
    measure: MeasureConfig
    arch_key: str | None = None
    space: str | None = None


@dataclass(frozen=True)
class BuiltArtifact:
    """Outcome of ``BuildEngine``: the bytes and metadata, or an error (a value, not a status)."""

    data: bytes
    meta: dict[str, Any]
    from_cache: bool = False
    error: str | None = None
    error_kind: str | None = None


class AgentService:
    """What an agent does, independent of gRPC (see the module docstring)."""

    def __init__(self, *, settings: DaemonSettings, cache: ContentCache | None = None) -> None:
        self.settings = settings
        self.cache = cache or ContentCache(root=settings.cache_dir,
                                           max_bytes=settings.cache_size_mb * 1024 * 1024)
        self.queue = JobQueue(max_waiting=settings.queue_size)
        self._draining = threading.Event()
        self._cancels: set[threading.Event] = set()
        self._lock = threading.Lock()
        self._validated: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._description: dict[str, Any] | None = None
        self._table_source: TableSource | None = None
        self._idle: Any = None  # IdleBaseline, False (no sensor) or None (not looked yet)
        if settings.table:
            self._table()  # a missing file or column fails at start, not on the first call
        self.device_key = settings.device_key or self._default_device_key()

    # ---- describe
    def _default_device_key(self) -> str:
        """This machine's key; a table agent is named after its table column, not the host."""
        if answers_by_arch_key(self.settings.backend):
            from device_agent.tables.source import parse_column

            return f"table-{parse_column(dict(self.settings.metrics)['latency_ms'])[0]}"
        from device_agent.core.provenance import default_device_key

        return default_device_key(self.settings.default_build)

    def _describe_device(self) -> dict[str, Any]:
        from device_agent.core.describe import describe_device

        return dict(describe_device(device_key=self.device_key, default_backend=self.settings.backend,
                                    table=self._table()))

    def describe(self) -> dict[str, Any]:
        """The device description plus the agent's own facts and limits."""
        if self._description is None:
            self._description = self._describe_device()
        info = dict(self._description)
        info.update(device_key=self.device_key, agent_version=AGENT_VERSION,
                    default_backend=self.settings.backend, draining=self._draining.is_set(),
                    limits=dict(info.get("limits") or {},
                                max_model_bytes=self.settings.max_model_bytes,
                                max_tensor_elems=self.settings.max_tensor_elems,
                                max_chunk_bytes=MAX_CHUNK_BYTES, queue_size=self.settings.queue_size,
                                queue_depth=self.queue.depth))
        return info

    # ---- models
    def has_model(self, sha256: str) -> int | None:
        """Size of the held model ``sha256``, or None."""
        if not is_sha256(sha256):
            raise InvalidRequest("model_sha256 must be 64 lowercase hex characters")
        return self.cache.model_size(sha256)

    def _check_size(self, size: int) -> None:
        if size <= 0:
            raise InvalidRequest("model_size must be > 0")
        if size > self.settings.max_model_bytes:
            raise InvalidRequest(f"model is {size} bytes, over this agent's limit of "
                                 f"{self.settings.max_model_bytes} (max_model_mb)")

    def receive_model(self, sha256: str, size: int, chunks: Iterable[bytes]) -> tuple[int, bool]:
        """Store a streamed model. Returns (bytes received, already held and nothing sent).

        With no chunks the model must already be held (else ``ModelNotHeld``). Raises
        ``InvalidRequest`` (size, oversize chunk) or ``ChecksumMismatch``.
        """
        if self._draining.is_set():
            raise AgentUnavailable("agent is shutting down")
        if not is_sha256(sha256):
            raise InvalidRequest("model_sha256 must be 64 lowercase hex characters")
        self._check_size(size)
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            if self.cache.model_size(sha256) is None:
                raise ModelNotHeld(f"model {sha256[:12]} is not held by this agent; send its bytes")
            return 0, True
        writer = self.cache.model_writer(sha256, size)
        try:
            for chunk in _chain(first, it):
                if len(chunk) > MAX_CHUNK_BYTES:
                    raise InvalidRequest(f"chunk of {len(chunk)} bytes over the {MAX_CHUNK_BYTES} limit")
                writer.write(chunk)
            path = writer.commit()
        finally:
            writer.abort()
        if self._validation_error(sha256, path) is not None:
            self.cache.discard_model(sha256)  # only validated models are kept; the reason is remembered
        return writer.received, False

    def check_measure_config(self, cfg: MeasureConfig) -> None:
        """Reject settings that would lift the sandbox's limits or cannot be run."""
        limits = self.settings
        if not 0 < cfg.timeout_s <= limits.max_job_timeout_s:
            raise InvalidRequest(f"timeout_s must be in (0, {limits.max_job_timeout_s:g}] on this agent")
        if not 0 < cfg.memory_limit_mb <= limits.max_job_memory_mb:
            raise InvalidRequest(f"memory_limit_mb must be in (0, {limits.max_job_memory_mb}] on this agent")
        if cfg.batch_size < 1:
            raise InvalidRequest("batch_size must be >= 1")
        for name in ("min_iterations", "warmup_s", "min_duration_s", "max_duration_s",
                     "target_precision", "cv_threshold"):
            if getattr(cfg, name) < 0:
                raise InvalidRequest(f"{name} must be >= 0")

    def receive_for_measure(self, req: MeasureRequest, chunks: Iterable[bytes]) -> int:
        """Receive the model of a ``Measure`` (none needed for a table look-up); bytes received."""
        self.check_measure_config(req.measure)
        if req.model_size == 0 and answers_by_arch_key(self.effective_build(req.build).backend):
            if next(iter(chunks), None) is not None:
                raise InvalidRequest("model bytes sent for a model_size of 0")
            return 0
        return self.receive_model(req.model_sha256, req.model_size, chunks)[0]

    def _validation_error(self, sha256: str, path: Path | None) -> str | None:
        """Validate once per sha256 (remembered); the reason, or None when valid (or, with no
        ``path``, when the model was never rejected)."""
        with self._lock:
            if sha256 in self._validated:
                self._validated.move_to_end(sha256)
                return self._validated[sha256]
        if path is None:
            return None
        from device_agent.core.validate import InvalidModel, validate_model

        try:
            validate_model(path, max_bytes=self.settings.max_model_bytes,
                           max_tensor_elems=self.settings.max_tensor_elems)
            reason = None
        except InvalidModel as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - bytes that crash a parser are an invalid model
            reason = f"validator failed on these bytes: {type(exc).__name__}: {exc}"
        with self._lock:
            self._validated[sha256] = reason
            while len(self._validated) > 4096:
                self._validated.popitem(last=False)
        return reason

    # ---- jobs
    @contextlib.contextmanager
    def _job(self, cancel: threading.Event) -> Iterator[float]:
        if self._draining.is_set():
            raise AgentUnavailable("agent is shutting down")
        with self.queue.slot(cancel=cancel) as waited:
            with self._lock:
                self._cancels.add(cancel)
            try:
                yield waited
            finally:
                with self._lock:
                    self._cancels.discard(cancel)

    def effective_build(self, build: BuildConfig) -> BuildConfig:
        """A table agent answers every request from its table; others honour the request."""
        if answers_by_arch_key(self.settings.backend) and build.backend != self.settings.backend:
            return replace(build, backend=self.settings.backend)
        return build

    def _table(self) -> TableSource | None:
        """The configured table source (built once), or None."""
        if self._table_source is None and self.settings.table:
            self._table_source = TableSource(table_path=self.settings.table,
                                               metrics=dict(self.settings.metrics) or None,
                                               key_column=self.settings.table_key_column)
        return self._table_source

    def _idle_power(self, measure: MeasureConfig) -> tuple[float | None, str]:
        """The idle baseline (measured lazily inside the job slot, when nothing else runs)."""
        if not measure.energy:
            return None, ""
        if self._idle is None:
            from device_agent.sensors import detect_sensor
            from device_agent.sensors.idle import IdleBaseline
            from device_agent.sensors.none import NoSensor

            sensor = detect_sensor()
            self._idle = False if isinstance(sensor, NoSensor) else IdleBaseline(sensor)
        if not self._idle:
            return None, ""
        reading = self._idle.get()
        return (reading.power_w, reading.method) if reading else (None, "")

    def measure(self, req: MeasureRequest, *, cancel: threading.Event,
                bytes_received: int = 0) -> MeasureResult:
        """Validate the held model, wait for the slot, run the job. Failures are values.

        A table-backed job runs no model: it needs no bytes and skips the queue.
        """
        from device_agent.core.jobs import run_job

        job_id = req.job_id or uuid.uuid4().hex
        build = self.effective_build(req.build)
        if answers_by_arch_key(build.backend):
            started = time.time()
            with self.cache.pin_model(req.model_sha256) as path:
                result = run_job(str(path) if path else "", build, req.measure, job_id=job_id,
                                 device_key=self.device_key, arch_key=req.arch_key, cancel=cancel,
                                 table=self._table())
            return self._annotate(result, req, started, time.time(), 0.0, bytes_received)
        with self.cache.pin_model(req.model_sha256) as path:
            reason = self._validation_error(req.model_sha256, path)
            if path is None and reason is None:
                raise ModelNotHeld(f"model {req.model_sha256[:12]} is not held by this agent")
            if reason is not None:
                self.cache.discard_model(req.model_sha256)
                return MeasureResult.failure(
                    job_id=job_id, device_key=self.device_key, backend=build.backend,
                    model_sha256=req.model_sha256, error=f"invalid model: {reason}",
                    error_kind="invalid_model", build_config=build.to_dict(),
                    measure_config=req.measure.to_dict())
            with self._job(cancel) as waited:
                idle_w, idle_method = self._idle_power(req.measure)
                started = time.time()
                log.info("job started", extra={"event": "job_start", "job_id": job_id,
                                               "model": req.model_sha256[:12], "waited_s": round(waited, 3)})
                result = run_job(str(path), build, req.measure, job_id=job_id,
                                 device_key=self.device_key, arch_key=req.arch_key, cancel=cancel,
                                 idle_power_w=idle_w, idle_method=idle_method,
                                 max_bytes=self.settings.max_model_bytes,
                                 max_tensor_elems=self.settings.max_tensor_elems)
                finished = time.time()
        return self._annotate(result, req, started, finished, waited, bytes_received)

    def _annotate(self, result: MeasureResult, req: MeasureRequest, started: float, finished: float,
                  waited: float, bytes_received: int) -> MeasureResult:
        result.provenance = dict(result.provenance or {})
        result.provenance["agent_job"] = {
            "started_at": started, "finished_at": finished, "queue_wait_s": round(waited, 6),
            "model_bytes_received": bytes_received, "space": req.space, "arch_key": req.arch_key}
        log.info("job finished", extra={"event": "job_end", "job_id": result.job_id,
                                        "error_kind": result.error_kind,
                                        "seconds": round(finished - started, 3)})
        return result

    def build_engine(self, *, job_id: str, model_sha256: str, build: BuildConfig, timeout_s: float,
                     cancel: threading.Event) -> BuiltArtifact:
        """The deployable artifact of a held model (cached by model, backend, versions, build)."""
        from device_agent.core.jobs import build_artifact

        build = self.effective_build(build)
        versions = self.describe().get("versions", {})
        key = artifact_key(model_sha256=model_sha256, backend=build.backend, versions=versions,
                           build=build.to_dict(), device_key=self.device_key)
        cached = self.cache.get_artifact(key)
        if cached is not None:
            return BuiltArtifact(data=cached[0], meta=dict(cached[1], cache_key=key), from_cache=True)
        with self.cache.pin_model(model_sha256) as path, \
                self.cache.pin_model(build.calibration_sha256 or model_sha256) as calibration:
            reason = self._validation_error(model_sha256, path)
            if path is None and reason is None:
                raise ModelNotHeld(f"model {model_sha256[:12]} is not held by this agent; upload it first")
            if reason is not None:
                self.cache.discard_model(model_sha256)
                return BuiltArtifact(data=b"", meta={}, error=f"invalid model: {reason}",
                                     error_kind="invalid_model")
            if build.calibration_sha256 and calibration is None:
                raise ModelNotHeld(f"calibration data {build.calibration_sha256[:12]} is not held by this "
                                   "agent; upload it first")
            with self._job(cancel):
                try:
                    data, provenance = build_artifact(
                        str(path), build, job_id=job_id or uuid.uuid4().hex,
                        calibration_path=str(calibration) if build.calibration_sha256 else None,
                        timeout_s=min(timeout_s or self.settings.build_timeout_s,
                                      self.settings.build_timeout_s))
                except Exception as exc:  # noqa: BLE001 - a failed build is a value
                    kind = getattr(exc, "kind", None) or getattr(exc, "error_kind", None) or "build"
                    return BuiltArtifact(data=b"", meta={}, error=f"{type(exc).__name__}: {exc}",
                                         error_kind=str(kind))
        meta = {"provenance": provenance, "backend": build.backend, "model_sha256": model_sha256,
                "build_config": build.to_dict(), "device_key": self.device_key}
        self.cache.put_artifact(key, data, meta)
        return BuiltArtifact(data=data, meta=dict(meta, cache_key=key))

    # ---- shutdown
    @property
    def draining(self) -> bool:
        """True once :meth:`drain` started."""
        return self._draining.is_set()

    def drain(self, *, grace_s: float) -> None:
        """Refuse new work, let the running job finish for ``grace_s``, then cancel it."""
        self._draining.set()
        self.queue.close()
        if not self.queue.wait_idle(grace_s):
            with self._lock:
                cancels = list(self._cancels)
            log.warning("cancelling the running job for shutdown", extra={"event": "drain_cancel"})
            for ev in cancels:
                ev.set()
            self.queue.wait_idle(30.0)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
