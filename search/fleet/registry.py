"""The search server's registry: device agents join (and leave) a running search by themselves.

Wire contract: ``protos/hwnas/registry/v1/registry.proto``. An agent started with
``--register SERVER:PORT`` calls ``Register(address, device_key, capabilities)``; the registry
checks the agent with ``Describe`` (through :meth:`search.fleet.pool.AgentPool.add_agent`), refuses it
when the device key it announced is not the one it reports, and answers with the heartbeat
interval. A monitor thread drops an agent after ``missed_heartbeats`` intervals without a
heartbeat (``pool.remove_agent``: its leased job goes back to the queue at once). ``Deregister``
drops it immediately. Calls need ``authorization: Bearer <token>`` when the search has a token
(the same token as the agents').
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from device_agent.errors import AgentBusy, AgentUnavailable, FailedPrecondition, InvalidRequest
from device_agent.rpc.status import abort
from device_agent.settings import is_loopback
from protos.hwnas.registry.v1 import registry_pb2, registry_pb2_grpc

log = logging.getLogger("hwnas.registry")


#: registrations checked at once (each may wait for a ``Describe`` of an unreachable address);
#: more are refused with ``RESOURCE_EXHAUSTED``, so heartbeats never wait behind them
MAX_PENDING_REGISTRATIONS = 4
#: how long a registration's ``Describe`` check may take
REGISTER_DESCRIBE_S = 10.0


def check_exposure(host: str, token: str | None) -> None:
    """``ValueError`` for a registry on a non-loopback address without a token (anyone who
    reaches it could add agents)."""
    if not token and not is_loopback(host):
        raise ValueError(f"registry on {host} without a token: anyone who reaches it could add agents "
                         "(set [agents] token / --token, or bind 127.0.0.1)")


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Register/Heartbeat/Deregister against an :class:`~search.fleet.pool.AgentPool`."""

    def __init__(self, *, pool: Any, heartbeat_s: float, missed: int,
                 describe_timeout_s: float = REGISTER_DESCRIBE_S) -> None:
        self.pool = pool
        self.describe_timeout_s = describe_timeout_s
        self.heartbeat_s = heartbeat_s
        self.missed = missed
        self._lock = threading.Lock()
        self.last_beat: dict[str, float] = {}
        #: addresses whose registration is being checked now (one at a time per address)
        self._pending: set[str] = set()

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC name
        address = request.address.strip()
        if not address or ":" not in address:
            abort(context, InvalidRequest(f"address must be HOST:PORT, got {address!r}"))
        with self._lock:
            busy = address in self._pending or len(self._pending) >= MAX_PENDING_REGISTRATIONS
            if not busy:
                self._pending.add(address)
        if busy:
            abort(context, AgentBusy(f"a registration of {address} is pending, or {MAX_PENDING_REGISTRATIONS} "
                                     "registrations are being checked; try again later"))
        try:
            state = self.pool.add_agent(address, expect_key=request.device_key or None,
                                        describe_timeout=self.describe_timeout_s)
        except ValueError as exc:  # announced key differs from the described one
            abort(context, FailedPrecondition(str(exc)))
        except Exception as exc:  # noqa: BLE001 - the agent could not be reached from here
            abort(context, AgentUnavailable(f"the search server cannot reach {address}: "
                                            f"{type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._pending.discard(address)
        address = state.address  # an alias of a known agent registers as that agent
        with self._lock:
            self.last_beat[address] = time.monotonic()
        self.pool.store.event("agent_registered", agent=address,
                              detail={"device_key": state.device_key, "heartbeat_s": self.heartbeat_s,
                                      "capabilities": _short(request.capabilities_json)})
        return registry_pb2.RegisterReply(agent_id=address, heartbeat_interval_s=self.heartbeat_s,
                                          missed_heartbeats=self.missed)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self._lock:
            known = request.agent_id in self.last_beat
            if known:
                self.last_beat[request.agent_id] = time.monotonic()
        return registry_pb2.HeartbeatReply(known=known, heartbeat_interval_s=self.heartbeat_s)

    def Deregister(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self._lock:
            known = self.last_beat.pop(request.agent_id, None) is not None
        if known:
            self.pool.remove_agent(request.agent_id, reason=f"deregistered: {request.reason or 'agent left'}")
        return registry_pb2.DeregisterReply(known=known)

    def expire(self) -> list[str]:
        """Drop agents whose heartbeats stopped; returns their ids."""
        limit = time.monotonic() - self.missed * self.heartbeat_s
        with self._lock:
            gone = [a for a, t in self.last_beat.items() if t < limit]
            for a in gone:
                del self.last_beat[a]
        for a in gone:
            self.pool.remove_agent(a, reason=f"no heartbeat for {self.missed} x {self.heartbeat_s:g}s")
        return gone


def _short(capabilities_json: str) -> dict[str, Any]:
    try:
        caps = json.loads(capabilities_json) if capabilities_json else {}
    except ValueError:
        return {}
    return {k: caps.get(k) for k in ("agent_version", "default_backend", "backends_available",
                                     "sensors_available") if k in caps}


class RegistryServer:
    """The gRPC registry service of one search (``start()``, ``address``, ``stop()``)."""

    def __init__(self, *, pool: Any, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 heartbeat_s: float = 2.0, missed: int = 3, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_client_ca: str | None = None,
                 describe_timeout_s: float = REGISTER_DESCRIBE_S) -> None:
        """tls_cert/tls_key: serve TLS (agents give ``--register-tls-ca``); tls_client_ca: also
        require agents' client certificates signed by it (mutual TLS); describe_timeout_s: how
        long a registration's ``Describe`` check of the agent may take."""
        from device_agent.rpc.auth import TokenAuthInterceptor, server_credentials

        if heartbeat_s <= 0 or missed < 1:
            raise ValueError("heartbeat_s must be > 0 and missed >= 1")
        check_exposure(host, token)
        self.servicer = RegistryServicer(pool=pool, heartbeat_s=heartbeat_s, missed=missed,
                                         describe_timeout_s=describe_timeout_s)
        interceptors = [TokenAuthInterceptor(token=token)] if token else []
        # registrations take at most MAX_PENDING_REGISTRATIONS threads: the rest always answer heartbeats
        workers = MAX_PENDING_REGISTRATIONS + 8
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="registry"),
                                   interceptors=interceptors, maximum_concurrent_rpcs=4 * workers)
        registry_pb2_grpc.add_RegistryServicer_to_server(self.servicer, self._server)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("registry TLS: the certificate and the key go together")
        if tls_client_ca and not tls_cert:
            raise ValueError("registry TLS: a client CA needs the registry's own certificate and key")
        if tls_cert:
            self.port = self._server.add_secure_port(
                bind, server_credentials(cert=tls_cert, key=tls_key, client_ca=tls_client_ca))
        else:
            self.port = self._server.add_insecure_port(bind)
        self.tls = bool(tls_cert)
        if not self.port:
            raise RuntimeError(f"registry cannot bind {bind}")
        self.address = f"{host}:{self.port}"
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="registry-monitor", daemon=True)

    def start(self) -> "RegistryServer":
        self._server.start()
        self._monitor.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.servicer.heartbeat_s / 2)):
            try:
                for a in self.servicer.expire():
                    log.warning("agent %s missed its heartbeats; dropped", a)
            except Exception:  # noqa: BLE001 - the monitor must outlive a store hiccup
                log.exception("registry monitor")

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self._server.stop(grace).wait(grace + 1)
