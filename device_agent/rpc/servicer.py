"""The gRPC servicer of ``hwnas.agent.v1.Agent``: translation only.

Each method decodes the request (``device_agent.rpc.wire``), calls :class:`AgentService`, and
encodes the reply; a :mod:`device_agent.errors` exception becomes its status through the one
table there. A candidate that fails is a normal ``MeasureReply`` with ``error`` set.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import grpc

from device_agent.rpc import wire
from device_agent.settings import MAX_CHUNK_BYTES
from device_agent.errors import AgentError, Cancelled, InvalidRequest
from device_agent.rpc.status import abort, status_of
from device_agent.core.service import AgentService, MeasureRequest
from protos.hwnas.agent.v1 import agent_pb2 as pb
from protos.hwnas.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger("device_agent.rpc.servicer")
T = TypeVar("T")


def _chunks(requests: Iterator[Any], *, what: str) -> Iterator[bytes]:
    """The bytes chunks that follow a header; anything else is an ``InvalidRequest``."""
    for req in requests:
        if req.WhichOneof("msg") != "chunk":
            raise InvalidRequest(f"{what}: only bytes chunks may follow the header")
        if len(req.chunk) > MAX_CHUNK_BYTES:
            raise InvalidRequest(f"chunk of {len(req.chunk)} bytes over the {MAX_CHUNK_BYTES} limit")
        yield req.chunk


def _header(requests: Iterator[Any], *, what: str) -> Any:
    first = next(requests, None)
    if first is None or first.WhichOneof("msg") != "header":
        raise InvalidRequest(f"{what}: the first message must be the header")
    return first.header


def _cancel_event(context: grpc.ServicerContext) -> threading.Event:
    """An event set when the call ends early (client cancel, deadline, disconnect)."""
    ev = threading.Event()
    if not context.add_callback(ev.set) or not context.is_active():
        ev.set()
    return ev


class AgentServicer(pb_grpc.AgentServicer):
    """Translates ``hwnas.agent.v1.Agent`` calls to :class:`AgentService`."""

    def __init__(self, *, service: AgentService) -> None:
        self.service = service

    def _run(self, context: grpc.ServicerContext, method: str, fn: Callable[[], T]) -> T:
        """Call ``fn``; map domain errors to their status (and log unexpected ones)."""
        try:
            return fn()
        except AgentError as exc:
            error: BaseException = exc
            log.info("call failed", extra={"event": "rpc_error", "method": method,
                                           "code": status_of(exc).name, "detail": str(exc)[:300]})
        except grpc.RpcError as exc:  # the request stream broke (client gone)
            error = Cancelled(f"request stream failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug must become INTERNAL, not kill the agent
            log.exception("unexpected error", extra={"event": "rpc_internal", "method": method})
            error = exc
        abort(context, error)

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> pb.DeviceInfo:
        return self._run(context, "Describe", lambda: wire.describe_to_pb(self.service.describe()))

    def HasModel(self, request: pb.HasModelRequest, context: grpc.ServicerContext) -> pb.HasModelReply:
        def call() -> pb.HasModelReply:
            size = self.service.has_model(request.model_sha256)
            return pb.HasModelReply(held=size is not None, size=size or 0)

        return self._run(context, "HasModel", call)

    def UploadModel(self, request_iterator: Iterator[pb.UploadRequest],
                    context: grpc.ServicerContext) -> pb.UploadReply:
        def call() -> pb.UploadReply:
            header = _header(request_iterator, what="UploadModel")
            got, held = self.service.receive_model(
                header.model_sha256, header.model_size, _chunks(request_iterator, what="UploadModel"))
            return pb.UploadReply(model_sha256=header.model_sha256, bytes_received=got, already_held=held)

        return self._run(context, "UploadModel", call)

    def Measure(self, request_iterator: Iterator[pb.MeasureRequest],
                context: grpc.ServicerContext) -> pb.MeasureReply:
        def call() -> pb.MeasureReply:
            h = _header(request_iterator, what="Measure")
            req = MeasureRequest(
                job_id=h.job_id, model_sha256=h.model_sha256, model_size=h.model_size,
                build=wire.build_from_pb(h.build, self.service.settings.default_build),
                measure=wire.measure_from_pb(h.measure),
                arch_key=h.arch_key or None, space=h.space or None)
            got = self.service.receive_for_measure(req, _chunks(request_iterator, what="Measure"))
            result = self.service.measure(req, cancel=_cancel_event(context), bytes_received=got)
            return wire.result_to_pb(result, bytes_received=got)

        return self._run(context, "Measure", call)

    def BuildEngine(self, request: pb.BuildEngineRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.BuildEngineReply]:
        art = self._run(context, "BuildEngine", lambda: self.service.build_engine(
            job_id=request.job_id, model_sha256=request.model_sha256,
            build=wire.build_from_pb(request.build, self.service.settings.default_build),
            timeout_s=request.timeout_s,
            cancel=_cancel_event(context)))
        header = pb.ArtifactHeader(
            size=len(art.data), backend=str(art.meta.get("backend", "")),
            cache_key=str(art.meta.get("cache_key", "")), from_cache=art.from_cache,
            provenance_json=wire.dumps(art.meta.get("provenance") or {}))
        if art.error is not None:
            header.error = art.error
            header.error_kind = art.error_kind or "build"
        else:
            header.sha256 = hashlib.sha256(art.data).hexdigest()
        yield pb.BuildEngineReply(header=header)
        view = memoryview(art.data)
        for i in range(0, len(view), MAX_CHUNK_BYTES):
            yield pb.BuildEngineReply(chunk=bytes(view[i:i + MAX_CHUNK_BYTES]))
