"""The search loop: ask -> build + train -> export ONNX -> measure on every device key -> tell.

It runs asynchronously (steady state): training happens in a worker pool while agents
measure earlier candidates, and a new candidate is asked for as soon as a training slot is
free, so neither the trainers nor the agents wait for a generation to finish. Everything goes
through the :class:`~search.loop.store.Store` first, so a killed server resumes where it stopped:
finished trainings and measurements are kept, in-flight work is issued again.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from search.algorithms.base import Algorithm, get_algorithm
from search.config import SearchConfig
from search.objectives import DEVICE_METRICS, bind, split_metric
from search.fleet.pool import AgentPool, MeasureJob
from search.spaces.base import SearchSpace, TrainHParams, get_space
from search.loop.store import Store

log = logging.getLogger("hwnas.runner")


#: the candidate row's fields the loop uses after training (see ``SearchRunner._cands``)
_CAND_FIELDS = ("arch_key", "model_sha256", "train", "params", "size_mb")


#: most events handled in one store transaction of the loop (keeps the agents' threads' wait short)
_ROUND_EVENTS = 32


def _job_id(cid: int, device_key: str) -> str:
    return f"c{cid}-{device_key}"


class SearchError(RuntimeError):
    """The search cannot start or go on (no agent, bad dataset, ...)."""


def _objective_value(metric: str, cand: dict[str, Any], result: dict[str, Any] | None) -> float | None:
    """The value of ``metric`` from a candidate's training row or a device measurement."""
    if metric == "accuracy":
        return (cand.get("train") or {}).get("accuracy")
    if metric == "params":
        return cand.get("params")
    if metric == "size_mb":
        return cand.get("size_mb")
    if result is None:
        return None
    if metric == "latency_ms":
        return (result.get("latency_ms") or {}).get("median")
    if metric == "latency_p99_ms":
        return (result.get("latency_ms") or {}).get("p99")
    if metric == "peak_memory_mb":
        return (result.get("peak_memory_mb") or {}).get("value")
    if metric == "energy_mj":
        return (result.get("energy") or {}).get("value_mj")
    if metric == "energy_net_mj":
        return (result.get("energy") or {}).get("net_value_mj")
    raise KeyError(metric)


class AccuracyTable:
    """``CSV:COLUMN``: accuracy looked up by architecture key instead of training."""

    def __init__(self, spec: str, *, key_column: str = "arch_str") -> None:
        import csv
        import gzip
        import io

        path, sep, column = spec.rpartition(":")
        if not sep or not path:
            raise SearchError(f"--accuracy-table wants CSV:COLUMN, got {spec!r}")
        if not Path(path).is_file():
            raise SearchError(f"accuracy table {path} does not exist")
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", newline="") as fh:
            text = fh.read()
        # without quotes a CSV row is its line split at commas, much cheaper than csv.reader
        # (NAS-Bench-201 table: 70 ms instead of 115 ms of CPU, counted in every bench/fleet.py run)
        rows = (line.split(",") for line in text.splitlines()) if '"' not in text else csv.reader(io.StringIO(text))
        header = next(rows, [])
        if column not in header or key_column not in header:
            raise SearchError(f"{path}: needs columns {key_column!r} and {column!r}; has {header}")
        k, c = header.index(key_column), header.index(column)
        self.values = {row[k]: float(row[c]) for row in rows if len(row) > max(k, c) and row[c] != ""}
        self.source = f"table:{Path(path).name}:{column}"
        # percentages (NAS-Bench-201 reports 0..100) become fractions like a trained accuracy
        self.scale = 0.01 if max(self.values.values(), default=0) > 1.0 else 1.0

    def lookup(self, key: str) -> float:
        try:
            return self.values[key] * self.scale
        except KeyError:
            raise SearchError(f"architecture {key!r} is not in the accuracy table") from None


