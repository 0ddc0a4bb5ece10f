"""``hwnas train-final DIR``: retrain chosen Pareto members with their full schedule.

The search trains every candidate under its budget (``[train].max_epochs``, ``time_budget_s``,
early stopping). Final training spends the time where it counts: each chosen Pareto member
(the ``top`` most accurate on validation, or the given ids) is trained again from its seeded
initial weights for ``epochs`` (default: its genome's epochs), with its genome's schedule, no
time budget and no early stopping, keeping the last epoch's weights. Its weights are stored
(``final/<id>.pt``), its ONNX re-exported into the run's model store, its test accuracy
evaluated once, and the record kept as the candidate's ``final`` beside the search-time figures
(``val_accuracy``, ``test_accuracy``, ``epochs``), so the results, report and export show both.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from search.loop.store import Store
from search.spaces.base import TrainHParams


class FinalTrainingError(ValueError):
    """The run or the chosen candidates cannot be trained again (no such run, no candidate)."""


def choose(results: Sequence[dict[str, Any]], *, top: int | None, ids: Sequence[int] | None) -> list[dict]:
    """The candidates to retrain: ``ids`` (finished ones), else the ``top`` Pareto members by
    validation accuracy (all of them when ``top`` is None)."""
    done = {r["id"]: r for r in results if r["status"] == "done"}
    if ids:
        missing = sorted(set(ids) - set(done))
        if missing:
            raise FinalTrainingError(f"no finished candidates with ids {missing}")
        return [done[i] for i in ids]
    members = sorted((r for r in done.values() if r["pareto"]), key=lambda r: (-(r["val_accuracy"] or 0.0), r["id"]))
    if not members:
        raise FinalTrainingError("the run has no finished Pareto member to train")
    return members[:top] if top else members


def train_final(run_dir: str | Path, *, top: int | None = None, epochs: int | None = None,
                ids: Sequence[int] | None = None, device: str | None = None,
                log: Any = sys.stderr) -> list[dict[str, Any]]:
    """Retrain the chosen candidates of the run in ``run_dir``; their ``final`` records."""
    from search.loop.setup import lock_run, make_space, stored_config, training_device
    from search.reporting.results import collect
    from search.training.devices import configure_worker, cpu_threads
    from search.training.evaluator import EvalRequest
    from search.training.holdout import accuracy_on_test, read_test_split
    from search.training.workers import load_splits, make_trainer

    if epochs is not None and epochs < 1:
        raise FinalTrainingError(f"--epochs must be at least 1, got {epochs}")
    run = Path(run_dir)
    if not (run / "run.sqlite").is_file():
        raise FinalTrainingError(f"{run} holds no run (no run.sqlite)")
    lock = lock_run(run)  # not while a search (or another train-final) writes this run
    store = Store(run)
    try:
        config = stored_config(store, token_given=True)  # training needs no agent token
        if config.accuracy_table:
            raise FinalTrainingError("this run took its accuracies from a table; there is nothing to train")
        if device:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=device))
        dev = training_device(config)
        chosen = choose(collect(run), top=top, ids=ids)
        configure_worker(dev, cpu_threads(1, config.torch_threads), deterministic=config.train.deterministic)
        splits = load_splits(config)
        test = read_test_split(splits)
        space = make_space(config)

        def progress(cid: int, r: dict[str, float]) -> None:
            print(f"hwnas train-final: #{cid} epoch {int(r['epoch'])}/{int(r['epochs'])} val_accuracy "
                  f"{r['val_accuracy']:.4f} {r['images_per_s']:.0f} images/s", file=log, flush=True)

        trainer = make_trainer(config, splits, run_dir=run, export=True, device=dev,
                               threads=cpu_threads(1, config.torch_threads), on_progress=progress)
        trainer.weights_file = lambda cid: run / "final" / f"{cid}.pt"
        out = []
        for c in chosen:
            genome = space.from_json(c["genome"])
            hp = space.hparams(genome) or TrainHParams()
            n = epochs or hp.epochs
            t0 = time.perf_counter()
            ev, model = trainer.train(EvalRequest(candidate_id=c["id"], genome=genome, arch_key=c["arch_key"]),
                                      dataclasses.replace(hp, epochs=n), max_epochs=None, time_budget_s=None,
                                      patience=None, restore_best=False)
            t = ev.train
            last = t["history"][-1]
            record = {
                "epochs": n, "val_accuracy": last["val_accuracy"],
                "test_accuracy": None if test is None else accuracy_on_test(model, space, genome, splits, test, device=dev),
                "test_source": None if test is None else f"{len(test)} test images of {splits.source}",
                "model_sha256": ev.model_sha256, "onnx_path": f"models/{ev.model_sha256}.onnx",
                "weights": f"final/{c['id']}.pt", "params": ev.params, "size_mb": ev.size_mb,
                "train_time_s": t["train_time_s"], "images_per_s": t["images_per_s"], "device": t["device"],
                "hparams": t["hparams"], "history": t["history"], "wall_s": time.perf_counter() - t0,
                "search": {"val_accuracy": c["val_accuracy"], "test_accuracy": c["test_accuracy"],
                           "epochs": (c["train"] or {}).get("epochs")},
            }
            store.update_train(c["id"], final=record)
            store.event("final_trained", candidate_id=c["id"],
                        detail={k: record[k] for k in ("epochs", "val_accuracy", "test_accuracy", "model_sha256")})
            out.append({"id": c["id"], **record})
        return out
    finally:
        store.close()
        lock.release()
