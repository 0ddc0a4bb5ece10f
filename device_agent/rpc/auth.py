"""Authentication of agent calls: a shared token on every RPC, TLS and mutual TLS.

Every call to the ``hwnas.agent.v1.Agent`` service must carry the metadata
``authorization: Bearer <token>`` when the agent has a token; the comparison is constant-time
(``hmac.compare_digest``) and a missing or wrong token ends the call with ``UNAUTHENTICATED``
before any handler runs. The standard ``grpc.health.v1.Health`` service stays open on purpose
(probes from systemd, load balancers or the launcher need no secret, and it reveals only
SERVING/NOT_SERVING). With TLS the channel is encrypted; with mutual TLS the agent also refuses
any client whose certificate is not signed by ``tls_client_ca`` (at the handshake).
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any, Callable

import grpc

log = logging.getLogger("device_agent.rpc.auth")

AUTH_HEADER = "authorization"
#: Services that do not require the token.
OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (empty when there is none)."""
    return ((AUTH_HEADER, f"Bearer {token}"),) if token else ()


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with UNAUTHENTICATED."""

    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = dict(request_deserializer=handler.request_deserializer,
              response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Server interceptor: every non-health RPC needs ``authorization: Bearer <token>``."""

    def __init__(self, *, token: str) -> None:
        if not token:
            raise ValueError("token must be non-empty")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: tuple[Any, ...] | None) -> bool:
        values = [v for k, v in (metadata or ()) if k.lower() == AUTH_HEADER]
        if len(values) != 1:
            return False
        value = values[0]
        got = value if isinstance(value, bytes) else str(value).encode()
        return hmac.compare_digest(got, self._expected)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        log.warning("unauthenticated call", extra={"event": "auth_failed", "method": method})
        return _deny_handler(handler, "missing or invalid token")


def _read(path: str | None) -> bytes | None:
    return Path(path).expanduser().read_bytes() if path else None


def server_credentials(*, cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials for the agent; with ``client_ca`` clients must present a cert it signed."""
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))],
        root_certificates=_read(client_ca),
        require_client_auth=bool(client_ca),
    )


def client_channel(target: str, *, tls_ca: str | None = None, tls_cert: str | None = None,
                   tls_key: str | None = None, tls_server_name: str | None = None, tls: bool = False,
                   options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A client channel to ``target``: TLS when ``tls``, ``tls_ca`` or ``tls_cert`` is given
    (``tls_ca`` verifies the server, ``tls_cert``/``tls_key`` for mutual TLS, ``tls_server_name``
    when the server's certificate names another host), plaintext otherwise."""
    options = list(options or [])
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if tls or tls_ca or tls_cert:
        creds = channel_credentials(ca=tls_ca, cert=tls_cert, key=tls_key)
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def channel_credentials(*, ca: str | None = None, cert: str | None = None,
                        key: str | None = None) -> grpc.ChannelCredentials:
    """TLS credentials for a client: ``ca`` verifies the agent; ``cert``/``key`` for mutual TLS."""
    if bool(cert) != bool(key):
        raise ValueError("client tls cert and key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert))
