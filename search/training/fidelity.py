"""Cheaper training of a candidate in the loop (issue 11): fidelity rungs that continue from the
last rung's weights, the Early-Bird ticket as an early-stop signal, and weights inherited from a
parent.

:class:`CheapTrainer` is an :class:`~search.training.evaluator.InProcessTrainer` that keeps every
candidate's trained state in ``weights_dir/<candidate>.pt`` (the model's ``state_dict``, the
epochs trained so far and the Early-Bird detector's mask history):

- ``EvalRequest.fidelity`` = a rung's budget in epochs, cumulative (:mod:`search.loop.rungs`): a
  candidate with a saved state trains on from it for the difference; the rung's budget replaces
  the genome's epoch gene, and there is no patience stop inside a rung (the rung is the budget).
- ``[train] early_bird``: :class:`~search.training.earlybird.EarlyBirdCallback` stops training once
  the channel mask from the batch-norm scaling factors has stopped moving (``early_bird_window``
  successive distances below ``early_bird_eps``); the mask history carries over between rungs.
- ``[train] inherit_weights``: a new candidate starts from its first parent's saved weights,
  tensor by tensor where name and shape agree (the rest keep their fresh initialisation); the
  record says how many tensors were inherited.

Every training record says its fidelity: ``train["fidelity"] = {"kind": "epochs", "epochs": E,
"budget": B}`` (E trained in total, B the rung's budget or None for the full training).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

from search.spaces.base import TrainHParams
from search.training.evaluator import EvalRequest, Evaluation, InProcessTrainer


def early_bird_callback(settings: Any, *, stop: bool = True) -> Any:
    """An :class:`~search.training.earlybird.EarlyBirdCallback` from ``[train]``'s early_bird_*
    settings (also the hook for final training: ``train_candidate(..., callbacks=[...])``)."""
    from search.training.earlybird import EarlyBirdCallback, EarlyBirdDetector, EarlyBirdSettings

    det = EarlyBirdDetector(settings=EarlyBirdSettings(eps=settings.early_bird_eps, window=settings.early_bird_window))
    return EarlyBirdCallback(detector=det, stop=stop)


class CheapTrainer(InProcessTrainer):
    """:class:`InProcessTrainer` with rungs, Early-Bird stop and inherited weights (module docstring)."""

    def __init__(self, *, weights_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights_dir = Path(weights_dir)
        self.weights_dir.mkdir(parents=True, exist_ok=True)

    def weights_path(self, cid: int) -> Path:
        """Where candidate ``cid``'s trained state is kept."""
        return self.weights_dir / f"{cid}.pt"

    def _load(self, cid: int) -> dict[str, Any] | None:
        import torch

        path = self.weights_path(cid)
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    def _save(self, cid: int, state: dict[str, Any]) -> None:
        import torch

        path = self.weights_path(cid)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    def _inherit(self, model: Any, parents: tuple[int, ...]) -> dict[str, Any] | None:
        """Copy the first saved parent's tensors whose name and shape agree into ``model``."""
        for pid in parents:
            saved = self._load(pid)
            if saved is None:  # the parent is still training (asynchronous loop) or failed
                continue
            own = model.state_dict()
            same = {k: v for k, v in saved["model"].items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(same, strict=False)
            return {"parent": pid, "tensors": len(same), "of": len(own)}
        return None

    def _early_bird(self, saved: dict[str, Any] | None) -> Any:
        cb = early_bird_callback(self.settings)
        for k, v in ((saved or {}).get("early_bird") or {}).items():
            setattr(cb.detector, k, v)  # the mask history of the lower rungs
        return cb

    def evaluate(self, request: EvalRequest) -> Evaluation:
        """Train at the request's fidelity (from the saved state when there is one), save, export."""
        from search.training.train import train_candidate

        t0 = time.perf_counter()
        cfg, cid, genome = self.settings, request.candidate_id, request.genome
        model = self._build(genome)
        hp = self.space.hparams(genome) or TrainHParams()
        saved = self._load(cid) if request.fidelity is not None else None
        if saved is not None and int(saved["epochs"]) >= request.fidelity:
            saved = None  # not a lower rung's state (a resumed run redoing its first rung): start afresh
        done = int(saved["epochs"]) if saved else 0
        extra: dict[str, Any] = {}
        if saved is not None:
            model.load_state_dict(saved["model"])
        elif cfg.inherit_weights and request.parents:
            extra["inherited"] = self._inherit(model, request.parents)
        if request.fidelity is not None:
            epochs = max(1, int(request.fidelity) - done)
            hp, max_epochs, patience = dataclasses.replace(hp, epochs=epochs), epochs, epochs
        else:
            max_epochs, patience = cfg.max_epochs, cfg.patience
        callbacks = [self._early_bird(saved)] if cfg.early_bird else []
        size = self.space.input_shape(genome, self.task)[-1]
        res = train_candidate(model, self.splits, hp, max_epochs=max_epochs, time_budget_s=cfg.budget_s,
                              seed=self.seed + cid + done, patience=patience, callbacks=callbacks,
                              resize_to=size if size != self.task.image_size else None)
        train = res.to_dict()
        train["accuracy"] = res.val_accuracy
        train["source"] = f"trained on {self.splits.source}; accuracy on the held-out split"
        train["fidelity"] = {"kind": "epochs", "epochs": done + res.epochs, "budget": request.fidelity}
        state: dict[str, Any] = {"model": model.state_dict(), "epochs": done + res.epochs}
        if callbacks:
            det = callbacks[0].detector
            state["early_bird"] = {"distances": det.distances, "mask": det.mask, "drawn_at": det.drawn_at,
                                   "updates": det.updates}
            extra["early_bird"] = {"drawn_at_epoch": det.drawn_at, "distances": list(det.distances),
                                   "stopped": res.stop_reason == "callback"}
        train.update(extra)
        self._save(cid, state)
        return self._package(request, model, train, time.perf_counter() - t0)
