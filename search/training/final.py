"""``hwnas train-final DIR``: retrain chosen Pareto members with their full schedule.

The search trains every candidate under its budget (``[train].max_epochs``, ``time_budget_s``,
early stopping). Final training spends the time where it counts: each chosen Pareto member
(the ``top`` most accurate on validation, or the given ids) is trained again from its seeded
initial weights for ``epochs`` (default: its genome's epochs), with its genome's schedule, no
time budget and no early stopping, keeping the last epoch's weights. Its weights are stored
(``final/<id>.pt``), its ONNX re-exported into the run's model store, its test accuracy
evaluated once, and the record kept as the candidate's ``final`` beside the search-time figures
(``val_accuracy``, ``test_accuracy``, ``epochs``), so the results, report and export show both.

``subset`` trains on more (or all) of the data than the search did (the search usually runs on
a subset). ``early_bird`` (Early-Bird tickets, You et al. 2020) draws the ticket during the
first epochs, prunes the network to it and trains the smaller ticket for the epochs left: the
record's ``early_bird`` says when it was drawn, both parameter counts and the time of each
phase. The ticket is a different network from the one the agents measured: its device costs
are not measured (export says so).
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
                ids: Sequence[int] | None = None, device: str | None = None, subset: int | None = None,
                early_bird: bool = False, prune_ratio: float = 0.5, gamma_l1: float = 1e-4,
                eb_eps: float | None = None, eb_window: int | None = None,
                log: Any = None) -> list[dict[str, Any]]:
    """Retrain the chosen candidates of the run in ``run_dir``; their ``final`` records.

    ``subset``: images per split for this training (0: the whole split; None: the search's
    setting). ``early_bird``: train with the Early-Bird detector (eps and window: ``eb_eps`` and
    ``eb_window``, else ``[train]``'s early_bird_eps and early_bird_window,
    pruning ratio ``prune_ratio``, L1 ``gamma_l1`` on the batch-norm scales while it looks), prune
    to the ticket once drawn and train the ticket for the remaining epochs (``menndl`` space)."""
    from search.loop.setup import lock_run, make_space, stored_config, training_device
    from search.reporting.results import collect
    from search.training.devices import configure_worker, cpu_threads
    from search.training.evaluator import EvalRequest
    from search.training.holdout import accuracy_on_test, read_test_split
    from search.training.workers import load_splits, make_trainer

    log = sys.stderr if log is None else log  # looked up now: sys.stderr may have been replaced
    if epochs is not None and epochs < 1:
        raise FinalTrainingError(f"--epochs must be at least 1, got {epochs}")
    if subset is not None and subset < 0:
        raise FinalTrainingError(f"--subset must be 0 (the whole split) or more, got {subset}")
    if early_bird and not 0.0 < prune_ratio < 1.0:
        raise FinalTrainingError(f"--prune-ratio must be in (0, 1), got {prune_ratio}")
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
        if subset is not None:
            config = dataclasses.replace(config, subset=subset)
        if eb_eps is not None or eb_window is not None:
            config = dataclasses.replace(config, train=dataclasses.replace(
                config.train, early_bird_eps=config.train.early_bird_eps if eb_eps is None else eb_eps,
                early_bird_window=config.train.early_bird_window if eb_window is None else eb_window))
        if early_bird and config.space != "menndl":
            raise FinalTrainingError(f"--early-bird prunes menndl networks (conv layers with batch norm) to "
                                     f"their ticket; this run's space is {config.space!r}")
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
            request = EvalRequest(candidate_id=c["id"], genome=genome, arch_key=c["arch_key"])
            if early_bird:
                ev, model, genome, eb = _train_early_bird(trainer, request, dataclasses.replace(hp, epochs=n),
                                                          config=config, ratio=prune_ratio, gamma_l1=gamma_l1,
                                                          space=space, log=log)
            else:
                ev, model = trainer.train(request, dataclasses.replace(hp, epochs=n), max_epochs=None,
                                          time_budget_s=None, patience=None, restore_best=False)
                eb = None
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
                "train_images": t.get("train_images"), "subset": config.subset, "early_bird": eb,
            }
            store.update_train(c["id"], final=record)
            store.event("final_trained", candidate_id=c["id"],
                        detail={k: record[k] for k in ("epochs", "val_accuracy", "test_accuracy", "model_sha256")})
            out.append({"id": c["id"], **record})
        return out
    finally:
        store.close()
        lock.release()


def _train_early_bird(trainer: Any, request: Any, hp: TrainHParams, *, config: Any, ratio: float,
                      gamma_l1: float, space: Any, log: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Dense training with the Early-Bird detector until the ticket is drawn, then the pruned
    ticket (kept channels' weights copied) trained for the epochs left; ``(evaluation, model,
    genome, early-bird record)``. The evaluation, weights and ONNX are the ticket's; never drawn:
    the dense network trained for all epochs."""
    from search.training.earlybird import (EarlyBirdCallback, EarlyBirdDetector, EarlyBirdSettings,
                                           add_gamma_sparsity, build_ticket)
    from search.training.evaluator import allows_flip
    from search.training.exporting import count_params
    from search.training.train import train_candidate

    settings = EarlyBirdSettings(ratio=ratio, eps=config.train.early_bird_eps, window=config.train.early_bird_window)
    cb = EarlyBirdCallback(detector=EarlyBirdDetector(settings=settings))
    handles: list[Any] = []
    ev, dense = trainer.train(request, hp, max_epochs=None, time_budget_s=None, patience=None, restore_best=False,
                              callbacks=[cb], prepare=lambda m: handles.extend(add_gamma_sparsity(m, gamma_l1) if gamma_l1 else ()))
    for h in handles:
        h.remove()
    dense_train = ev.train
    done = int(dense_train["epochs"])
    record: dict[str, Any] = {
        "ratio": ratio, "eps": settings.eps, "window": settings.window, "gamma_l1": gamma_l1,
        "drawn_at_epoch": cb.detector.drawn_at, "distances": [round(d, 4) for d in cb.detector.distances],
        "dense_params": count_params(dense), "dense_epochs": done,
        "dense_phase_s": dense_train["train_time_s"], "ticket_train_s": 0.0,
    }
    if cb.detector.drawn_at is None or done >= hp.epochs:
        record.update(ticket_params=None, note="no ticket drawn within the epochs: the dense network was trained")
        print(f"hwnas train-final: #{request.candidate_id}: no Early-Bird ticket within {hp.epochs} epochs",
              file=log, flush=True)
        return ev, dense, request.genome, record
    t0 = time.perf_counter()
    genome, ticket = build_ticket(request.genome, dense, cb.detector.mask, trainer.task)
    prune_s = time.perf_counter() - t0
    left = hp.epochs - done
    size = space.input_shape(genome, trainer.task)[-1]
    print(f"hwnas train-final: #{request.candidate_id}: Early-Bird ticket drawn at epoch {done}: "
          f"{record['dense_params']:,} -> {count_params(ticket):,} parameters; training it for {left} more epochs",
          file=log, flush=True)
    progress = trainer.on_progress
    res = train_candidate(ticket, trainer.splits, dataclasses.replace(hp, epochs=left), seed=trainer.seed + request.candidate_id,
                          patience=None, device=trainer.device, restore_best=False,
                          resize_to=size if size != trainer.task.image_size else None,
                          flip=allows_flip(trainer.splits),
                          on_epoch=None if progress is None else lambda r: progress(request.candidate_id, r))
    ticket.to("cpu")
    train = res.to_dict()
    # the whole final training: the dense epochs until the ticket, pruning, the ticket's epochs
    train["train_time_s"] = dense_train["train_time_s"] + prune_s + res.train_time_s
    train["history"] = dense_train["history"] + [{**h, "epoch": h["epoch"] + done, "ticket": True} for h in res.history]
    train["epochs"] = done + res.epochs
    train["accuracy"] = res.val_accuracy
    train["source"] = dense_train.get("source")
    images = (dense_train.get("train_images") or 0) + res.train_images
    train["train_images"] = images
    train["images_per_s"] = images / train["train_time_s"] if train["train_time_s"] > 0 else 0.0
    record.update(ticket_params=count_params(ticket), ticket_train_s=res.train_time_s, prune_s=prune_s,
                  ticket_genome=space.to_json(genome))
    if trainer.weights_file is not None:
        import torch

        torch.save(ticket.state_dict(), trainer.weights_file(request.candidate_id))
    out = trainer._package(dataclasses.replace(request, genome=genome, arch_key=space.key(genome)), ticket, train, train["train_time_s"])
    return out, ticket, genome, record
