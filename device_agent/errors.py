"""Domain errors of the agent and the ONE table that maps them to gRPC status codes.

The server raises these (``abort(context, exc)`` turns one into a status) and the client turns
a status back into the same exception class (``from_rpc_error``), so both sides agree on what a
code means. A candidate that fails to build or run is NOT an error here: it is a
``MeasureResult`` with ``error``/``error_kind`` set.
"""
from __future__ import annotations

from typing import NoReturn

import grpc


class AgentError(Exception):
    """Base of every agent/protocol error (the client raises these, never raw ``grpc.RpcError``)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class AgentUnavailable(AgentError):
    """The agent cannot be reached, or is shutting down (the only retryable error)."""

    code = grpc.StatusCode.UNAVAILABLE


class AuthenticationError(AgentError):
    """Missing or wrong token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AgentError):
    """Authenticated but not allowed."""

    code = grpc.StatusCode.PERMISSION_DENIED


class AgentBusy(AgentError):
    """The job queue is full; try later or another agent."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InvalidRequest(AgentError):
    """Malformed request: bad header, unknown setting, model too large, oversize chunk."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ChecksumMismatch(AgentError):
    """The received bytes do not hash to the sha256 announced in the header."""

    code = grpc.StatusCode.DATA_LOSS


class ModelNotHeld(AgentError):
    """A request named a model by sha256 that the agent does not hold (send the bytes)."""

    code = grpc.StatusCode.NOT_FOUND


class DeadlineExceeded(AgentError):
    """The call's deadline passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(AgentError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unsupported(AgentError):
    """The agent does not implement what was asked (e.g. an unknown backend)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(AgentError):
    """A bug or unexpected failure inside the agent."""

    code = grpc.StatusCode.INTERNAL


class BuildFailed(AgentError):
    """Client side only: ``BuildEngine`` replied with a build error (a value on the wire)."""

    code = grpc.StatusCode.OK

    def __init__(self, message: str = "", *, error_kind: str | None = None) -> None:
        super().__init__(message)
        self.error_kind = error_kind


#: The one table: domain error <-> status code (server and client both use it).
STATUS_OF: dict[type[AgentError], grpc.StatusCode] = {
    AgentUnavailable: grpc.StatusCode.UNAVAILABLE,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AgentBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
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
    """The status code for an exception (unknown exceptions are ``INTERNAL``)."""
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
    """Turn a ``grpc.RpcError`` (a call that ended with a status) into the domain exception."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = ERROR_OF.get(code, AgentError)
    exc = cls(f"{code.name}: {details}", code=code)
    return exc
