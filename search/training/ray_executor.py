"""Training on a Ray cluster: :class:`RayTrainer`, the ``[train] executor = "ray"`` evaluator.

Each candidate's training is one Ray task with its resource request (``ray_num_cpus``,
``ray_num_gpus``); the dataset's train and validation splits are put into the object store
once and every task reads them from there. A task trains through the same
:class:`~search.training.evaluator.InProcessTrainer` as a local worker, in a temporary folder
of its node, and returns the evaluation with the files it wrote (ONNX, weights), which the
server writes into the run folder: nodes need no shared file system. A task whose worker
process or node is lost is run again by Ray up to ``ray_max_retries`` times; after that the
candidate fails with Ray's reason. ``--resume`` works as with the local executor (the store
holds what finished).

Ray is optional: ``pip install 'hwnas[ray]'``; every node needs hwnas and its dependencies
installed (the tasks import ``search``). Per-epoch progress is not sent back from Ray tasks.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from search.config import SearchConfig
from search.training.evaluator import EvalRequest, Evaluation, ProgressFn

INSTALL_HINT = "the Ray executor needs Ray: pip install 'hwnas[ray]' (or pip install ray)"


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _train_task(config: SearchConfig, splits: Any, request: EvalRequest, export: bool, device: str,
                threads: int) -> tuple[Evaluation, dict[str, bytes]]:
    """The Ray task: train in a temporary folder, return the evaluation and the files written."""
    import socket

    from search.training.devices import configure_worker
    from search.training.workers import make_trainer

    configure_worker(device, threads, deterministic=config.train.deterministic)
    with tempfile.TemporaryDirectory(prefix="hwnas-ray-") as tmp:
        ev = make_trainer(config, splits, run_dir=Path(tmp), export=export, device=device,
                          threads=threads).evaluate(request)
        ev.train["worker"]["node"] = socket.gethostname()
        files = {str(p.relative_to(tmp)): p.read_bytes()
                 for p in Path(tmp).rglob("*") if p.is_file() and p.suffix in (".onnx", ".pt")}
    return ev, files


class RayTrainer:
    """Trains candidates as Ray tasks on the cluster at ``[train].ray_address`` (empty: a Ray
    instance started in this process)."""

    inline = False

    def __init__(self, *, config: SearchConfig, splits: Any, run_dir: str | Path, export: bool,
                 device: str = "cpu", on_progress: ProgressFn | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        from search.training.workers import TrainingSplits

        del device, on_progress  # the task's device follows its GPU request; no epoch progress over Ray
        s = config.train
        self.config, self.run_dir, self.export = config, Path(run_dir), export
        self._ray = ray
        ray.init(address=s.ray_address or None, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False, configure_logging=False)
        self._splits = ray.put(TrainingSplits.of(splits))  # shipped once, read by every task
        self.task = splits.task  # for the server's screener (it builds untrained networks)
        self.task_device = "cuda" if s.ray_num_gpus > 0 else "cpu"
        self.threads = max(1, int(s.ray_num_cpus))
        self._task = ray.remote(_train_task).options(
            num_cpus=s.ray_num_cpus, num_gpus=s.ray_num_gpus, max_retries=s.ray_max_retries,
            retry_exceptions=False, name="hwnas-train")
        res = ray.cluster_resources()
        want, have = (s.ray_num_gpus, res.get("GPU", 0.0)) if s.ray_num_gpus > 0 else (s.ray_num_cpus, res.get("CPU", 0.0))
        if have < want:
            raise RuntimeError(f"the Ray cluster has {have:g} {'GPU' if s.ray_num_gpus > 0 else 'CPU'}, "
                               f"a training asks for {want:g}")
        self.capacity = max(1, int(have // want)) if want > 0 else config.train_workers
        self._task_spec = splits.task

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """One Ray task; its files are written into the run folder."""
        ray = self._ray
        ref = self._task.remote(self.config, self._splits, request, self.export, self.task_device, self.threads)
        try:
            ev, files = ray.get(ref)
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(f"Ray training failed after up to {self.config.train.ray_max_retries} "
                               f"retries: {type(exc).__name__}: {first}") from None
        for rel, data in files.items():
            path = self.run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        ev.train["executor"] = "ray"
        return ev

    def export_untrained(self, request: EvalRequest) -> Evaluation:
        """Cost first: the untrained network is built and exported here (no training, no task)."""
        from search.loop.setup import make_space
        from search.loop.store import RunFiles
        from search.training.evaluator import _ModelEvaluator

        exporter = _ModelEvaluator(space=make_space(self.config), task=self._task_spec,
                                   model_path=RunFiles(self.run_dir).model_path, build=True, export=True,
                                   precision=self.config.build.precision)
        return exporter.export_untrained(request)

    def close(self) -> None:
        """Disconnect from the cluster (a cluster started here stops)."""
        self._ray.shutdown()
