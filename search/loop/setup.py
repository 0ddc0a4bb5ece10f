"""One run set-up, shared by the runner and the CLI: the run store (new or resumed, with the
stored config restored), the measuring fleet (agent pool, registry, a local agent), the
objectives bound to the fleet's device keys, and the evaluator.

Waits are on the pool's condition (an agent joined), never sleep loops.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search.config import SearchConfig
from search.fleet.pool import AgentPool
from search.loop.runlock import RunLock, RunLocked
from search.loop.store import Store
from search.metrics import DEVICE_METRICS
from search.objectives import Constraint, Objective, bind, split_metric
from search.spaces.base import SearchSpace
from search.training.evaluator import Evaluator

log = logging.getLogger("hwnas.setup")


class SearchError(RuntimeError):
    """The search cannot start or go on (no agent, bad dataset, ...)."""


# ---------------------------------------------------------------------------- the run store
def stored_config(store: Store, *, token_given: bool) -> SearchConfig:
    """The config a run was started with, as its store keeps it (no token: ``token_given``
    says the caller brings one again)."""
    from search.config import needs_token, restore

    stored = store.get_meta("config")
    if stored is None:
        raise SearchError(f"{store.run_dir} holds no config to resume")
    if needs_token(stored) and not token_given:
        raise SearchError("this run used an agent token, which the run store does not keep: "
                          "pass --token or --token-file again to resume it")
    return restore(stored)


def resume_config(run_dir: str | Path, *, token_given: bool) -> SearchConfig:
    """:func:`stored_config` of the run in ``run_dir`` (the store is closed again)."""
    store = Store(run_dir, read_only=True)
    try:
        return stored_config(store, token_given=token_given)
    finally:
        store.close()


def open_run(run_dir: str | Path, config: SearchConfig | None, *, resume: bool) -> tuple[Store, SearchConfig]:
    """Create (or, ``resume``, reopen) the run store and record the config in it (no token).

    The caller holds the run directory's :class:`~search.loop.runlock.RunLock`. On a resume
    whose objectives and constraints are the stored ones, the device keys they were bound to
    stay (``objectives`` meta); changed ones are bound again."""
    run_dir = Path(run_dir)
    if resume:
        store = Store(run_dir)
        try:
            previous = stored_config(store, token_given=True)
            config = config if config is not None else stored_config(store, token_given=False)
        except SearchError:
            store.close()
            raise
        if (previous.objectives, previous.constraints) != (config.objectives, config.constraints):
            store.set_meta("objectives", None)  # bound again by Fleet.bind
    else:
        if (run_dir / "run.sqlite").exists():
            raise SearchError(f"{run_dir} already holds a run; use --resume or another --out")
        store = Store(run_dir, create=True)
    assert config is not None
    store.set_meta("config", config.to_stored())  # no token in the run folder
    return store, config


def lock_run(run_dir: str | Path) -> RunLock:
    """Take the run directory for this process (``SearchError`` naming the holder's PID)."""
    try:
        return RunLock(run_dir).acquire()
    except RunLocked as exc:
        raise SearchError(str(exc)) from None
    except OSError as exc:
        raise SearchError(f"cannot lock {run_dir}: {exc}") from None


def preflight(config: SearchConfig, *, registry: "RegistrySettings | None") -> SearchSpace:
    """Every start-up check that needs no agent, run before the run directory is touched (a
    failed start leaves nothing behind): the space and its options, the registry's exposure
    and certificate files. Returns the space."""
    from search.config import ConfigError
    from search.fleet.registry import check_exposure

    try:
        config.validate()  # a config built in code, or restored from an older run store
    except ConfigError as exc:
        raise SearchError(str(exc)) from None
    space = make_space(config)
    if registry is not None:
        try:
            check_exposure(registry.host, config.agents.token or None)
        except ValueError as exc:
            raise SearchError(f"registry: {exc}") from None
        for name, path in registry.tls:
            if not Path(path).is_file():
                raise SearchError(f"registry TLS {name}: no file {path!r}")
    return space


def check_new_run(config: SearchConfig) -> None:
    """Checks for a new run only (a stored run resumes as it was started): the space's epoch
    range ends at ``[train].max_epochs``."""
    from search.config import ConfigError, check_epoch_range

    try:
        check_epoch_range(config)
    except ConfigError as exc:
        raise SearchError(str(exc)) from None


def make_space(config: SearchConfig) -> SearchSpace:
    """The config's search space, with its options."""
    import inspect

    from search.spaces.base import SPACES, get_space

    options = dict(config.space_options)
    try:
        # a space with an epoch gene trains at most [train].max_epochs: its range ends there
        # unless the options say otherwise (check_new_run refuses a range beyond it for new runs)
        if "max_epochs" in inspect.signature(SPACES.get(config.space)).parameters:
            options.setdefault("max_epochs", config.train.max_epochs)
            options.setdefault("min_epochs", min(options.get("min_epochs", 1), options["max_epochs"]))
        return get_space(config.space, **options)
    except (TypeError, ValueError) as exc:
        raise SearchError(f"search space {config.space!r}: {exc}") from None


# ------------------------------------------------------------------------------- the fleet
@dataclass(frozen=True)
class RegistrySettings:
    """Serve the agent registry (agents join by themselves) on ``host:port``; ``tls``: ``cert``,
    ``key`` (serve TLS) and ``client_ca`` (mutual TLS)."""

    port: int
    host: str = "127.0.0.1"
    tls: tuple[tuple[str, str], ...] = ()
    heartbeat_s: float = 2.0


class Fleet:
    """The agents a run measures on: the pool, and the registry or local agent it started."""

    def __init__(self, *, store: Store, config: SearchConfig, addresses: list[str],
                 on_done: Callable[..., None], registry: RegistrySettings | None = None,
                 local_agent_args: tuple[str, ...] = (), wait_agents_s: float = 120.0,
                 on_fatal: Callable[[BaseException], None] | None = None, local_agent_restarts: int = 3) -> None:
        settings = config.agents
        self.store = store
        self.addresses = list(addresses)
        self.registry_settings = registry
        self.local_agent_args = local_agent_args
        self.wait_agents_s = wait_agents_s
        self.token = settings.token or None
        self.registry: Any = None
        #: set once the registry serves (agents may register from then on)
        self.registry_started = threading.Event()
        self._local_agent: Any = None
        self._own_cpus: set[int] | None = None  # this thread's cores before a local agent took one
        self._measure_cpus: set[int] | None = None
        #: times a dead local agent is started again before the search stops with the reason
        self.local_agent_restarts = local_agent_restarts
        self.on_fatal = on_fatal
        self._closing = threading.Event()
        tls = settings.client_tls()
        factory = None
        if tls:  # TLS / mutual TLS to the agents
            from device_agent.rpc.client import AgentClient

            factory = functools.partial(AgentClient, **tls)
        self.pool = AgentPool(
            store=store, build=config.build, measure=config.measure, on_done=on_done, token=self.token,
            lease_s=settings.lease_s, max_attempts=settings.max_attempts, max_crashes=settings.max_crashes,
            straggler_s=settings.straggler_s or None, client_factory=factory, on_fatal=on_fatal)

    def _start_registry(self, reg: RegistrySettings) -> None:
        from search.fleet.registry import RegistryServer

        tls = dict(reg.tls)
        try:
            self.registry = RegistryServer(
                pool=self.pool, host=reg.host, port=reg.port, token=self.token, heartbeat_s=reg.heartbeat_s,
                tls_cert=tls.get("cert"), tls_key=tls.get("key"), tls_client_ca=tls.get("client_ca")).start()
        except (ValueError, OSError, RuntimeError) as exc:  # exposure rule, certificates, bind
            raise SearchError(f"registry: {exc}") from None
        self.store.set_meta("registry", {"address": self.registry.address, "heartbeat_s": reg.heartbeat_s,
                                         "tls": self.registry.tls})
        self.store.event("registry_started", detail={"address": self.registry.address})
        self.registry_started.set()
        print(f"hwnas: registry listening on {self.registry.address}", file=sys.stderr, flush=True)

    def start(self) -> str:
        """Start the registry and connect the agents; the default device key (the first listed
        agent's, or the first to register)."""
        if self.registry_settings is not None:
            self._start_registry(self.registry_settings)
        pool = self.pool
        if not self.addresses and self.registry is not None:
            if not pool.wait_until(lambda: bool(pool.agents), self.wait_agents_s):
                raise SearchError(f"no agent registered at {self.registry.address} in {self.wait_agents_s:g}s")
            return next(iter(pool.agents.values())).device_key
        if not self.addresses:
            self._start_local_agent()
        errors = [f"{a}: {e}" for a, e in pool.add_agents(self.addresses).items()]
        if not pool.agents:
            raise SearchError("no agent could be reached: " + "; ".join(errors))
        for e in errors:
            log.warning("agent not reachable, continuing without it: %s", e)
        # the first listed agent that answered gives the default key (agents are added in parallel)
        return next(pool.agents[a].device_key for a in self.addresses if a in pool.agents)

    def _start_local_agent(self) -> None:
        """Start the loopback agent; with two or more cores, the agent measures on the last one
        and this thread (which starts the training threads later) trains on the others, so a
        measurement never competes with training for a core (restored by :meth:`close`)."""
        import os

        from device_agent.launcher import split_cores, start_local_agent

        split = split_cores()
        measure_cpus, train_cpus = split if split else (None, None)
        self._local_agent = start_local_agent(token=self.token, extra_args=self.local_agent_args, cpus=measure_cpus)
        if train_cpus:
            self._own_cpus = os.sched_getaffinity(0)
            os.sched_setaffinity(0, train_cpus)  # this thread; threads it starts inherit it
        self.addresses = [self._local_agent.address]
        self._measure_cpus = measure_cpus
        self.store.event("local_agent_started", agent=self._local_agent.address,
                         detail={"measure_cpus": sorted(measure_cpus or ()), "train_cpus": sorted(train_cpus or ())})
        threading.Thread(target=self._watch_local_agent, name="local-agent-watch", daemon=True).start()

    def _watch_local_agent(self) -> None:
        """Start a local agent that died again (its job goes back to the queue), at most
        ``local_agent_restarts`` times; then stop the search through ``on_fatal`` with the reason,
        rather than leave the queue waiting on an agent that is gone."""
        from device_agent.errors import AgentUnavailable
        from device_agent.launcher import start_local_agent

        restarts = 0
        while not self._closing.wait(0.5):
            agent = self._local_agent
            if agent is None or agent.alive() or self._closing.is_set():
                continue
            code = agent.process.returncode
            reason = f"the local agent {agent.address} exited with code {code}"
            self.store.event("local_agent_died", agent=agent.address, detail={"exit_code": code})
            log.warning("%s; its log ends: %s", reason, agent.log_tail(800))
            self.pool.remove_agent(agent.address, reason=f"died (exit code {code})")
            with contextlib.suppress(Exception):
                agent.stop(timeout=1.0)  # removes its temporary folder
            if restarts >= self.local_agent_restarts:
                self._fatal(f"{reason} and was restarted {restarts} time(s) already; stopping the search")
                return
            restarts += 1
            try:
                self._local_agent = start_local_agent(token=self.token, extra_args=self.local_agent_args,
                                                      cpus=self._measure_cpus)
            except AgentUnavailable as exc:
                self._fatal(f"{reason}; starting it again failed: {exc}")
                return
            self.addresses = [self._local_agent.address]
            errors = self.pool.add_agents(self.addresses)
            if errors:
                self._fatal(f"{reason}; the restarted agent cannot be reached: {errors}")
                return
            self.store.event("local_agent_restarted", agent=self._local_agent.address,
                             detail={"restarts": restarts, "after": reason})
            print(f"hwnas: {reason}; restarted it at {self._local_agent.address} "
                  f"({restarts} of {self.local_agent_restarts} restarts)", file=sys.stderr, flush=True)

    def _fatal(self, reason: str) -> None:
        self.store.event("search_stopped", detail={"reason": reason})
        if self.on_fatal is not None:
            self.on_fatal(SearchError(reason))

    def bind(self, config: SearchConfig, default_key: str) -> tuple[list[Objective], list[Constraint], list[str]]:
        """The config's objectives and constraints bound to ``default_key``, and the device keys
        they need (waiting, with a registry, for agents of every key to join). A resumed run
        keeps the bindings it stored: its measurements stay on the devices they began on."""
        stored = self.store.get_meta("objectives")
        if stored is not None:
            objectives = [Objective(**o) for o in stored]
            constraints = [Constraint(**c) for c in self.store.get_meta("constraints", [])]
        else:
            objectives = [dataclasses.replace(o, name=bind(o.name, default_key)) for o in config.objective_list()]
            constraints = [dataclasses.replace(c, name=bind(c.name, default_key)) for c in config.constraint_list()]
        keys = set()
        for item in [*objectives, *constraints]:
            metric, key = split_metric(item.name)
            if metric in DEVICE_METRICS:
                keys.add(key)
        pool = self.pool
        if self.registry is not None:  # agents of the other keys may still be registering
            pool.wait_until(lambda: keys <= pool.device_keys(), self.wait_agents_s)
        missing = keys - pool.device_keys()
        if missing:
            hint = (f"; this run measures on those keys: start an agent of each (the run's agents: "
                    f"{', '.join(self.addresses) or 'a local agent'}) or pass --agent"
                    if stored is not None else "")
            raise SearchError(f"objectives need device keys {sorted(missing)}, but the agents are "
                              f"{sorted(pool.device_keys())}{hint}")
        if stored is None:
            self.store.set_meta("objectives", [dataclasses.asdict(o) for o in objectives])
            self.store.set_meta("constraints", [dataclasses.asdict(c) for c in constraints])
        return objectives, constraints, sorted(keys)

    def runs_onnx(self) -> bool:
        """Whether an agent of the fleet runs ONNX files (a table-backed one measures by key)."""
        from device_agent.tables import answers_by_arch_key

        return not all(answers_by_arch_key(a.info.get("default_backend", a.info.get("backend")) or "")
                       for a in self.pool.agents.values())

    def close(self) -> None:
        """Stop the registry, the pool and the local agent."""
        self._closing.set()
        if self.registry is not None:
            self.registry.stop()
        self.pool.close()
        if self._local_agent is not None:
            with contextlib.suppress(Exception):
                self._local_agent.stop()
        if self._own_cpus:
            import os

            os.sched_setaffinity(0, self._own_cpus)


# --------------------------------------------------------------------------- the evaluator
def accuracy_source(config: SearchConfig) -> Any:
    """Where accuracies come from, loaded before any agent starts (a bad dataset or table fails
    fast): the config's :class:`AccuracyTable`, or its dataset's splits."""
    from search.training.accuracy_table import AccuracyTable, AccuracyTableError

    if config.accuracy.startswith("supernet:"):
        return load_supernet(config)
    if config.accuracy_table:
        try:
            return AccuracyTable(config.accuracy_table)
        except AccuracyTableError as exc:
            raise SearchError(str(exc)) from None
    from search.training.workers import load_splits

    try:
        return load_splits(config)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise SearchError(f"dataset {config.dataset!r}: {exc}") from None


def describe_source(source: Any) -> dict[str, Any]:
    """What the report needs of the accuracy source (stored as the run's ``dataset`` meta): its
    name, class count and split sizes (``train``/``val``/``test``: images, None where unknown)."""
    summary = getattr(source, "summary", None)
    if callable(summary):  # DatasetSplits
        d = summary()
        return {"name": d["name"], "source": d["source"], "train": d["train"], "val": d["val"],
                "test": d["test"], "num_classes": d["task"]["num_classes"]}
    column = str(getattr(source, "source", "")).rpartition(":")[2]  # "table:FILE:COLUMN"
    # a published table: NAS-Bench-201's columns start with the dataset (c10, c100, in16)
    classes = 100 if column.startswith("c100") else 120 if column.startswith("in16") else 10
    return {"name": "accuracy table", "source": str(getattr(source, "source", "")), "train": None,
            "val": None, "test": None, "num_classes": classes}


def training_device(config: SearchConfig) -> str:
    """The run's training device (``[train].device`` resolved; an absent GPU is an error); the
    Ray executor without Ray installed is an error too (both before any agent starts)."""
    from search.training.devices import DeviceError, resolve_device

    if config.train.executor == "ray":
        from search.training.ray_executor import INSTALL_HINT, ray_available

        if not ray_available():
            raise SearchError(INSTALL_HINT)
    try:
        return resolve_device(config.train.device)
    except DeviceError as exc:
        raise SearchError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class SupernetSource:
    """``--accuracy supernet:PATH``: the loaded supernet scorer and its path."""

    path: str
    scorer: Any


def load_supernet(config: SearchConfig) -> SupernetSource:
    """Load the supernet of ``config.accuracy`` (``supernet:PATH``) and check its dataset is the run's."""
    from search.training.supernet_train import SupernetAccuracy, load_checkpoint

    path = config.accuracy.partition(":")[2]
    if not Path(path).is_file():
        raise SearchError(f"--accuracy {config.accuracy}: no supernet checkpoint at {path}")
    try:
        trained_on = load_checkpoint(path)["config"]["dataset"]
        if trained_on != config.dataset:
            raise SearchError(f"supernet {path} was trained on {trained_on!r}, the run's dataset is {config.dataset!r}")
        return SupernetSource(path=path, scorer=SupernetAccuracy(path, device="cpu"))
    except (ValueError, KeyError, OSError) as exc:
        raise SearchError(f"supernet {path}: {exc}") from None


def make_evaluator(config: SearchConfig, source: Any, space: SearchSpace, store: Store, *, build: bool,
                   export: bool, on_progress: Callable[[int, dict], None] | None = None) -> Evaluator:
    """The run's evaluator for an :func:`accuracy_source`: the table's look-up, a supernet's
    inherited weights, cheap training (rungs, Early-Bird, inherited weights: in this process),
    or training in worker processes (one per GPU, or ``train_workers`` on CPU) or on a Ray
    cluster."""
    from search.training.accuracy_table import AccuracyTable
    from search.training.evaluator import TableEvaluator

    common: dict[str, Any] = dict(space=space, model_path=store.model_path, export=export,
                                  precision=config.build.precision)
    if isinstance(source, AccuracyTable):
        table = TableEvaluator(table=source, build=build, torch_threads=config.torch_threads, **common)
        table.capacity = config.train_workers
        return table
    if isinstance(source, SupernetSource):
        from search.training.evaluator import SupernetEvaluator

        try:
            return SupernetEvaluator(scorer=source.scorer, path=source.path, build=True,
                                     torch_threads=config.torch_threads, **common)
        except ValueError as exc:
            raise SearchError(str(exc)) from None
    t = config.train
    if config.fidelity.enabled or t.early_bird or t.inherit_weights:
        from search.training.fidelity import CheapTrainer

        return CheapTrainer(splits=source, config=config, weights_dir=store.run_dir / "weights", **common)
    device = training_device(config)
    if config.train.executor == "ray":
        from search.training.ray_executor import RayTrainer

        try:
            return RayTrainer(config=config, splits=source, run_dir=store.run_dir, export=export,
                              device=device, on_progress=on_progress)
        except (ImportError, ConnectionError, RuntimeError, ValueError) as exc:
            raise SearchError(f"ray executor: {exc}") from None
    from search.training.devices import cpu_threads, worker_devices
    from search.training.workers import ProcessPoolTrainer

    devices = worker_devices(device, config.train_workers)
    return ProcessPoolTrainer(config=config, run_dir=store.run_dir, export=export, devices=devices,
                              threads=cpu_threads(len(devices), config.torch_threads), on_progress=on_progress,
                              task=source.task)
