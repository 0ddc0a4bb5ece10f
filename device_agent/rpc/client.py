"""Client of a device agent (``hwnas.agent.v1``), used by the search server and the CLI.

Every call has a deadline; only ``UNAVAILABLE`` is retried (with back-off, within the call's
deadline); failures are raised as :mod:`device_agent.errors` exceptions mapped by the same table
the agent uses. A model is sent only when the agent does not hold its sha256 already.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_agent.rpc import wire
from device_agent.rpc.auth import bearer_metadata, client_channel
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.settings import MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES
from device_agent.errors import (
    AgentError,
    AgentUnavailable,
    BuildFailed,
    ChecksumMismatch,
    DeadlineExceeded,
    ModelNotHeld,
)
from device_agent.rpc.status import RETRYABLE, from_rpc_error
from device_agent.core.result import MeasureResult
from protos.hwnas.agent.v1 import agent_pb2 as pb
from protos.hwnas.agent.v1 import agent_pb2_grpc as pb_grpc

T = TypeVar("T")


class AgentClient:
    """A connection to one agent at ``target`` (``host:port``).

    token: sent as ``authorization: Bearer <token>`` on every call.
    tls_ca: CA bundle that verifies the agent (enables TLS); tls_cert/tls_key: the client's
      certificate for mutual TLS; tls: use TLS with the system roots; tls_server_name: the name
      expected in the agent's certificate when it differs from the target host.
    timeout: default deadline (s) of short calls; ``measure`` adds the job's own time limit.
    retries: attempts after the first for ``UNAVAILABLE``.
    """

    def __init__(self, target: str, *, token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, tls: bool = False,
                 tls_server_name: str | None = None, timeout: float = 60.0, retries: int = 3,
                 chunk_size: int = MAX_CHUNK_BYTES) -> None:
        if not 0 < chunk_size <= MAX_MESSAGE_BYTES - 1024:
            raise ValueError("chunk_size out of range")
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.chunk_size = chunk_size
        self._metadata = bearer_metadata(token)
        self._channel = client_channel(
            target, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_server_name=tls_server_name,
            tls=tls, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                              ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._stub = pb_grpc.AgentStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        #: Model bytes sent by the last ``measure``/``upload_model`` call (0 when held already).
        self.last_upload_bytes = 0
        #: Model bytes sent over this client's lifetime.
        self.total_upload_bytes = 0

    # ---- plumbing
    def _call(self, fn: Callable[[float], T], timeout: float | None) -> T:
        """Run ``fn(seconds_left)``; retry UNAVAILABLE within the deadline; map errors."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed calling {self.target}")
            try:
                return fn(left)
            except grpc.RpcError as err:
                exc = from_rpc_error(err)
                if exc.code not in RETRYABLE or attempt >= self.retries:
                    raise exc from None
            attempt += 1
            time.sleep(min(0.2 * 2 ** (attempt - 1), 2.0, max(0.0, deadline - time.monotonic())))

    def _chunks(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(view), self.chunk_size):
            chunk = bytes(view[i:i + self.chunk_size])
            self.last_upload_bytes += len(chunk)
            self.total_upload_bytes += len(chunk)
            yield chunk

    # ---- calls
    def health(self, *, service: str = "", timeout: float | None = None) -> str:
        """Health status name (``SERVING``, ``NOT_SERVING``, ...). No token needed."""
        reply = self._call(lambda t: self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=t), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the agent reports SERVING; raises ``AgentUnavailable`` after ``timeout``."""
        end = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < end:
            try:
                last = self.health(timeout=min(2.0, max(0.1, end - time.monotonic())))
                if last == "SERVING":
                    return
            except AgentError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise AgentUnavailable(f"agent at {self.target} not ready after {timeout}s: {last}")

    def describe(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The device description (``device_key``, ``versions``, ``backends``, ``limits``, ...)."""
        reply = self._call(lambda t: self._stub.Describe(
            pb.DescribeRequest(), timeout=t, metadata=self._metadata), timeout)
        return wire.describe_from_pb(reply)

    def has_model(self, sha256: str, *, timeout: float | None = None) -> bool:
        """Whether the agent holds the model ``sha256``."""
        reply = self._call(lambda t: self._stub.HasModel(
            pb.HasModelRequest(model_sha256=sha256), timeout=t, metadata=self._metadata), timeout)
        return reply.held

    def upload_model(self, model: bytes, *, timeout: float | None = None, force: bool = False,
                     sha256: str | None = None) -> dict[str, Any]:
        """Make the agent hold ``model`` (no bytes move when it already does, unless ``force``).

        ``sha256`` may pass the model's digest when the caller has it (the agent checks it).
        Returns ``{"model_sha256", "bytes_sent", "already_held"}``.
        """
        sha = sha256 or hashlib.sha256(model).hexdigest()
        self.last_upload_bytes = 0
        if not force and self.has_model(sha, timeout=timeout):
            return {"model_sha256": sha, "bytes_sent": 0, "already_held": True}

        def requests() -> Iterator[pb.UploadRequest]:
            self.last_upload_bytes = 0
            yield pb.UploadRequest(header=pb.UploadHeader(model_sha256=sha, model_size=len(model)))
            for chunk in self._chunks(model):
                yield pb.UploadRequest(chunk=chunk)

        reply = self._call(lambda t: self._stub.UploadModel(
            requests(), timeout=t, metadata=self._metadata), timeout)
        return {"model_sha256": sha, "bytes_sent": self.last_upload_bytes,
                "already_held": reply.already_held}

    def measure(self, model: bytes, *, job_id: str | None = None,
                build: BuildConfig | Mapping[str, Any] | None = None,
                measure: MeasureConfig | None = None, arch_key: str | None = None,
                space: str | None = None, timeout: float | None = None) -> MeasureResult:
        """Measure ``model`` (ONNX bytes) on the agent; a failed candidate is a result, not an error.

        The deadline defaults to ``timeout`` (the client's) plus the job's ``timeout_s``. ``build``
        as a mapping (or ``None``) sends only those fields: the agent's defaults fill the rest.
        """
        measure = measure or MeasureConfig()
        sha = hashlib.sha256(model).hexdigest()
        header = pb.MeasureHeader(
            job_id=job_id or uuid.uuid4().hex, model_sha256=sha, model_size=len(model),
            arch_key=arch_key or "", space=space or "",
            build=wire.build_to_pb(build), measure=wire.measure_to_pb(measure))
        if timeout is None:
            timeout = self.timeout + measure.timeout_s
        end = time.monotonic() + timeout
        # no bytes to send (a table-backed agent measures by arch_key): no HasModel round trip
        send = bool(model) and not self.has_model(sha, timeout=min(self.timeout, timeout))

        def once(send_bytes: bool) -> pb.MeasureReply:
            def requests() -> Iterator[pb.MeasureRequest]:
                self.last_upload_bytes = 0
                yield pb.MeasureRequest(header=header)
                if send_bytes:
                    for chunk in self._chunks(model):
                        yield pb.MeasureRequest(chunk=chunk)

            return self._call(lambda t: self._stub.Measure(
                requests(), timeout=t, metadata=self._metadata), end - time.monotonic())

        try:
            reply = once(send)
        except ModelNotHeld:  # evicted between HasModel and Measure: send the bytes
            reply = once(True)
        return wire.result_from_pb(reply)

    def build_engine(self, model: bytes, *, build: BuildConfig | Mapping[str, Any] | None = None,
                     job_id: str | None = None,
                     timeout: float | None = None) -> tuple[bytes, dict[str, Any]]:
        """Build the deployable artifact on the agent; returns (bytes, metadata).

        Raises ``BuildFailed`` when the build itself failed (the agent replied with an error).
        ``build`` as a mapping (or ``None``) sends only those fields (the agent's defaults fill in).
        """
        timeout = timeout if timeout is not None else self.timeout + 600.0
        end = time.monotonic() + timeout
        sha = self.upload_model(model, timeout=timeout)["model_sha256"]
        request = pb.BuildEngineRequest(job_id=job_id or uuid.uuid4().hex, model_sha256=sha,
                                        build=wire.build_to_pb(build))

        def once(t: float) -> tuple[bytes, dict[str, Any]]:
            stream = self._stub.BuildEngine(request, timeout=t, metadata=self._metadata)
            first = next(stream, None)
            if first is None or first.WhichOneof("msg") != "header":
                raise AgentError("BuildEngine: the agent sent no header")
            h = first.header
            if h.HasField("error"):
                raise BuildFailed(h.error, error_kind=h.error_kind or "build")
            data = b"".join(msg.chunk for msg in stream)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != h.size or digest != h.sha256:
                raise ChecksumMismatch(f"artifact: got {len(data)} bytes sha256 {digest[:12]}, "
                                       f"expected {h.size} bytes sha256 {h.sha256[:12]}")
            meta = {"size": h.size, "sha256": h.sha256, "backend": h.backend, "cache_key": h.cache_key,
                    "from_cache": h.from_cache, "model_sha256": sha,
                    "provenance": wire.loads(h.provenance_json, {})}
            return data, meta

        try:
            return self._call(once, end - time.monotonic())
        except ModelNotHeld:
            self.upload_model(model, timeout=end - time.monotonic(), force=True)
            return self._call(once, end - time.monotonic())

    # ---- lifecycle
    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
