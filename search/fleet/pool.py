"""The agent pool: measurement jobs matched to agents by device key, with leases.

Each agent gets one worker thread that takes the next queued job of the agent's device key,
leases it in the store (deadline = now + lease), sends the model and waits for the result.
What can happen to a job:

- a result (success or a model failure such as ``build`` or ``invalid_model``): stored, final;
- ``crash`` / ``timeout`` results (the model crashed or hung the runtime): retried on an agent of
  the same key until ``max_crashes``; then the model is *quarantined*: recorded as infeasible
  with the reason and never sent again;
- the agent is lost (connection refused, deadline passed, broken stream): the job goes back to
  the queue for another agent of the key, within ``max_attempts``; the agent is marked
  unhealthy and probed until it answers again;
- the agent is busy (``RESOURCE_EXHAUSTED``): the job goes back without counting an attempt.

The pool never decides what a result means for the search; it calls ``on_done(job, result)``
with the final result dict (``None`` when the job failed without one, reason in ``error``).
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from device_agent.config import BuildConfig, MeasureConfig
from search.fleet.jobqueue import JobQueue
from search.loop.store import Store
from search.metrics import impossible_reading

log = logging.getLogger("hwnas.pool")

#: error kinds that point at the model hurting the runtime rather than at a plain model defect
CRASH_KINDS = frozenset({"crash", "timeout"})
#: the agent, not the model, stopped the job (a signal to the job process, a draining agent):
#: measured again, counted as a lost agent (``max_attempts``), never as the model's failure
INTERRUPTED_KINDS = frozenset({"interrupted", "cancelled"})
#: the longest wait between two probes of a lost agent
PROBE_MAX_S = 60.0


@dataclass(frozen=True)
class MeasureJob:
    """One measurement of one candidate on one device key."""

    job_id: str
    candidate_id: int
    device_key: str
    model_path: Path | None
    model_sha256: str | None
    arch_key: str | None = None
    space: str | None = None
    #: a straggler's job measured a second time by an idle agent (not leased in the store)
    duplicate: bool = False
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class AgentState:
    """What the pool knows about one agent."""

    address: str
    device_key: str
    info: dict[str, Any]
    #: the resolved ``ip:port`` (see :func:`endpoint`)
    endpoint: str = ""
    healthy: bool = True
    busy_with: str | None = None
    done: int = 0
    failures: int = 0
    lost: int = 0
    last_seen: float = field(default_factory=time.time)
    removed: bool = False
    current: MeasureJob | None = None
    #: jobs taken back from this agent (it was dropped) while it held them
    given_back: set[str] = field(default_factory=set)
    #: failed probes since the agent was lost (the back-off grows with them)
    probes: int = 0
    #: the agent refuses this server's credentials (shown once, until it accepts them again)
    auth_failed: bool = False


def endpoint(address: str) -> str:
    """The resolved ``ip:port`` an address reaches (``localhost:P``, ``127.0.0.1:P`` and
    ``ipv4:127.0.0.1:P`` are one endpoint); the address itself when it does not resolve."""
    target = address
    for scheme in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if target.startswith(scheme):
            target = target[len(scheme):]
            break
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return address
    host = host.strip("[]")
    try:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return address
    ip = sorted(i[4][0] for i in info)[0]  # the same choice for every alias
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _result_dict(res: Any) -> dict[str, Any]:
    """A client's result as a plain dict, equal to ``MeasureResult.to_dict()``.

    ``dataclasses.asdict`` deep-copies every nested value; the result was just decoded from the
    wire and nothing else holds it, so its dicts and lists are taken over as they are and only
    the nested dataclasses (latency, memory, energy) become dicts: about 20 us instead of 80 us
    per table result on the shared 2-CPU machine (``tests/test_pool.py`` checks the equality).
    """
    if isinstance(res, dict):
        return dict(res)
    cls = type(res)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(res):
            return res.to_dict()
        names = _FIELD_NAMES.setdefault(cls, tuple(f.name for f in dataclasses.fields(res)))
    out = {}
    for name in names:
        v = getattr(res, name)
        out[name] = _result_dict(v) if hasattr(type(v), "__dataclass_fields__") else v
    return out


class AgentPool:
    """Dispatches :class:`MeasureJob` s to agents (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        build: BuildConfig,
        measure: MeasureConfig,
        on_done: Callable[[MeasureJob, dict[str, Any] | None, str | None], None],
        token: str | None = None,
        lease_s: float = 300.0,
        max_attempts: int = 3,
        max_crashes: int = 2,
        straggler_s: float | None = 120.0,
        client_factory: Callable[..., Any] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """``on_fatal(exc)``: an agent's worker met an error it cannot handle (the run store
        failed, a full disk): it stops, and the caller must stop the search (the jobs it held
        stay leased in the store, so a resume issues them again)."""
        self.store = store
        self.on_fatal = on_fatal
        #: the first error that stopped a worker (see on_fatal)
        self.fatal: BaseException | None = None
        self.build = build
        self.measure = measure
        self.on_done = on_done
        self.token = token or None
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.max_crashes = max_crashes
        if client_factory is None:
            from device_agent.rpc.client import AgentClient

            client_factory = AgentClient
        self._client_factory = client_factory
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)  # agents joined, left, took or ended a job
        #: the jobs waiting per key and those on an agent (on the same lock)
        self.queue = JobQueue(self._lock, straggler_s=straggler_s)
        self.agents: dict[str, AgentState] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self.retries = 0

    # -- agents -----------------------------------------------------------------------------
    def _alias_of(self, ep: str) -> AgentState | None:
        """With the lock held: the agent in the pool that is at endpoint ``ep``, if any."""
        return next((a for a in self.agents.values() if not a.removed and a.endpoint == ep), None)

    def add_agent(self, address: str, *, expect_key: str | None = None,
                  describe_timeout: float | None = None) -> AgentState:
        """Connect to an agent, ask its device key and start its worker.

        ``expect_key``: the key the agent announced (registry); ``ValueError`` when its
        ``Describe`` reports another one. An agent that was removed may be added again. An
        address that resolves to the endpoint of an agent already in the pool (``localhost:P``
        beside ``127.0.0.1:P``) is that agent: its state is returned, nothing is added.
        """
        ep = endpoint(address)
        with self._cv:
            known = self._alias_of(ep)
        if known is not None:
            if expect_key is not None and expect_key != known.device_key:
                raise ValueError(f"agent {address} announced device key {expect_key!r} but is "
                                 f"{known.address}, which describes itself as {known.device_key!r}")
            return known
        client = self._client_factory(address, token=self.token)
        try:
            info = client.describe(timeout=describe_timeout) if describe_timeout else client.describe()
        except Exception:
            client.close()
            raise
        if expect_key is not None and info.get("device_key") != expect_key:
            client.close()
            raise ValueError(f"agent {address} announced device key {expect_key!r} but describes "
                             f"itself as {info.get('device_key')!r}")
        state = AgentState(address=address, device_key=info["device_key"], info=info, endpoint=ep)
        with self._cv:
            if self._stop.is_set():
                client.close()
                raise RuntimeError("the agent pool is closed")
            known = self._alias_of(ep)
            if known is not None:  # added meanwhile, under this or another alias
                client.close()
                return known
            self.agents[address] = state
            t = threading.Thread(target=self._worker, args=(state, client), name=f"agent-{address}",
                                 daemon=True)
            self._threads[f"{address}#{len(self._threads)}"] = t
            self._cv.notify_all()  # wakes wait_until
        self.store.event("agent_joined", agent=address, detail={"device_key": state.device_key})
        t.start()
        return state

    def add_agents(self, addresses: list[str]) -> dict[str, str]:
        """Add several agents at once (their ``Describe`` calls in parallel); returns
        ``{address: error}`` for those that could not be added."""
        import concurrent.futures as cf

        errors: dict[str, str] = {}
        if not addresses:
            return errors
        with cf.ThreadPoolExecutor(max_workers=min(16, len(addresses)), thread_name_prefix="add-agent") as ex:
            futs = {ex.submit(self.add_agent, a): a for a in addresses}
            for fut in cf.as_completed(futs):
                exc = fut.exception()
                if exc is not None:
                    errors[futs[fut]] = f"{type(exc).__name__}: {exc}"
        return errors

    def remove_agent(self, address: str, *, reason: str = "removed") -> None:
        """Stop dispatching to an agent; a job it holds goes back to the queue now (first result
        wins if the agent still answers it: the store accepts one result per job)."""
        with self._cv:
            st = self.agents.get(address)
            if st is None or st.removed:
                return
            st.removed = True
            st.healthy = False
            job = st.current
            if job is not None:
                st.given_back.add(job.job_id)
        self._wake_all()
        self.store.event("agent_removed", agent=address, detail={"reason": reason,
                                                                 "job": job.job_id if job else None})
        if job is not None:
            self.retries += 1
            self.store.requeue_job(job.job_id, reason=f"agent {address} {reason}", agent=address)
            self.queue.put_front(job)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked whenever an agent joins or leaves or an
        agent takes or ends a job; its last value."""
        with self._cv:
            return self._cv.wait_for(predicate, timeout)

    def device_keys(self) -> set[str]:
        """The device keys of the agents in the pool now."""
        return {a.device_key for a in self.agents.values() if not a.removed}

    # -- jobs -------------------------------------------------------------------------------
    @property
    def reissued(self) -> int:
        """Stragglers' jobs handed to a second agent."""
        return self.queue.reissued

    def _wake_all(self) -> None:
        with self._lock:
            self._cv.notify_all()
            self.queue.wake_all()

    def submit(self, job: MeasureJob) -> None:
        """Queue a job for an agent of its device key."""
        self.queue.put(job)

    def queue_depth(self) -> dict[str, int]:
        """Jobs waiting per device key."""
        return self.queue.depth()

    # -- the worker -------------------------------------------------------------------------
    def _worker(self, state: AgentState, client: Any) -> None:
        try:
            self._work(state, client)
        except Exception as exc:  # noqa: BLE001 - the store failed (disk full ...): stop the search
            log.info("agent worker %s stopped: %s: %s", state.address, type(exc).__name__, exc)
            with self._lock:
                first = self.fatal is None
                if first:
                    self.fatal = exc
            if first and self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken channel must not kill the pool
                pass

    def _work(self, state: AgentState, client: Any) -> None:
        from device_agent import errors as agent_errors

        while not self._stop.is_set() and not state.removed:
            if not state.healthy:
                if not self._probe(state, client):
                    continue
            job = self.queue.take(state.device_key, state.address,
                                  lambda: not self._stop.is_set() and not state.removed)
            if job is None:
                break
            if job.duplicate:
                self._measure_duplicate(state, client, job)
                continue
            if not self.store.lease_job(job.job_id, state.address, time.time() + self.lease_s):
                continue  # failed or taken meanwhile
            with self._cv:
                if state.removed:  # dropped between taking and leasing the job
                    state.given_back.add(job.job_id)
                    removed_now = True
                else:
                    state.busy_with, state.current = job.job_id, job
                    self.queue.started(job, state.address)
                    removed_now = False
                    self._cv.notify_all()  # wakes wait_until
            if removed_now:
                self.store.requeue_job(job.job_id, reason="agent removed", agent=state.address)
                self.queue.put_front(job)
                break
            try:
                result = self._send(client, job)
            except Exception as exc:  # noqa: BLE001 - sorted below
                if job.job_id in state.given_back:  # already back in the queue
                    log.info("dropped agent %s failed job %s: %s", state.address, job.job_id, exc)
                    break
                if isinstance(exc, agent_errors.AgentBusy):
                    self.store.requeue_job(job.job_id, reason="agent busy", agent=state.address)
                    self.queue.put_front(job)
                    time.sleep(0.2)
                    continue
                if isinstance(exc, agent_errors.InvalidRequest):  # the request, not the agent, is wrong
                    err = f"agent {state.address} rejected the request: {exc}"
                    self.store.fail_job(job.job_id, err)
                    self._finish(job, None, err)
                    continue
                if isinstance(exc, (agent_errors.AgentError, OSError)):
                    self._agent_lost(state, job, f"{type(exc).__name__}: {exc}", exc)
                    continue
                raise
            finally:
                with self._cv:
                    state.busy_with, state.current = None, None
                    self.queue.ended(job.job_id)
                    self._cv.notify_all()
            if job.job_id in state.given_back:
                # a late answer of a dropped agent: counts if nobody else answered first
                result = self._checked(state, result)
                if result.get("error") is None and self.store.record_measurement(
                        job.job_id, agent=state.address, result=result):
                    state.done += 1
                    self._finish(job, result, None)
                break
            state.last_seen = time.time()
            self._handle_result(state, job, result)

    def _measure_duplicate(self, state: AgentState, client: Any, job: MeasureJob) -> None:
        """Measure a straggler's job here; record it if the straggler has not answered yet."""
        self.store.event("job_reissued", agent=state.address, detail={"job": job.job_id})
        try:
            result = self._send(client, job)
        except Exception as exc:  # noqa: BLE001 - the original holder still has the job
            log.info("re-issued job %s failed on %s: %s", job.job_id, state.address, exc)
            return
        result = self._checked(state, result)
        if result.get("error") is None and self.store.record_measurement(
                job.job_id, agent=state.address, result=result):
            state.done += 1
            self._finish(job, result, None)

    def _send(self, client: Any, job: MeasureJob) -> dict[str, Any]:
        model = job.model_path.read_bytes() if job.model_path is not None else b""
        t0 = time.perf_counter()
        res = client.measure(model, job_id=job.job_id, build=self.build, measure=self.measure,
                             arch_key=job.arch_key, space=job.space, timeout=self.lease_s)
        out = _result_dict(res)
        # the server's view of the call: lets bench/overhead.py split transfer from the job
        out["client"] = {"rpc_s": time.perf_counter() - t0, "model_bytes": len(model),
                         "queue_wait_s": t0 - job.queued_at}
        return out

    def _probe(self, state: AgentState, client: Any) -> bool:
        """Wait (exponential back-off over the failed probes, up to a minute) until a lost
        agent answers again."""
        delay = min(PROBE_MAX_S, 0.25 * (2 ** min(state.lost + state.probes - 1, 8)))
        if self._stop.wait(delay):
            return False
        try:
            client.describe()
        except Exception as exc:  # noqa: BLE001 - any failure means: still lost
            state.probes += 1
            self._note_auth(state, exc)
            return False
        state.healthy, state.probes, state.auth_failed = True, 0, False
        self.store.event("agent_recovered", agent=state.address)
        return True

    def _note_auth(self, state: AgentState, exc: BaseException) -> None:
        """An agent that refuses this server's token or certificate: said once on stderr and in
        the store (``hwnas status`` shows it), not at every retry."""
        from device_agent.errors import AuthenticationError, PermissionDenied

        if not isinstance(exc, (AuthenticationError, PermissionDenied)) or state.auth_failed:
            return
        state.auth_failed = True
        msg = (f"agent {state.address} refuses this search's credentials ({exc}); check --token / "
               "--token-file and the agent's token; retrying with back-off")
        print(f"hwnas: {msg}", file=sys.stderr, flush=True)
        self.store.event("agent_auth_failed", agent=state.address, detail={"reason": str(exc)})

    def _agent_lost(self, state: AgentState, job: MeasureJob, reason: str, exc: BaseException | None = None) -> None:
        state.healthy = False
        state.lost += 1
        self.retries += 1
        self.store.event("agent_lost", agent=state.address, detail={"job": job.job_id, "reason": reason})
        if exc is not None:
            self._note_auth(state, exc)
        attempts = next((j["attempts"] for j in self.store.jobs(candidate_id=job.candidate_id)
                         if j["id"] == job.job_id), 0)
        if attempts >= self.max_attempts:
            err = f"measurement abandoned after {attempts} lost agents; last: {reason}"
            self.store.fail_job(job.job_id, err)
            self._finish(job, None, err)
        else:
            self.store.requeue_job(job.job_id, reason=reason, agent=state.address)
            self.queue.put_front(job)

    @staticmethod
    def _checked(state: AgentState, result: dict[str, Any]) -> dict[str, Any]:
        """``result``, or, when a reading in it cannot be real (negative, zero, infinite, absurd),
        a failed measurement that names the agent (its values stay on record, not counted)."""
        if result.get("error") is not None:
            return result
        why = impossible_reading(result)
        if why is None:
            return result
        return dict(result, error=f"agent {state.address} returned an impossible reading: {why}",
                    error_kind="implausible")

    def _handle_result(self, state: AgentState, job: MeasureJob, result: dict[str, Any]) -> None:
        result = self._checked(state, result)
        kind = result.get("error_kind")
        if kind in INTERRUPTED_KINDS:
            self._agent_lost(state, job, f"{kind}: {result.get('error')}")
            return
        if kind in CRASH_KINDS:
            row = next(j for j in self.store.jobs(candidate_id=job.candidate_id) if j["id"] == job.job_id)
            crashes = row["crashes"] + 1
            if crashes < self.max_crashes:
                state.failures += 1
                self.retries += 1
                self.store.requeue_job(job.job_id, reason=f"{kind}: {result.get('error')}", crashed=True,
                                       agent=state.address)
                self.queue.put_front(job)
                return
            result = dict(result, error=f"quarantined after {crashes} {kind}s: {result.get('error')}")
            self.store.event("model_quarantined", candidate_id=job.candidate_id, agent=state.address,
                             detail={"job": job.job_id, "kind": kind})
        if not self.store.record_measurement(job.job_id, agent=state.address, result=result):
            return  # lease was lost meanwhile; the job's new holder reports it
        if result.get("error") is None:
            state.done += 1
        else:
            state.failures += 1
        self._finish(job, result, result.get("error"))

    def _finish(self, job: MeasureJob, result: dict[str, Any] | None, error: str | None) -> None:
        try:
            self.on_done(job, result, error)
        except Exception:  # noqa: BLE001 - a callback bug must not kill the agent thread
            log.exception("on_done failed for job %s", job.job_id)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake_all()
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout=timeout)

    def snapshot(self) -> list[dict[str, Any]]:
        """The agents as the status view shows them."""
        return [
            {"address": a.address, "device_key": a.device_key, "healthy": a.healthy,
             "busy": a.busy_with is not None, "done": a.done, "failures": a.failures, "lost": a.lost,
             "removed": a.removed, "auth_failed": a.auth_failed}
            for a in self.agents.values()
        ]
