"""An agent announces itself to a search server's registry and keeps heartbeating.

Wire contract: ``protos/hwnas/registry/v1/registry.proto``. ``Registration(registry=...,
address=..., agent_address=...)`` runs a thread: it asks the agent it belongs to (through its own
``Describe``) for the device key and capabilities, calls ``Register`` (retrying with back-off
while the search server is not there yet), then ``Heartbeat`` every interval the server asked for;
when the server does not know it (restarted or dropped it) it registers again. ``stop()``
deregisters. ``serve_registered(settings, registry=...)`` runs the agent daemon with one.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any, Callable

import grpc

log = logging.getLogger("device_agent.rpc.registration")


class Registration:
    """Keeps one agent registered at one registry (see the module docstring)."""

    def __init__(self, *, registry: str, address: str, agent_address: str | None = None,
                 token: str | None = None, retry_s: float = 1.0,
                 describe: Callable[[], dict[str, Any]] | None = None,
                 registry_tls: dict[str, str] | None = None) -> None:
        """describe: the agent's own description, in process (``serve_registered`` passes its
        service's, so an agent serving TLS needs no client credentials for itself); without it,
        ``Describe`` is called at ``agent_address`` (plaintext). registry_tls: the TLS options of
        :func:`device_agent.rpc.auth.client_channel` for the registry (``tls_ca`` enables TLS,
        ``tls_cert``/``tls_key`` for mutual TLS, ``tls_server_name``)."""
        self.registry = registry
        self.address = address
        self.agent_address = agent_address or address
        self.token = token or None
        self.retry_s = retry_s
        self._describe_fn = describe
        self.registry_tls = {k: v for k, v in (registry_tls or {}).items() if v}
        unknown = set(self.registry_tls) - {"tls_ca", "tls_cert", "tls_key", "tls_server_name"}
        if unknown:
            raise ValueError(f"unknown registry TLS options {sorted(unknown)}")
        self.agent_id: str | None = None
        self.registered = threading.Event()
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        from device_agent.rpc.auth import bearer_metadata

        return bearer_metadata(self.token)

    def _describe(self) -> dict[str, Any]:
        if self._describe_fn is not None:
            return self._describe_fn()
        from device_agent.rpc.client import AgentClient

        with AgentClient(self.agent_address, token=self.token, timeout=10.0) as client:
            return client.describe()

    def _register(self, stub: Any) -> float:
        from protos.hwnas.registry.v1 import registry_pb2

        info = self._describe()
        reply = stub.Register(registry_pb2.RegisterRequest(
            address=self.address, device_key=info["device_key"],
            capabilities_json=json.dumps(info, default=str)), metadata=self._metadata(), timeout=30.0)
        self.agent_id = reply.agent_id
        self.registered.set()
        log.info("registered", extra={"event": "registered", "registry": self.registry,
                                      "agent_id": reply.agent_id})
        return reply.heartbeat_interval_s or 2.0

    def _run(self) -> None:
        from protos.hwnas.registry.v1 import registry_pb2, registry_pb2_grpc

        from device_agent.rpc.auth import client_channel

        channel = client_channel(self.registry, **self.registry_tls)
        stub = registry_pb2_grpc.RegistryStub(channel)
        interval = None
        try:
            while not self._stop.is_set():
                try:
                    if interval is None:
                        interval = self._register(stub)
                    elif not stub.Heartbeat(registry_pb2.HeartbeatRequest(agent_id=self.agent_id or ""),
                                            metadata=self._metadata(), timeout=max(1.0, interval)).known:
                        self.registered.clear()
                        interval = self._register(stub)
                    self.last_error = None
                except Exception as exc:  # noqa: BLE001 - keep trying while the daemon runs
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        log.error("registry refused the token: %s", exc.details())
                    if interval is None or isinstance(exc, grpc.RpcError) and exc.code() in (
                            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        self.registered.clear()
                        interval = None  # the server may have restarted: register again
                    self._stop.wait(self.retry_s)
                    continue
                self._stop.wait(interval)
            if self.agent_id and self.registered.is_set():
                try:
                    stub.Deregister(registry_pb2.DeregisterRequest(agent_id=self.agent_id, reason="agent stopped"),
                                    metadata=self._metadata(), timeout=5.0)
                except grpc.RpcError:
                    pass
        finally:
            channel.close()

    def start(self) -> "Registration":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def advertised_address(host: str, port: int, advertise: str | None = None) -> str:
    """The address a search server should dial: ``advertise`` or the bound host (the machine's
    name when bound to every interface)."""
    if advertise:
        return advertise
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_registered(settings: Any, *, registry: str, advertise: str | None = None,
                     registry_tls: dict[str, str] | None = None) -> int:
    """Run the agent daemon registered at ``registry`` until SIGTERM/SIGINT; on the signal it
    deregisters first (the search stops sending work), then drains like ``serve``.
    registry_tls: see :class:`Registration`."""
    import signal

    from device_agent.rpc import wire
    from device_agent.rpc.server import _write_port_file, configure_logging, create_server

    configure_logging(settings.log_level)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    server, port = create_server(f"{host}:{settings.port}", config=settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if settings.port_file:
        _write_port_file(settings.port_file, port)
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    reg = Registration(registry=registry, address=advertised_address(settings.host, port, advertise),
                       agent_address=f"[{local}]:{port}" if ":" in local else f"{local}:{port}",
                       token=settings.token, registry_tls=registry_tls,
                       # what Describe would answer, without dialling our own (maybe TLS) port
                       describe=lambda: wire.describe_from_pb(wire.describe_to_pb(server.service.describe())),
                       ).start()
    log.info("serving", extra={"event": "serving", "port": port, "registry": registry,
                               "device_key": server.service.device_key})
    while not stop.wait(0.5):
        pass
    reg.stop()
    server.shutdown()
    return 0
