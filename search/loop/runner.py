"""The search loop: ask -> evaluate (train + export ONNX) -> measure on every device key -> tell.

It runs asynchronously (steady state): evaluations run in a worker pool while agents measure
earlier candidates, and a new candidate is asked for as soon as an evaluation slot is free, so
neither the trainers nor the agents wait for a generation to finish. Everything goes through the
:class:`~search.loop.store.Store` first, so a killed server resumes where it stopped: finished
trainings and measurements are kept, in-flight work is issued again.

The pieces it drives: :mod:`search.loop.setup` (store, fleet, objectives, evaluator),
:class:`~search.loop.tracker.CandidateTracker` (each candidate's state and its one finish and
one fail path), an :class:`~search.training.evaluator.Evaluator` and the
:class:`~search.fleet.pool.AgentPool`. Agent threads and training threads only put events on a
queue; the loop's thread alone changes the tracker and the algorithm.
"""
from __future__ import annotations

import concurrent.futures as cf
import errno
import queue
import threading
import time
from pathlib import Path
from typing import Any

from search.algorithms.base import AlgorithmOptions, create_algorithm
from search.config import SearchConfig
from search.fleet.pool import MeasureJob
from search.loop.progress import SearchProgress
from search.loop.setup import (Fleet, RegistrySettings, SearchError, accuracy_source, check_new_run, describe_source,
                               lock_run, make_evaluator, open_run, preflight, resume_config, training_device)
from search.loop.store import StoreError
from search.loop.rungs import RungLadder
from search.loop.screening import RunPredictor, Verdict
from search.metrics import ONNX_METRICS
from search.loop.resume import replay_store
from search.loop.tracker import Candidate, CandidateTracker, State, job_id
from search.objectives import split_metric
from search.training.evaluator import EvalRequest, Evaluator

__all__ = ["SearchError", "SearchRunner", "run_search"]

