"""Domain errors of the agent (no gRPC here: the rpc layer maps them to status codes).

The service and cache raise these; :mod:`device_agent.rpc.status` holds the ONE table from error
class to gRPC status code, used by the server (``abort``) and the client (``from_rpc_error``), so
both sides agree on what a code means. A candidate that fails to build or run is NOT an error
here: it is a ``MeasureResult`` with ``error``/``error_kind`` set.
"""
from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base of every agent/protocol error (the client raises these, never raw ``grpc.RpcError``).

    ``code`` is the transport status the error arrived with (a ``grpc.StatusCode``, set by the
    rpc layer's ``from_rpc_error``); None for an error raised on this side.
    """

    def __init__(self, message: str = "", *, code: Any = None) -> None:
        super().__init__(message)
        self.code = code


class AgentUnavailable(AgentError):
    """The agent cannot be reached, or is shutting down (the only retryable error)."""


class AuthenticationError(AgentError):
    """Missing or wrong token."""


class PermissionDenied(AgentError):
    """Authenticated but not allowed."""


class FailedPrecondition(AgentError):
    """The request contradicts the server's state (e.g. a registering agent announces a device
    key other than the one it describes)."""


class AgentBusy(AgentError):
    """The job queue is full; try later or another agent."""


class InvalidRequest(AgentError):
    """Malformed request: bad header, unknown setting, model too large, oversize chunk."""


class ChecksumMismatch(AgentError):
    """The received bytes do not hash to the sha256 announced in the header."""


class ModelNotHeld(AgentError):
    """A request named a model by sha256 that the agent does not hold (send the bytes)."""


class DeadlineExceeded(AgentError):
    """The call's deadline passed."""


class Cancelled(AgentError):
    """The call was cancelled."""


class Unsupported(AgentError):
    """The agent does not implement what was asked (e.g. an unknown backend)."""


class InternalError(AgentError):
    """A bug or unexpected failure inside the agent."""


class BuildFailed(AgentError):
    """Client side only: ``BuildEngine`` replied with a build error (a value on the wire)."""

    def __init__(self, message: str = "", *, error_kind: str | None = None) -> None:
        super().__init__(message)
        self.error_kind = error_kind

