"""Evaluators: how a candidate's genome becomes a trained result (accuracy, parameter count)
and, where the agents need one, an ONNX file in the run's model store.

The loop calls an :class:`Evaluator`; it does not know whether the accuracy came from training
or from a published table. Two implementations:

- :class:`InProcessTrainer`: builds the network, trains it in this process on the run's
  dataset, exports ONNX;
- :class:`TableEvaluator`: looks the accuracy up in an :class:`AccuracyTable`, and builds or
  exports the network only when an objective or an agent needs it.

The executors (:class:`~search.training.workers.ProcessPoolTrainer`: worker processes, one per
GPU; :class:`~search.training.ray_executor.RayTrainer`: Ray tasks) and tests implement the same
protocol: ``evaluate(request) -> Evaluation``, with ``inline`` saying whether the call is cheap
enough for the loop's own thread and ``capacity`` how many run at once.
``EvalRequest.fidelity`` is where a rung's budget goes.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from search.config import SearchConfig
from search.spaces.base import SearchSpace, TaskSpec, TrainHParams
from search.training.accuracy_table import AccuracyTable

#: the task a published table's accuracies belong to (NAS-Bench-201: CIFAR-10, 3x32x32, 10 classes);
#: only the built network's shape depends on it (parameter count, ONNX input)
TABLE_TASK = TaskSpec(in_channels=3, image_size=32, num_classes=10)


@dataclass(frozen=True)
class EvalRequest:
    """One candidate to evaluate."""

    candidate_id: int
    genome: Any
    arch_key: str
    #: budget of a fidelity rung (fraction of the full training); None = full fidelity
    fidelity: float | None = None


@dataclass
class Evaluation:
    """An evaluator's answer: the training record (``accuracy`` and ``source`` at least), the
    parameter count, the exported ONNX file's digest and size, and the time it took."""

    train: dict[str, Any]
    params: int | None = None
    size_mb: float | None = None
    model_sha256: str | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"train_s": 0.0, "export_s": 0.0})


class Evaluator(Protocol):
    """Genome -> :class:`Evaluation`. ``inline``: cheap enough to run on the loop's thread."""

    inline: bool
    #: evaluations it runs at once (the loop keeps that many in flight)
    capacity: int

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Evaluate one candidate; raise to fail it (the message becomes its error)."""
        ...


class _ModelEvaluator:
    """What both evaluators share: building the network, counting it, exporting ONNX."""

    inline = False
    capacity = 1

    def __init__(self, *, space: SearchSpace, task: TaskSpec, model_path: Callable[[str], Path],
                 build: bool, export: bool, torch_threads: int = 1) -> None:
        self.space, self.task = space, task
        self.model_path = model_path
        self.export = export
        self.build = build or export
        self.torch_threads = torch_threads

    def _build(self, genome: Any) -> Any:
        import torch  # only when a model is built: the import costs seconds of CPU

        torch.set_num_threads(self.torch_threads)
        return self.space.build(genome, self.task)

    def _package(self, request: EvalRequest, model: Any, train: dict[str, Any], t_train: float) -> Evaluation:
        """Count ``model``'s parameters and export it (when asked to) into the model store."""
        out = Evaluation(train=train)
        t1 = time.perf_counter()
        if model is not None:
            from search.training.exporting import count_params

            out.params = count_params(model)
        if model is not None and self.export:
            from search.training.exporting import export_onnx, sha256

            data = export_onnx(model, self.space.input_shape(request.genome, self.task),
                               metadata={"hwnas.space": self.space.name, "hwnas.arch_key": request.arch_key,
                                         "hwnas.candidate": str(request.candidate_id)})
            out.model_sha256 = digest = sha256(data)
            path = self.model_path(digest)
            if not path.exists():  # content-addressed: a second writer writes the same bytes
                tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            out.size_mb = len(data) / 1e6
        out.timings = {"train_s": t_train, "export_s": time.perf_counter() - t1 if out.model_sha256 else 0.0}
        train["server_timings"] = dict(out.timings)
        return out


