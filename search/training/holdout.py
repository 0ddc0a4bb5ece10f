"""Test accuracy, measured once per network after the search and never used for selection.

During the search the trainers see the train and validation splits only (fitness is the
validation accuracy). When the search has ended, :func:`evaluate_on_test` loads each chosen
candidate's kept weights (``weights/<id>.pt``), evaluates them on the test split once, and
stores ``test_accuracy`` (with ``test_source``) in the candidate's training record; a candidate
that has one already is not evaluated again. ``hwnas train-final`` uses :func:`accuracy_on_test`
for the networks it retrains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from search.spaces.base import SearchSpace


def read_test_split(splits: Any) -> Any | None:
    """The dataset's test split, read now (None when the dataset has none)."""
    reader = getattr(splits, "load_test", None)  # a lazy accessor, where the dataset has one
    return reader() if callable(reader) else getattr(splits, "test", None)


def accuracy_on_test(model: Any, space: SearchSpace, genome: Any, splits: Any, test: Any, *, device: str) -> float:
    """Accuracy of a trained ``model`` on ``test``, with the inputs sized as in training."""
    from search.training.train import evaluate

    size = space.input_shape(genome, splits.task)[-1]
    return evaluate(model, test, device=device, resize_to=size if size != splits.task.image_size else None)


def evaluate_on_test(*, store: Any, space: SearchSpace, splits: Any, ids: Sequence[int], device: str) -> dict[str, Any]:
    """Test accuracy of each candidate in ``ids`` that has none yet, from its kept weights.

    Returns ``{"evaluated": {id: accuracy}, "skipped": {id: reason}, "test_images": n}`` and
    records it as the ``test_evaluated`` event.
    """
    import torch

    test = read_test_split(splits)
    out: dict[str, Any] = {"evaluated": {}, "skipped": {}, "test_images": None if test is None else len(test)}
    if test is None:
        out["skipped"] = {cid: "the dataset has no test split" for cid in ids}
    for cid in ids if test is not None else ():
        cand = store.candidate(cid)
        train = cand.get("train") or {}
        if train.get("test_accuracy") is not None:
            continue  # once per network
        path: Path = store.files.weights_path(cid)
        if not path.is_file():
            out["skipped"][cid] = f"no trained weights at {path}"
            continue
        genome = space.from_json(cand["genome"])
        model = space.build(genome, splits.task)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except Exception as exc:  # noqa: BLE001 - weights that do not load are skipped, with the reason
            out["skipped"][cid] = f"weights at {path} do not load: {type(exc).__name__}: {exc}"
            continue
        acc = accuracy_on_test(model, space, genome, splits, test, device=device)
        store.update_train(cid, test_accuracy=acc,
                           test_source=f"{len(test)} test images of {splits.source}; evaluated once, after the search")
        out["evaluated"][cid] = acc
    store.event("test_evaluated", detail=out)
    return out