#: most events handled in one store transaction of the loop (keeps the agents' threads' wait short)
_ROUND_EVENTS = 32
#: a write that failed for these stops the search (a full or read-only disk), not the candidate
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class SearchRunner:
    """Runs (or resumes) one search in ``run_dir``. ``evaluator``: use this one instead of the
    config's (training or accuracy table); ``started`` is set once the fleet is up."""

    def __init__(self, *, config: SearchConfig | None, run_dir: str | Path, resume: bool = False,
                 agents: list[str] | None = None, progress: bool = True, local_agent_args: tuple[str, ...] = (),
                 registry_port: int | None = None, registry_host: str = "127.0.0.1",
                 registry_tls: dict[str, str] | None = None, heartbeat_s: float = 2.0,
                 wait_agents_s: float = 120.0, evaluator: Evaluator | None = None,
                 progress_every_s: float = 30.0) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = SearchProgress(show=progress, every_s=progress_every_s, figures=self._figures)
        registry = None
        if registry_port is not None:
            tls = tuple((k, v) for k, v in (registry_tls or {}).items() if v)
            registry = RegistrySettings(port=registry_port, host=registry_host, tls=tls, heartbeat_s=heartbeat_s)
        # every check that needs no agent comes before the run directory is created or locked,
        # so a failed start leaves nothing behind (a retry with the same --out works)
        if config is None and resume:
            config = resume_config(self.run_dir, token_given=False)
        assert config is not None
        self.space = preflight(config, registry=registry)
        self._source = accuracy_source(config) if evaluator is None else None
        if self._source is not None and not config.accuracy_table:
            training_device(config)  # an absent GPU (or Ray) fails before anything is started
            if not resume:  # where hwnas trains, every epoch gene must have an effect
                check_new_run(config)
        self._run_lock = lock_run(self.run_dir)  # one process per run directory, freed at exit
        try:
            self.store, self.config = open_run(self.run_dir, config, resume=resume)
            if self.config.predictor.enabled:  # validate() turns the agents' layer profiles on
                self.config = self.config.validate()
            self._init_fleet(agents, registry, local_agent_args, wait_agents_s)
        except BaseException:
            if hasattr(self, "store"):
                self.store.close()
            self._run_lock.release()
            raise
        self.evaluator = evaluator
        self.tracker: CandidateTracker | None = None
        #: cost models and screening, with [predictor] enabled
        self.predictor: RunPredictor | None = None
        #: fidelity rungs ([fidelity]), when on
        self.ladder: RungLadder | None = None
        self.device_keys: list[str] = []
        self.started = threading.Event()
        self.timings = {"train_s": 0.0, "export_s": 0.0}
        self._executor: cf.ThreadPoolExecutor | None = None
        self._closed = threading.Event()

    def _init_fleet(self, agents: list[str] | None, registry: RegistrySettings | None,
                    local_agent_args: tuple[str, ...], wait_agents_s: float) -> None:
        # the agents are stored (not their token): a resume without --agent measures on them again
        addresses = list(agents) if agents is not None else None
        if addresses is None and self.resume:
            addresses = self.store.get_meta("agents")
        if addresses is None:
            addresses = list(self.config.agents.addresses)
        self._addresses = list(addresses)
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.fleet = Fleet(store=self.store, config=self.config, addresses=list(addresses),
                           on_done=lambda job, res, err: self._events.put(("measured", (job, res, err))),
                           registry=registry, local_agent_args=local_agent_args, wait_agents_s=wait_agents_s,
                           on_fatal=lambda exc: self._events.put(("fatal", exc)))

    @property
    def pool(self):
        """The run's :class:`~search.fleet.pool.AgentPool`."""
        return self.fleet.pool

    @property
    def registry(self):
        """The agent registry server, when the run serves one."""
        return self.fleet.registry

    @property
    def models(self):
        """The run's :class:`~search.costmodel.fleet.FleetModels` (None without [predictor])."""
        return self.predictor.models if self.predictor is not None else None

    @property
    def closed_count(self) -> int:
        """Candidates finished or failed in this process."""
        return self.progress.closed_count

    def wait_closed(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` candidates have finished or failed in this process; False on timeout."""
        return self.progress.wait_closed(n, timeout)

    # -- set-up -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the search to its budget; the summary (also stored as ``search_finished``)."""
        cfg = self.config
        t_start = time.perf_counter()
        source = self._source
        if source is not None:  # the report's floor and split sizes
            self.store.set_meta("dataset", describe_source(source))
        try:
            objectives, constraints, self.device_keys = self.fleet.bind(cfg, self.fleet.start())
            self.store.set_meta("agents", self._addresses)  # stored once they measure for the run
            if self.evaluator is None:
                # a table-backed fleet measures by architecture key and needs no ONNX file, unless
                # an objective or constraint is the ONNX size; the parameter count needs the model
                # built (not exported)
                server_metrics = {split_metric(i.name)[0] for i in [*objectives, *constraints]}
                export = bool(server_metrics & ONNX_METRICS) or self.fleet.runs_onnx()
                self.evaluator = make_evaluator(
                    cfg, source, self.space, self.store, export=export, build=export or "params" in server_metrics,
                    on_progress=lambda cid, record: self._events.put(("progress", (cid, record))))
            algo = create_algorithm(cfg.algorithm, AlgorithmOptions(
                space=self.space, objectives=tuple(objectives), constraints=tuple(constraints),
                seed=cfg.seed, population_size=cfg.population_size))
            if cfg.fidelity.enabled:
                self.ladder = RungLadder(rungs=cfg.fidelity.rungs, eta=cfg.fidelity.eta, objectives=objectives,
                                         constraints=constraints)
            self.tracker = CandidateTracker(store=self.store, algorithm=algo, objectives=objectives,
                                            constraints=constraints, on_closed=self.progress.candidate_closed)
            if cfg.predictor.enabled:
                self.predictor = RunPredictor(
                    config=cfg, store=self.store, space=self.space, evaluator=self.evaluator, objectives=objectives,
                    constraints=constraints, note=lambda *note: self._events.put(("note", note)))
            self.started.set()
            summary = self._loop(t_start)
            if source is not None and not cfg.accuracy_table:
                summary["test"] = self._test_front()
            return summary
        finally:
            self.close()

    # -- the candidate's way ----------------------------------------------------------------
    def _evaluate(self, cid: int) -> None:
        """Hand a proposed candidate to the evaluator (inline, or in a training thread); cost
        first: export its untrained network to be measured before any training."""
        cand = self.tracker[cid]
        self.tracker.training(cid)
        if self.config.cost_first and hasattr(self.evaluator, "export_untrained"):
            cand.costs_only = True
            self._submit(cid, self.evaluator.export_untrained)
        else:
            self._submit(cid, self.evaluator.evaluate)

    def _submit(self, cid: int, fn: Any) -> None:
        """Run ``fn(request)`` for the candidate at its rung's budget; its answer comes back as
        a ``trained`` event."""
        cand = self.tracker[cid]
        fidelity = float(self.ladder.epochs(cand.rung)) if self.ladder is not None else None
        parents = tuple(self.store.candidate(cid)["parents"]) if self.config.train.inherit_weights else ()
        request = EvalRequest(candidate_id=cid, genome=cand.genome, arch_key=cand.arch_key, fidelity=fidelity,
                              parents=parents)
        if self.evaluator.inline:
            fut: cf.Future = cf.Future()
            try:
                fut.set_result(fn(request))
            except Exception as exc:  # noqa: BLE001 - reported through the future as below
                fut.set_exception(exc)
            self._events.put(("trained", (cid, fut)))
            return
        screener = self.predictor.screener if self.predictor is not None else None
        if screener is not None and fn == self.evaluator.evaluate and cand.rung == 0 and not cand.results:
            fn = self.predictor.screen_then_evaluate  # only before a first training, with no cost measured yet
        fut = self._executor.submit(fn, request)
        fut.add_done_callback(lambda f, cid=cid: self._events.put(("trained", (cid, f))))

    def _trained(self, cid: int, fut: cf.Future) -> None:
        self.progress.trained(cid)
        try:
            ev = fut.result()
        except Exception as exc:  # noqa: BLE001 - a failed candidate is a value
            if isinstance(exc, OSError) and exc.errno in _NO_SPACE:  # not the candidate's fault
                raise SearchError(f"cannot write candidate {cid}'s model: {exc}; free space, then "
                                  f"hwnas search --resume {self.run_dir}") from None
            self.tracker.fail(cid, f"build/train failed: {type(exc).__name__}: {exc}")
            return
        if isinstance(ev, Verdict):
            self.tracker.screen(cid, prediction=ev.prediction, reason=ev.reason)
            return
        if isinstance(ev, tuple):  # from RunPredictor.screen_then_evaluate
            ev, verdict = ev
            self.predictor.let_through(cid, verdict)
        for k in self.timings:
            self.timings[k] += ev.timings.get(k, 0.0)
        cand = self.tracker[cid]
        if self.ladder is not None and not cand.costs_only:
            ev.train["rungs"] = [*(cand.train or {}).get("rungs", []), {
                "rung": cand.rung, "epochs": self.ladder.epochs(cand.rung), "accuracy": ev.train.get("accuracy"),
                "train_time_s": ev.timings.get("train_s", 0.0)}]
        # costs do not depend on the weights: a key measured already (cost first, a lower rung) is not measured again
        keys = [k for k in self.device_keys if k not in cand.results]
        self.tracker.trained(cid, train=ev.train, params=ev.params, size_mb=ev.size_mb,
                             model_sha256=ev.model_sha256, device_keys=keys)
        if cand.costs_only:
            self._measure_again(cid)  # on resume, jobs measured before are kept
        else:
            self._measure(cand, {k: job_id(cid, k) for k in keys})

    def _costs_known(self, cid: int) -> None:
        """Cost first: the untrained network is measured; infeasible, or on to training."""
        tracker = self.tracker
        values, err = tracker.values(cid, costs_only=True)
        if err is not None:
            tracker.fail(cid, err)
            return
        over = [c for c in tracker.constraints if c.name in values and c.violation(values[c.name]) > 0]
        if over:
            reason = "before training, the untrained network violates " + "; ".join(
                f"{c.name} {c.op} {c.bound:g} ({c.name} = {values[c.name]:.4g})" for c in over)
            tracker.infeasible(cid, values, reason)
            return
        tracker.train_on(cid)
        self._submit(cid, self.evaluator.evaluate)

    def _settle(self, cid: int) -> None:
        """Every measurement of the candidate is back: cost-first decision, rung promotion, or close."""
        tracker = self.tracker
        if tracker.costs_measured(cid):
            self._costs_known(cid)
            return
        cand = tracker[cid] if cid in tracker else None
        if (self.ladder is not None and cand is not None and cand.state is State.MEASURING and not cand.pending
                and cand.error is None):
            values, err = tracker.values(cid)
            if err is None and self.ladder.record(cand.rung, cid, values):
                tracker.promote(cid, cand.rung + 1)
                tracker.training_again(cid)
                self._submit(cid, self.evaluator.evaluate)
                return
        tracker.settle(cid)

    def _measure(self, cand: Candidate, jobs: dict[str, str]) -> None:
        """Send the candidate's jobs (device key -> job id) to the pool; close it if none is left."""
        self.tracker.measuring(cand.id, jobs)
        path = self.store.model_path(cand.model_sha256) if cand.model_sha256 else None
        for key, jid in jobs.items():
            self.pool.submit(MeasureJob(job_id=jid, candidate_id=cand.id, device_key=key, model_path=path,
                                        model_sha256=cand.model_sha256, arch_key=cand.arch_key,
                                        space=self.space.name))
        self._settle(cand.id)

    def _measured(self, job: MeasureJob, result: dict[str, Any] | None, error: str | None) -> None:
        if result is not None and error is None and self.predictor is not None:
            self.predictor.learn(job.candidate_id, job.device_key, result)
        self.tracker.measured(job.candidate_id, job.device_key, result, error)
        self._settle(job.candidate_id)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "trained":
            self._trained(*payload)
        elif kind == "progress":
            cid, record = payload
            # a record that arrives after the training's result is dropped (it would linger)
            if cid in self.tracker and self.tracker[cid].state is State.TRAINING:
                self.progress.epoch(cid, record)
        elif kind == "note":
            what, cid, detail = payload
            self.store.event(what, candidate_id=cid, detail={"error": detail})
        elif kind == "measured":
            self._measured(*payload)
        else:  # "fatal": an agent worker met an error it cannot handle; the search stops
            if isinstance(payload, (StoreError, SearchError)):
                raise payload
            raise SearchError(f"an agent worker stopped: {type(payload).__name__}: {payload}")

    def _propose(self) -> None:
        trial = self.tracker.algorithm.ask()
        arch_key = self.space.key(trial.genome)
        self.store.add_candidate(id=trial.number, arch_key=arch_key, genome=self.space.to_json(trial.genome),
                                 parents=trial.parents, origin=trial.origin)
        self.tracker.add(trial.number, trial.genome, arch_key)
        self._evaluate(trial.number)

    # -- resume -----------------------------------------------------------------------------
    def _replay(self) -> None:
        """Feed a resumed store to the algorithm; evaluate or measure again what was in flight."""
        plan = replay_store(self.store, self.tracker, self.space, self.ladder)
        for c in plan.promote:
            self._train_promoted(c)
        for cid in plan.train:
            self._evaluate(cid)
        for cid in plan.measure:
            self._measure_again(cid)
        self.store.event("resumed", detail={"train": plan.train, "measure": plan.measure,
                                            "promoted": [c["id"] for c in plan.promote]})

    def _train_promoted(self, c: dict[str, Any]) -> None:
        """A resumed promoted candidate: its measured costs back, training on at its next rung
        from the weights it saved."""
        cand = self.tracker.add(c["id"], self.space.from_json(c["genome"]), c["arch_key"], row=c)
        cand.rung = c["train"]["rungs"][-1]["rung"] + 1
        cand.results = {m["device_key"]: m["result"] for m in self.store.measurements(c["id"], ok_only=True)}
        self.tracker.training(c["id"])
        self._submit(c["id"], self.evaluator.evaluate)

    def _measure_again(self, cid: int) -> None:
        """A resumed trained candidate: keep its finished jobs, issue the others again."""
        jobs, finished = {}, []
        for j in self.store.jobs(candidate_id=cid):
            if j["state"] in ("done", "failed"):
                finished.append(j)
                continue
            if j["state"] == "leased":  # in flight when the server stopped: issue again
                self.store.requeue_job(j["id"], reason="server restarted")
            jobs[j["device_key"]] = j["id"]
        ok = {m["job_id"]: m["result"] for m in self.store.measurements(cid, ok_only=True)}
        for j in finished:
            error = None if j["state"] == "done" else (j["error"] or "measurement failed")
            self.tracker.measured(cid, j["device_key"], ok.get(j["id"]), error)
        self._measure(self.tracker[cid], jobs)

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self, t_start: float) -> dict[str, Any]:
        cfg, tracker = self.config, self.tracker
        capacity = int(getattr(self.evaluator, "capacity", cfg.train_workers))
        self._executor = cf.ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="train")
        proposed = len(self.store.candidates())
        if self.resume:
            self._replay()
        self.progress.open(total=cfg.budget, initial=proposed - len(tracker))
        waiting: list[tuple[str, Any]] = []  # an event taken while blocking, handled next round
        deadline = t_start + cfg.max_wall_s if cfg.max_wall_s else None
        out_of_time = False
        try:
            while True:
                # One round = one transaction (Store.batch, group commit): the proposals, and the
                # events that are there now. It never blocks, since the agents' threads wait for
                # the store while it runs; the wait for the next event is outside it.
                handled = 0
                with self.store.batch():
                    # keep the trainers busy, but not so far ahead that measurements pile up
                    max_backlog = max(2, 2 * len(self.pool.agents))  # agents join and leave
                    if deadline is not None and not out_of_time and time.perf_counter() >= deadline:
                        out_of_time = True  # [search].max_wall_s: no new candidate; those in flight finish
                        self.store.event("wall_limit", detail={"max_wall_s": cfg.max_wall_s, "proposed": proposed})
                    while (not out_of_time and tracker.count(State.TRAINING) < capacity and proposed < cfg.budget
                           and tracker.count(State.MEASURING) <= max_backlog):
                        self._propose()
                        proposed += 1
                    finished = len(tracker) == 0
                    while not finished and handled < _ROUND_EVENTS:
                        try:
                            event = waiting.pop() if waiting else self._events.get_nowait()
                        except queue.Empty:
                            break
                        self._handle(*event)
                        handled += 1
                if finished:
                    break
                if not handled:
                    try:
                        waiting.append(self._events.get(timeout=1.0))
                    except queue.Empty:
                        self.progress.refresh()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self.progress.close()
        counts = self.store.count()
        summary = {"run_dir": str(self.run_dir), "candidates": sum(counts.values()),
                   "done": counts.get("done", 0), "failed": counts.get("failed", 0),
                   "screened": counts.get("screened", 0),
                   "infeasible": counts.get("infeasible", 0),
                   "wall_s": time.perf_counter() - t_start, "train_s": self.timings["train_s"],
                   "export_s": self.timings["export_s"], "retries": self.pool.retries,
                   "pareto_size": len(self._pareto_ids()),
                   "stopped_by": "max_wall_s" if out_of_time else "budget"}
        self.store.event("search_finished", detail=summary)
        return summary

    def _test_front(self) -> dict[str, Any]:
        """After the search: the test accuracy of every Pareto member, once (never selection)."""
        from search.training.holdout import evaluate_on_test

        try:
            out = evaluate_on_test(store=self.store, space=self.space, splits=self._source,
                                   ids=self._pareto_ids(), device=training_device(self.config))
        except (ValueError, OSError, RuntimeError) as exc:  # the search's results stay as they are
            self.store.event("test_failed", detail={"error": f"{type(exc).__name__}: {exc}"})
            return {"error": f"test split not evaluated: {type(exc).__name__}: {exc}"}
        return {"evaluated": len(out["evaluated"]), "skipped": out["skipped"], "test_images": out["test_images"]}

    # -- progress ---------------------------------------------------------------------------
    def _pareto_ids(self) -> list[int]:
        from search.reporting.results import pareto_ids

        return pareto_ids(self.store.candidates("done"), self.tracker.objectives, self.tracker.constraints)

    def _figures(self) -> dict[str, Any]:
        """The progress line's figures."""
        counts = self.store.count()
        return {"done": counts.get("done", 0), "failed": counts.get("failed", 0), "front": len(self._pareto_ids()),
                "queue": sum(self.pool.queue_depth().values())}

    def close(self) -> None:
        """Stop the fleet and close the store (once)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.predictor is not None:
            self.predictor.close()
        try:
            closer = getattr(self.evaluator, "close", None)
            if closer is not None:
                closer()
            self.fleet.close()
            self.store.close()
        finally:
            self._run_lock.release()


def run_search(config: SearchConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Convenience: build a :class:`SearchRunner` and run it."""
    return SearchRunner(config=config, run_dir=run_dir, **kwargs).run()