#: the global torch RNG seeds a network's initial weights: one build at a time per process
_SEED_LOCK = threading.Lock()

#: progress callback: candidate id and the epoch's record (see ``train_candidate``'s ``on_epoch``)
ProgressFn = Callable[[int, dict[str, float]], None]


def allows_flip(splits: Any) -> bool:
    """Whether horizontal flips keep an image's class (not for digits)."""
    return not str(getattr(splits, "name", "")).startswith("digits")


class InProcessTrainer(_ModelEvaluator):
    """Trains each candidate in this process on ``device`` (the unit a training worker process
    runs; see :mod:`search.training.workers`): seeded build, training on ``splits.train`` with
    fitness on ``splits.val`` (never the test split), the trained weights kept under
    ``weights_path(candidate)``, ONNX export."""

    def __init__(self, *, splits: Any, config: SearchConfig, device: str = "cpu",
                 weights_path: Callable[[int], Path] | None = None, on_progress: ProgressFn | None = None,
                 torch_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(task=splits.task, build=True,
                         torch_threads=config.torch_threads if torch_threads is None else torch_threads, **kwargs)
        self.splits = splits
        self.settings = config.train
        self.seed = config.seed
        self.device = device
        self.weights_path = weights_path
        self.on_progress = on_progress
        self.capacity = config.train_workers

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Build (seeded by the candidate id), train with the search's budget, keep the weights, export."""
        cfg = self.settings
        return self.train(request, self.space.hparams(request.genome) or TrainHParams(), max_epochs=cfg.max_epochs,
                          time_budget_s=cfg.budget_s, patience=cfg.patience)[0]

    def train(self, request: EvalRequest, hparams: TrainHParams, *, max_epochs: int | None,
              time_budget_s: float | None, patience: int | None, restore_best: bool = True) -> tuple[Evaluation, Any]:
        """Build (seeded by the candidate id), train with ``hparams`` and these limits, save the
        weights to ``weights_path``, export; the evaluation and the trained model (on CPU)."""
        import torch

        from search.training.train import train_candidate

        t0 = time.perf_counter()
        genome, seed = request.genome, self.seed + request.candidate_id
        with _SEED_LOCK:
            torch.manual_seed(seed)
            model = self._build(genome)
        size = self.space.input_shape(genome, self.task)[-1]
        progress = self.on_progress
        res = train_candidate(model, self.splits, hparams, max_epochs=max_epochs, time_budget_s=time_budget_s,
                              seed=seed, patience=patience, device=self.device, restore_best=restore_best,
                              resize_to=size if size != self.task.image_size else None, flip=allows_flip(self.splits),
                              on_epoch=None if progress is None else lambda r: progress(request.candidate_id, r))
        train = res.to_dict()
        train["accuracy"] = res.val_accuracy
        train["source"] = f"trained on {self.splits.source}; accuracy on the validation split"
        train["worker"] = {"pid": os.getpid(), "torch_threads": torch.get_num_threads(), "device": self.device}
        model.to("cpu")
        if self.weights_path is not None:
            path = self.weights_path(request.candidate_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        return self._package(request, model, train, time.perf_counter() - t0), model


class TableEvaluator(_ModelEvaluator):
    """Accuracy from a published table; the network is built only for ``params``/``size_mb`` or
    for agents that run the ONNX file."""

    def __init__(self, *, table: AccuracyTable, task: TaskSpec = TABLE_TASK, **kwargs: Any) -> None:
        super().__init__(task=task, **kwargs)
        self.table = table
        # nothing to build: "training" is a dict look-up, done on the loop's thread rather than
        # in a training thread (two thread hand-overs per candidate saved)
        self.inline = not self.build

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Look the accuracy up; build and export when configured to."""
        t0 = time.perf_counter()
        train = {"accuracy": self.table.lookup(request.arch_key), "source": self.table.source}
        model = self._build(request.genome) if self.build else None
        return self._package(request, model, train, time.perf_counter() - t0)
