"""Training in worker processes: :class:`ProcessPoolTrainer`, the local executor.

Each worker is a process of the ``spawn`` context (a clean interpreter: no locks or CUDA state
copied from the server's threads) that, once at start, takes a device slot (one per visible GPU
on ``cuda``, ``train_workers`` CPU slots otherwise), sets its torch threads so the workers
together do not oversubscribe the cores (:mod:`search.training.devices`), and loads the run's
dataset. Every candidate then runs there through :class:`InProcessTrainer` (seeded build,
training, weights, ONNX into the run folder), and its per-epoch progress comes back through a
queue. A worker that dies fails the candidate it ran, with the reason, and the pool is rebuilt.

The training workers see the dataset's train and validation splits only
(:class:`TrainingSplits`); the test split stays with the server until the search has ended.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import SearchConfig
from search.training.evaluator import EvalRequest, Evaluation, InProcessTrainer, ProgressFn


@dataclass(frozen=True)
class TrainingSplits:
    """What trainers get of a dataset: train and validation splits, no test split."""

    name: str
    train: Any
    val: Any
    task: Any
    source: str

    @classmethod
    def of(cls, splits: Any) -> "TrainingSplits":
        """The training view of a loaded dataset."""
        return cls(name=splits.name, train=splits.train, val=splits.val, task=splits.task, source=splits.source)


def load_splits(config: SearchConfig) -> Any:
    """The run's dataset, as the config names it (raises the loader's errors)."""
    from search.training.data import load_dataset

    return load_dataset(config.dataset, root=config.data_root or None, seed=config.seed,
                        subset=config.subset or None)


def make_trainer(config: SearchConfig, splits: Any, *, run_dir: Path, export: bool, device: str,
                 threads: int, on_progress: ProgressFn | None = None) -> InProcessTrainer:
    """An :class:`InProcessTrainer` writing into ``run_dir``'s files (models, weights)."""
    from search.loop.setup import make_space  # it applies [train]'s epoch range to the space
    from search.loop.store import RunFiles

    files = RunFiles(Path(run_dir))
    (files.run_dir / "models").mkdir(parents=True, exist_ok=True)
    return InProcessTrainer(splits=TrainingSplits.of(splits), config=config, space=make_space(config),
                            model_path=files.model_path, weights_path=files.weights_path, export=export,
                            device=device, torch_threads=threads, on_progress=on_progress,
                            precision=config.build.precision)


# --------------------------------------------------------------------- inside a worker process
_WORKER: dict[str, Any] = {}


def _init_worker(config: SearchConfig, run_dir: str, export: bool, slots: Any, threads: int,
                 progress: Any) -> None:
    from search.training.devices import configure_worker

    device = slots.get()
    threads = threads if device == "cpu" else 1  # a GPU worker's CPU threads only feed the GPU
    configure_worker(device, threads, deterministic=config.train.deterministic)
    _WORKER["trainer"] = make_trainer(config, load_splits(config), run_dir=Path(run_dir), export=export,
                                      device=device, threads=threads,
                                      on_progress=lambda cid, record: progress.put((cid, {**record, "pid": os.getpid()})))


def _run(request: EvalRequest) -> Evaluation:
    return _WORKER["trainer"].evaluate(request)


def _run_untrained(request: EvalRequest) -> Evaluation:
    return _WORKER["trainer"].export_untrained(request)


# ------------------------------------------------------------------------------ the server side
class ProcessPoolTrainer:
    """The :class:`~search.training.evaluator.Evaluator` of the local executor: ``devices``
    (one entry per worker) of ``threads`` torch threads each; ``on_progress(cid, record)`` is
    called on a listener thread after every epoch of every candidate."""

    inline = False

    def __init__(self, *, config: SearchConfig, run_dir: str | Path, export: bool, devices: list[str],
                 threads: int, on_progress: ProgressFn | None = None, task: Any = None) -> None:
        #: the dataset's task (channels, size, classes): what the server's screener builds the
        #: untrained network for before a candidate reaches a worker (None: no screening)
        self.task = task
        self.config, self.run_dir, self.export = config, str(run_dir), export
        self.devices, self.threads = list(devices), threads
        self.capacity = len(self.devices)
        self.on_progress = on_progress
        self._ctx = mp.get_context("spawn")
        self._progress = self._ctx.Queue()
        self._slots = self._ctx.Queue()
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._listener = threading.Thread(target=self._listen, name="train-progress", daemon=True)
        self._listener.start()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        for device in self.devices:  # each worker takes one slot when it starts
            self._slots.put(device)
        return cf.ProcessPoolExecutor(max_workers=len(self.devices), mp_context=self._ctx,
                                      initializer=_init_worker,
                                      initargs=(self.config, self.run_dir, self.export, self._slots,
                                                self.threads, self._progress))

    def _listen(self) -> None:
        while True:
            item = self._progress.get()
            if item is None:
                return
            if self.on_progress is not None:
                self.on_progress(*item)

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Run the candidate in a worker; a worker that died fails it with the reason."""
        return self._call(_run, request)

    def export_untrained(self, request: EvalRequest) -> Evaluation:
        """Cost first: the untrained network exported in a worker (see ``_ModelEvaluator``)."""
        return self._call(_run_untrained, request)

    def _call(self, fn: Any, request: EvalRequest) -> Evaluation:
        with self._lock:
            pool = self._pool
        try:
            return pool.submit(fn, request).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:  # the first to notice rebuilds it
                    pool.shutdown(wait=False, cancel_futures=True)
                    while not self._slots.empty():
                        self._slots.get_nowait()
                    self._pool = self._new_pool()
            raise RuntimeError(f"training worker process died ({exc}); the pool was restarted") from None

    def close(self) -> None:
        """Stop the workers and the progress listener."""
        with self._lock:
            pool = self._pool
            # the executor's own join can wait forever on a worker that outlived a broken
            # predecessor pool (seen after a SIGKILLed worker): join with a deadline, then end it
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.join(timeout=30.0)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5.0)
        self._progress.put(None)
        self._listener.join(timeout=5.0)
        # a worker terminated while it wrote progress leaves the queue's cross-process write lock
        # held and a message half sent: neither the None above nor the interpreter's exit may
        # then wait for the queues' feeder threads (a CI run once hung there after the tests)
        self._progress.cancel_join_thread()
        self._slots.cancel_join_thread()
