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
from typing import Any, Callable, Protocol, Sequence

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
    #: budget of a fidelity rung (epochs, cumulative: search.loop.rungs); None = full fidelity
    fidelity: float | None = None
    #: the candidate's parents (trial numbers), for weight inheritance
    parents: tuple[int, ...] = ()


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
                 build: bool, export: bool, torch_threads: int = 1, precision: str = "fp32") -> None:
        self.space, self.task = space, task
        self.precision = precision
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
            train["memory"] = memory_record(data, precision=self.precision)
        out.timings = {"train_s": t_train, "export_s": time.perf_counter() - t1 if out.model_sha256 else 0.0}
        train["server_timings"] = dict(out.timings)
        return out


    def export_untrained(self, request: EvalRequest) -> Evaluation:
        """The untrained network exported (cost first: latency, memory and energy do not depend
        on the weights); ``train`` says so and holds no accuracy."""
        t0 = time.perf_counter()
        model = self._build(request.genome)
        train = {"accuracy": None, "fidelity": None,
                 "source": "untrained network exported to measure its costs first (no accuracy)"}
        ev = self._package(request, model, train, 0.0)
        ev.timings["export_s"] = time.perf_counter() - t0
        return ev


def memory_record(onnx_bytes: bytes, *, precision: str) -> dict[str, Any]:
    """The memory figures :mod:`search.memory` computes from an ONNX graph (kind ``computed``)."""
    from search.memory import PRECISION_BYTES, peak_activation_kb, weights_kb

    record = {"peak_activation_kb": peak_activation_kb(onnx_bytes), "weights_kb": None,
              "precision": precision, "batch": 1, "kind": "computed",
              "method": "search.memory: live tensors over the ONNX node order; parameters x bytes at the precision"}
    if precision in PRECISION_BYTES:
        record["weights_kb"] = weights_kb(onnx_bytes, precision=precision)
    else:  # e.g. "best": the builder picks per layer, so the bytes are known only after a build
        record["weights_kb_unavailable"] = f"precision {precision!r} is chosen per layer by the builder"
    return record



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
        #: where the trained weights go (not ``weights_path``: CheapTrainer's method has that name)
        self.weights_file = weights_path
        self.on_progress = on_progress
        self.capacity = config.train_workers

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Build (seeded by the candidate id), train with the search's budget, keep the weights, export."""
        cfg = self.settings
        return self.train(request, self.space.hparams(request.genome) or TrainHParams(), max_epochs=cfg.max_epochs,
                          time_budget_s=cfg.budget_s, patience=cfg.patience)[0]

    def train(self, request: EvalRequest, hparams: TrainHParams, *, max_epochs: int | None,
              time_budget_s: float | None, patience: int | None, restore_best: bool = True,
              callbacks: Sequence[Any] = (), prepare: Callable[[Any], Any] | None = None) -> tuple[Evaluation, Any]:
        """Build (seeded by the candidate id), train with ``hparams`` and these limits, save the
        weights to ``weights_path``, export; the evaluation and the trained model (on CPU).
        ``callbacks`` are per-epoch hooks (:func:`~search.training.train.train_candidate`);
        ``prepare`` is called with the built model before training (e.g. to add gradient hooks)."""
        import torch

        from search.training.train import train_candidate

        t0 = time.perf_counter()
        genome, seed = request.genome, self.seed + request.candidate_id
        with _SEED_LOCK:
            torch.manual_seed(seed)
            model = self._build(genome)
        if prepare is not None:
            prepare(model)
        size = self.space.input_shape(genome, self.task)[-1]
        progress = self.on_progress
        res = train_candidate(model, self.splits, hparams, max_epochs=max_epochs, time_budget_s=time_budget_s,
                              seed=seed, patience=patience, device=self.device, restore_best=restore_best,
                              resize_to=size if size != self.task.image_size else None, flip=allows_flip(self.splits),
                              on_epoch=None if progress is None else lambda r: progress(request.candidate_id, r),
                              callbacks=callbacks)
        train = res.to_dict()
        train["accuracy"] = res.val_accuracy
        train["source"] = f"trained on {self.splits.source}; accuracy on the validation split"
        train["worker"] = {"pid": os.getpid(), "torch_threads": torch.get_num_threads(), "device": self.device}
        model.to("cpu")
        if self.weights_file is not None:
            path = self.weights_file(request.candidate_id)
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


class SupernetEvaluator(_ModelEvaluator):
    """``--accuracy supernet:PATH``: a ``mobile`` sub-network's accuracy with weights inherited
    from a trained once-for-all supernet (batch norm recalibrated), no training; the exported
    ONNX is that network. Its fidelity is recorded as ``inherited weights``. The run's space
    must be the one the supernet was trained for, and accuracy is on the supernet's own
    validation split (:class:`~search.training.supernet_train.SupernetAccuracy`)."""

    def __init__(self, *, scorer: Any, path: str, space: SearchSpace, **kwargs: Any) -> None:
        from search.training.supernet import space_settings

        if space.name != "mobile" or space_settings(space) != space_settings(scorer.space):
            raise ValueError(f"supernet {path} covers the mobile space {space_settings(scorer.space)}, "
                             f"not this run's {space.name} space (set [search].space_options to match)")
        super().__init__(space=space, task=scorer.supernet.task, **kwargs)
        self.scorer, self.path = scorer, path
        self.lock = threading.Lock()  # one scorer: BN recalibration is not thread-safe

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Inherit, recalibrate, score on the validation split; export that network."""
        from search.training.train import evaluate

        t0 = time.perf_counter()
        g = request.genome
        with self.lock:
            net = self.scorer.network(g)
            acc = evaluate(net, self.scorer.splits.val, resize_to=g.resolution)
        train = {"accuracy": acc, "fidelity": {"kind": "inherited weights", "supernet": self.path,
                                               "supernet_done": self.scorer.done},
                 "source": f"weights inherited from supernet {self.path} (batch norm recalibrated), "
                           f"accuracy on the validation split of {self.scorer.splits.source}; not trained"}
        return self._package(request, net, train, time.perf_counter() - t0)
