"""The ONE table between domain errors (:mod:`device_agent.errors`) and gRPC status codes.

The agent's server ends a call with :func:`abort`, its client turns a status back into the same
exception class with :func:`from_rpc_error`, and any other gRPC service of hwnas (the search's
registry) can use both: the table is keyed by class, and a subclass maps like its base.
"""
from __future__ import annotations

from typing import NoReturn

import grpc

from device_agent.errors import (
    AgentBusy,
    AgentError,
    AgentUnavailable,
    AuthenticationError,
    Cancelled,
    ChecksumMismatch,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidRequest,
    ModelNotHeld,
    PermissionDenied,
    Unsupported,
)

#: Domain error class -> status code (server side); its inverse maps codes back (client side).
STATUS_OF: dict[type[AgentError], grpc.StatusCode] = {
    AgentUnavailable: grpc.StatusCode.UNAVAILABLE,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AgentBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ChecksumMismatch: grpc.StatusCode.DATA_LOSS,
    ModelNotHeld: grpc.StatusCode.NOT_FOUND,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    InternalError: grpc.StatusCode.INTERNAL,
}
ERROR_OF: dict[grpc.StatusCode, type[AgentError]] = {code: cls for cls, code in STATUS_OF.items()}

#: Status codes a client may retry (the call did not reach a working agent).
RETRYABLE: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception: the one it arrived with, else the table's entry for its
    class (or nearest base); anything else is ``INTERNAL``."""
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the RPC with the status that the table gives ``exc`` (raises, never returns)."""
    message = str(exc) if isinstance(exc, AgentError) else f"internal error: {type(exc).__name__}: {exc}"
    context.abort(status_of(exc), message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def from_rpc_error(err: grpc.RpcError) -> AgentError:
    """Turn a ``grpc.RpcError`` (a call that ended with a status) into the domain exception,
    carrying the status as ``exc.code``."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return ERROR_OF.get(code, AgentError)(f"{code.name}: {details}", code=code)