class SearchRunner:
    """Runs (or resumes) one search in ``run_dir``."""

    def __init__(
        self,
        *,
        config: SearchConfig | None,
        run_dir: str | Path,
        resume: bool = False,
        agents: list[str] | None = None,
        progress: bool = True,
        local_agent_args: tuple[str, ...] = (),
        registry_port: int | None = None,
        registry_host: str = "127.0.0.1",
        registry_tls: dict[str, str] | None = None,
        heartbeat_s: float = 2.0,
        wait_agents_s: float = 120.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        if resume:
            self.store = Store(self.run_dir)
            if config is None:
                from search.config import needs_token, restore

                stored = self.store.get_meta("config")
                if stored is None:
                    raise SearchError(f"{self.run_dir} has no stored config to resume")
                config = restore(stored)
                if needs_token(stored):
                    raise SearchError("this run used an agent token, which the run store does not keep: "
                                      "resume with the config (token set) passed in")
        else:
            if (self.run_dir / "run.sqlite").exists():
                raise SearchError(f"{self.run_dir} already holds a run; use --resume or another --out")
            self.store = Store(self.run_dir, create=True)
        self.config = config
        self.store.set_meta("config", config.to_stored())  # no token in the run folder
        self.agent_addresses = list(agents if agents is not None else config.agents.addresses)
        self.progress = progress
        self.local_agent_args = local_agent_args
        # registry (search/fleet/registry.py): agents join by themselves when a port is given
        self.registry_port, self.registry_host = registry_port, registry_host
        #: TLS of the registry's port: ``cert``, ``key`` (serve TLS), ``client_ca`` (mutual TLS)
        self.registry_tls = {k: v for k, v in (registry_tls or {}).items() if v}
        self.heartbeat_s, self.wait_agents_s = heartbeat_s, wait_agents_s
        self.registry = None
        try:
            self.space: SearchSpace = get_space(config.space, **config.space_options)
        except (TypeError, ValueError) as exc:
            raise SearchError(f"search space {config.space!r}: {exc}") from None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._local_agent = None
        self.pool: AgentPool | None = None
        self._job_results: dict[int, dict[str, dict | None]] = {}
        self._job_errors: dict[int, str] = {}
        self._jobs_per_candidate: dict[int, set[str]] = {}
        #: what the loop needs of each unfinished candidate's row (arch_key, model_sha256, train,
        #: params, size_mb), kept here so that it is not read back from the store per job
        self._cands: dict[int, dict[str, Any]] = {}
        self._closed = threading.Event()

    # -- set-up -----------------------------------------------------------------------------
    def _start_agents(self) -> str:
        settings = self.config.agents
        token = settings.token or None
        factory = None
        tls = settings.client_tls()
        if tls:  # TLS / mutual TLS to the agents
            from device_agent.client import AgentClient

            factory = functools.partial(AgentClient, **tls)
        self.pool = AgentPool(
            store=self.store, build=self.config.build, measure=self.config.measure,
            on_done=lambda job, res, err: self._events.put(("measured", (job, res, err))),
            token=token, lease_s=settings.lease_s,
            max_attempts=settings.max_attempts, max_crashes=settings.max_crashes,
            straggler_s=settings.straggler_s or None, client_factory=factory,
        )
        if self.registry_port is not None:
            import sys

            from search.fleet.registry import RegistryServer

            try:
                self.registry = RegistryServer(
                    pool=self.pool, host=self.registry_host, port=self.registry_port, token=token,
                    heartbeat_s=self.heartbeat_s, tls_cert=self.registry_tls.get("cert"),
                    tls_key=self.registry_tls.get("key"), tls_client_ca=self.registry_tls.get("client_ca")).start()
            except (ValueError, OSError, RuntimeError) as exc:  # exposure rule, certificates, bind
                raise SearchError(f"registry: {exc}") from None
            self.store.set_meta("registry", {"address": self.registry.address, "heartbeat_s": self.heartbeat_s,
                                             "tls": self.registry.tls})
            self.store.event("registry_started", detail={"address": self.registry.address})
            print(f"hwnas: registry listening on {self.registry.address}", file=sys.stderr, flush=True)
        if not self.agent_addresses and self.registry is not None:
            end = time.monotonic() + self.wait_agents_s
            while not self.pool.agents and time.monotonic() < end:
                time.sleep(0.1)
            if not self.pool.agents:
                raise SearchError(f"no agent registered at {self.registry.address} in {self.wait_agents_s:g}s")
            return next(iter(self.pool.agents.values())).device_key
        if not self.agent_addresses:
            from device_agent.launcher import start_local_agent

            self._local_agent = start_local_agent(token=token, extra_args=self.local_agent_args)
            self.agent_addresses = [self._local_agent.address]
            self.store.event("local_agent_started", agent=self._local_agent.address)
        errors = [f"{a}: {e}" for a, e in self.pool.add_agents(self.agent_addresses).items()]
        if not self.pool.agents:
            raise SearchError("no agent could be reached: " + "; ".join(errors))
        for e in errors:
            log.warning("agent not reachable, continuing without it: %s", e)
        # the first listed agent that answered gives the default key (agents are added in parallel)
        return next(self.pool.agents[a].device_key for a in self.agent_addresses if a in self.pool.agents)

    def _bind_objectives(self, default_key: str) -> None:
        self.objectives = [dataclasses.replace(o, name=bind(o.name, default_key))
                           for o in self.config.objective_list()]
        self.constraints = [dataclasses.replace(c, name=bind(c.name, default_key))
                            for c in self.config.constraint_list()]
        keys = set()
        for item in [*self.objectives, *self.constraints]:
            metric, key = split_metric(item.name)
            if metric in DEVICE_METRICS:
                keys.add(key)
        missing = keys - self.pool.device_keys()
        end = time.monotonic() + self.wait_agents_s
        while missing and self.registry is not None and time.monotonic() < end:
            time.sleep(0.1)  # agents of the other keys may still be registering
            missing = keys - self.pool.device_keys()
        if missing:
            raise SearchError(f"objectives need device keys {sorted(missing)}, but the agents are "
                              f"{sorted(self.pool.device_keys())}")
        self.device_keys = sorted(keys)
        self.store.set_meta("objectives", [dataclasses.asdict(o) for o in self.objectives])
        self.store.set_meta("constraints", [dataclasses.asdict(c) for c in self.constraints])

    def _make_algorithm(self) -> Algorithm:
        kwargs: dict[str, Any] = dict(space=self.space, objectives=self.objectives,
                                      constraints=self.constraints, seed=self.config.seed)
        try:
            from search.algorithms.base import _REGISTRY, _load_builtin

            _load_builtin()
            cls = _REGISTRY.get(self.config.algorithm)
            if cls is not None and "population_size" in inspect.signature(cls).parameters:
                kwargs["population_size"] = self.config.population_size
        except Exception:  # noqa: BLE001 - get_algorithm reports unknown names itself
            pass
        return get_algorithm(self.config.algorithm, **kwargs)

    # -- the candidate's work (runs in a training thread) -------------------------------------
    def _train_and_export(self, cid: int, genome: Any) -> dict[str, Any]:
        key = self.space.key(genome)
        t0 = time.perf_counter()
        model = None
        if self.accuracy_table is not None:
            train = {"accuracy": self.accuracy_table.lookup(key), "source": self.accuracy_table.source}
            if self.build_models:
                import torch  # only when a model is built: the import costs seconds of CPU

                torch.set_num_threads(self.config.torch_threads)
                model = self.space.build(genome, self.task)
        else:
            import torch

            from search.training.train import train_candidate

            torch.set_num_threads(self.config.torch_threads)
            model = self.space.build(genome, self.task)
            hp = self.space.hparams(genome) or TrainHParams()
            res = train_candidate(model, self.splits, hp, max_epochs=self.config.train.max_epochs,
                                  time_budget_s=self.config.train.time_budget_s, seed=self.config.seed + cid,
                                  patience=self.config.train.patience,
                                  resize_to=self.space.input_shape(genome, self.task)[-1]
                                  if self.space.input_shape(genome, self.task)[-1] != self.task.image_size else None)
            train = res.to_dict()
            train["accuracy"] = res.val_accuracy
            train["source"] = f"trained on {self.splits.source}; accuracy on the held-out split"
        t_train = time.perf_counter() - t0
        out: dict[str, Any] = {"train": train, "params": None, "size_mb": None, "model_sha256": None,
                               "t_train": t_train}
        if model is not None:
            from search.training.exporting import count_params, export_onnx, sha256

            t1 = time.perf_counter()
            out["params"] = count_params(model)
        if model is not None and self.export_models:
            data = export_onnx(model, self.space.input_shape(genome, self.task),
                               metadata={"hwnas.space": self.space.name, "hwnas.arch_key": key,
                                         "hwnas.candidate": str(cid)})
            digest = sha256(data)
            path = self.store.model_path(digest)
            if not path.exists():
                tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            out.update(model_sha256=digest, size_mb=len(data) / 1e6, t_export=time.perf_counter() - t1)
        train["server_timings"] = {"train_s": t_train, "export_s": out.get("t_export", 0.0)}
        return out

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.config
        t_start = time.perf_counter()
        self.accuracy_table = AccuracyTable(cfg.accuracy_table) if cfg.accuracy_table else None
        if self.accuracy_table is None:
            from search.training.data import load_dataset

            try:
                self.splits = load_dataset(cfg.dataset, root=cfg.data_root or None, seed=cfg.seed)
            except (ValueError, FileNotFoundError, OSError) as exc:
                raise SearchError(f"dataset {cfg.dataset!r}: {exc}") from None
            self.task = self.splits.task
        else:
            from search.spaces.base import TaskSpec

            self.task = TaskSpec(in_channels=3, image_size=32, num_classes=10)
        try:
            default_key = self._start_agents()
            self._bind_objectives(default_key)
            # a table-backed fleet measures by architecture key and needs no ONNX file, unless
            # an objective or constraint is the ONNX size; the parameter count needs the model
            # built (not exported)
            server_metrics = {split_metric(i.name)[0] for i in [*self.objectives, *self.constraints]}
            self.export_models = ("size_mb" in server_metrics or not all(
                a.info.get("default_backend", a.info.get("backend")) == "table"
                for a in self.pool.agents.values()))
            self.build_models = self.export_models or "params" in server_metrics
            algo = self._make_algorithm()
            return self._loop(algo, t_start)
        finally:
            self.close()

    def _replay(self, algo: Algorithm) -> tuple[list[int], list[int]]:
        """Feed a resumed store to the algorithm; return (to train, to measure) candidate ids."""
        to_train, to_measure = [], []
        for c in self.store.candidates():
            genome = self.space.from_json(c["genome"])
            if c["status"] == "done":
                algo.observe(genome, c["objectives"], number=c["id"], parents=tuple(c["parents"]))
            elif c["status"] == "failed":
                algo.observe(genome, None, number=c["id"], parents=tuple(c["parents"]))
            else:
                algo.reserve(c["id"], genome, tuple(c["parents"]))
                self._cands[c["id"]] = {k: c[k] for k in _CAND_FIELDS}
                (to_measure if c["status"] == "trained" else to_train).append(c["id"])
        return to_train, to_measure

    def _queue_jobs(self, cid: int, *, fresh: bool = False) -> None:
        """Submit the candidate's unfinished jobs. ``fresh``: its jobs were queued just now (all
        ``queued``, ids as :meth:`_loop` made them), so the store is not read back."""
        cand = self._cands[cid]
        self._jobs_per_candidate[cid] = set()
        self._job_results.setdefault(cid, {})
        path = self.store.model_path(cand["model_sha256"]) if cand["model_sha256"] else None
        if fresh:
            for key in self.device_keys:
                self._jobs_per_candidate[cid].add(key)
                self.pool.submit(MeasureJob(job_id=_job_id(cid, key), candidate_id=cid, device_key=key,
                                            model_path=path, model_sha256=cand["model_sha256"],
                                            arch_key=cand["arch_key"], space=self.space.name))
            return
        for j in self.store.jobs(candidate_id=cid):
            if j["state"] == "done":
                ok = [m for m in self.store.measurements(cid, ok_only=True) if m["job_id"] == j["id"]]
                self._job_results[cid][j["device_key"]] = ok[0]["result"] if ok else None
                continue
            if j["state"] == "failed":
                self._job_errors[cid] = j["error"] or "measurement failed"
                continue
            if j["state"] == "leased":  # in flight when the server stopped: issue again
                self.store.requeue_job(j["id"], reason="server restarted")
            self._jobs_per_candidate[cid].add(j["device_key"])
            self.pool.submit(MeasureJob(job_id=j["id"], candidate_id=cid, device_key=j["device_key"],
                                        model_path=path, model_sha256=cand["model_sha256"],
                                        arch_key=cand["arch_key"], space=self.space.name))

    def _maybe_finish(self, cid: int, algo: Algorithm) -> bool:
        if self._jobs_per_candidate.get(cid):
            return False
        if cid in self._job_errors:
            err = self._job_errors.pop(cid)
            self.store.fail_candidate(cid, err)
            algo.tell(cid, None)
            self._cands.pop(cid, None)
            return True
        cand = self._cands.pop(cid)
        values: dict[str, float] = {}
        for item in [*self.objectives, *self.constraints]:
            metric, key = split_metric(item.name)
            v = _objective_value(metric, cand, self._job_results.get(cid, {}).get(key))
            if v is None:
                err = f"{item.name} is unavailable for this candidate"
                if metric.startswith("energy"):
                    err += " (the agent's device has no power sensor; energy is never invented)"
                self.store.fail_candidate(cid, err)
                algo.tell(cid, None)
                return True
            values[item.name] = float(v)
        self.store.finish_candidate(cid, objectives=values)
        algo.tell(cid, {o.name: values[o.name] for o in self.objectives} |
                  {c.name: values[c.name] for c in self.constraints})
        self._job_results.pop(cid, None)
        return True

    def _loop(self, algo: Algorithm, t_start: float) -> dict[str, Any]:
        cfg = self.config
        pending_train: set[int] = set()
        waiting_measure: set[int] = set()
        executor = cf.ThreadPoolExecutor(max_workers=cfg.train_workers, thread_name_prefix="train")
        timings: dict[str, float] = {"train": 0.0, "export": 0.0}

        # accuracy from a table and nothing to build: "training" is a dict look-up, done here
        # rather than in a training thread (two thread hand-overs per candidate saved)
        inline = self.accuracy_table is not None and not self.build_models

        def submit_train(cid: int, genome: Any) -> None:
            pending_train.add(cid)
            if inline:
                fut: cf.Future = cf.Future()
                try:
                    fut.set_result(self._train_and_export(cid, genome))
                except Exception as exc:  # noqa: BLE001 - reported through the future as below
                    fut.set_exception(exc)
                self._events.put(("trained", (cid, fut)))
                return
            fut = executor.submit(self._train_and_export, cid, genome)
            fut.add_done_callback(lambda f, cid=cid: self._events.put(("trained", (cid, f))))

        if self.resume:
            to_train, to_measure = self._replay(algo)
            for cid in to_train:
                submit_train(cid, algo.pending[cid].genome)
            for cid in to_measure:
                self._queue_jobs(cid)
                waiting_measure.add(cid)
                if self._maybe_finish(cid, algo):
                    waiting_measure.discard(cid)
            self.store.event("resumed", detail={"train": to_train, "measure": to_measure})

        proposed = len(self.store.candidates())
        bar = self._progress_bar(total=cfg.budget, initial=proposed - len(pending_train) - len(waiting_measure))

        def handle(kind: str, payload: Any) -> None:
            if kind == "trained":
                cid, fut = payload
                pending_train.discard(cid)
                try:
                    out = fut.result()
                except Exception as exc:  # noqa: BLE001 - a failed candidate is a value
                    msg = f"{type(exc).__name__}: {exc}"
                    self.store.fail_candidate(cid, f"build/train failed: {msg}")
                    algo.tell(cid, None)
                    self._cands.pop(cid, None)
                    self._advance(bar)
                    return
                timings["train"] += out["t_train"]
                timings["export"] += out.get("t_export", 0.0)
                jobs = [(_job_id(cid, k), k) for k in self.device_keys]
                self.store.set_trained(cid, train=out["train"], model_sha256=out["model_sha256"],
                                       params=out["params"], size_mb=out["size_mb"], jobs=jobs)
                self._cands[cid].update({k: out[k] for k in _CAND_FIELDS if k != "arch_key"})
                self._queue_jobs(cid, fresh=True)
                waiting_measure.add(cid)
                if self._maybe_finish(cid, algo):
                    waiting_measure.discard(cid)
                    self._advance(bar)
            elif kind == "measured":
                job, res, err = payload
                cid = job.candidate_id
                self._jobs_per_candidate.get(cid, set()).discard(job.device_key)
                if err is not None or res is None:
                    self._job_errors[cid] = f"measurement on {job.device_key} failed: {err}"
                else:
                    self._job_results.setdefault(cid, {})[job.device_key] = res
                if cid in waiting_measure and self._maybe_finish(cid, algo):
                    waiting_measure.discard(cid)
                    self._advance(bar)

        waiting: list[tuple[str, Any]] = []  # an event taken while blocking, handled next round
        try:
            while True:
                # One round = one transaction (Store.batch, group commit): the proposals, and the
                # events that are there now. It never blocks, since the agents' threads wait for
                # the store while it runs; the wait for the next event is outside it.
                handled = 0
                with self.store.batch():
                    # keep the trainers busy, but not so far ahead that measurements pile up
                    max_backlog = max(2, 2 * len(self.pool.agents))  # agents join and leave
                    while (len(pending_train) < cfg.train_workers and proposed < cfg.budget
                           and len(waiting_measure) <= max_backlog):
                        trial = algo.ask()
                        arch_key = self.space.key(trial.genome)
                        self.store.add_candidate(id=trial.number, arch_key=arch_key,
                                                 genome=self.space.to_json(trial.genome),
                                                 parents=trial.parents, origin=trial.origin)
                        self._cands[trial.number] = {"arch_key": arch_key}
                        proposed += 1
                        submit_train(trial.number, trial.genome)
                    finished = not pending_train and not waiting_measure
                    while not finished and handled < _ROUND_EVENTS:
                        if waiting:
                            event = waiting.pop()
                        else:
                            try:
                                event = self._events.get_nowait()
                            except queue.Empty:
                                break
                        handle(*event)
                        handled += 1
                if finished:
                    break
                if not handled:
                    try:
                        waiting.append(self._events.get(timeout=1.0))
                    except queue.Empty:
                        self._refresh(bar)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()
        counts = self.store.count()
        summary = {"run_dir": str(self.run_dir), "candidates": sum(counts.values()),
                   "done": counts.get("done", 0), "failed": counts.get("failed", 0),
                   "wall_s": time.perf_counter() - t_start, "train_s": timings["train"],
                   "export_s": timings["export"], "retries": self.pool.retries,
                   "pareto_size": len(self._pareto_ids())}
        self.store.event("search_finished", detail=summary)
        return summary

    # -- progress ---------------------------------------------------------------------------
    def _pareto_ids(self) -> list[int]:
        from search.reporting.results import pareto_ids

        return pareto_ids(self.store.candidates("done"), self.objectives, self.constraints)

    def _progress_bar(self, *, total: int, initial: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=max(0, initial), desc="hwnas search", unit="cand", dynamic_ncols=True)

    def _advance(self, bar) -> None:
        if bar is None:
            return
        bar.update(1)
        self._refresh(bar)

    def _refresh(self, bar) -> None:
        # rate-limited: the Pareto set over all done candidates is not recomputed per event
        if bar is None or time.monotonic() - getattr(self, "_last_refresh", 0.0) < 0.5:
            return
        self._last_refresh = time.monotonic()
        counts = self.store.count()
        bar.set_postfix(done=counts.get("done", 0), failed=counts.get("failed", 0),
                        front=len(self._pareto_ids()), queue=sum(self.pool.queue_depth().values()),
                        refresh=True)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self.registry is not None:
            self.registry.stop()
        if self.pool is not None:
            self.pool.close()
        if self._local_agent is not None:
            with contextlib.suppress(Exception):
                self._local_agent.stop()
        self.store.close()


def run_search(config: SearchConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Convenience: build a :class:`SearchRunner` and run it."""
    return SearchRunner(config=config, run_dir=run_dir, **kwargs).run()
