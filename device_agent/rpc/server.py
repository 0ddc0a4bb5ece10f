"""The agent daemon: a gRPC server around :class:`device_agent.core.service.AgentService`.

``create_server(address, config=...)`` builds and binds a server (tests use port 0) apart from
``serve(config)``, which runs it until SIGTERM/SIGINT: health turns NOT_SERVING, new work is
refused with UNAVAILABLE, the running job may finish for ``drain_grace_s`` and is then
cancelled (its caller gets a result with ``error_kind="cancelled"``), and the server stops.
Logs are JSON lines on stderr (one object per event).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from device_agent.rpc.auth import TokenAuthInterceptor, server_credentials
from device_agent.settings import MAX_MESSAGE_BYTES, DaemonSettings
from device_agent.core.service import AgentService
from device_agent.rpc.servicer import AgentServicer
from protos.hwnas.agent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("device_agent.rpc.server")

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON-lines logging on stderr for the ``device_agent`` loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger("device_agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class AgentServer:
    """A started-or-not agent server: the gRPC server, the service and the health servicer."""

    def __init__(self, *, grpc_server: grpc.Server, service: AgentService,
                 health_servicer: health.HealthServicer, settings: DaemonSettings) -> None:
        self.grpc_server = grpc_server
        self.service = service
        self.health = health_servicer
        self.settings = settings
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start serving and report SERVING."""
        self.grpc_server.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def shutdown(self, *, grace_s: float | None = None) -> None:
        """Drain (NOT_SERVING, refuse new work, finish or cancel the running job), then stop."""
        if self._stopped.is_set():
            return
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        log.info("draining", extra={"event": "drain", "grace_s": grace})
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.service.drain(grace_s=grace)
        self.grpc_server.stop(grace=2.0).wait(10.0)
        self._stopped.set()
        log.info("stopped", extra={"event": "stopped"})

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops."""
        return self.grpc_server.wait_for_termination(timeout)


def create_server(address: str = "127.0.0.1:0", *, config: DaemonSettings) -> tuple[AgentServer, int]:
    """Build and bind an agent server (not started). Returns (server, bound port).

    Raises ``ValueError`` for an exposed address without authentication (see
    ``DaemonSettings.check_exposure``) and ``RuntimeError`` when the address cannot be bound.
    """
    host = address.rsplit(":", 1)[0].strip("[]")
    _with_host(config, host).check_exposure()
    service = AgentService(settings=config)
    interceptors = [TokenAuthInterceptor(token=config.token)] if config.token else []
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]
    # Enough threads that a full queue answers RESOURCE_EXHAUSTED instead of blocking, and
    # Describe/HasModel/health still answer while a job runs.
    workers = config.queue_size + 8
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent-rpc"),
                         interceptors=interceptors, options=options)
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(service=service), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        if config.tls:
            creds = server_credentials(cert=config.tls_cert, key=config.tls_key,  # type: ignore[arg-type]
                                       client_ca=config.tls_client_ca)
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind {address}: {exc}") from None
    if not port:
        raise RuntimeError(f"cannot bind {address}")
    return AgentServer(grpc_server=server, service=service, health_servicer=health_servicer,
                       settings=config), port


def _with_host(config: DaemonSettings, host: str) -> DaemonSettings:
    from dataclasses import replace

    return replace(config, host=host)


def _write_port_file(path: str, port: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".port-")
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def serve(config: DaemonSettings) -> int:
    """Run the agent until SIGTERM/SIGINT; returns the process exit code."""
    configure_logging(config.log_level)
    host = config.host if ":" not in config.host else f"[{config.host}]"
    server, port = create_server(f"{host}:{config.port}", config=config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # a second signal while draining: leave at once
            log.warning("second signal, exiting without draining", extra={"event": "forced_exit",
                                                                          "signal": name})
            os._exit(128 + signum)
        log.info("signal received", extra={"event": "signal", "signal": name})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.start()
    if config.port_file:
        _write_port_file(config.port_file, port)
    log.info("serving", extra={"event": "serving", "host": config.host, "port": port,
                               "device_key": server.service.device_key, "tls": config.tls,
                               "mutual_tls": config.mutual_tls, "auth": bool(config.token),
                               "cache_dir": str(server.service.cache.root)})
    while not stop.wait(0.5):
        pass
    t0 = time.monotonic()
    server.shutdown()
    log.info("shutdown complete", extra={"event": "exit", "seconds": round(time.monotonic() - t0, 3)})
    return 0
