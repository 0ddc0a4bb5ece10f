"""The run's dataset for an export: what a deployed model needs to know (class names, mean/std,
image size: :class:`search.training.data.DatasetInfo`) and preprocessed images to check the
artifact on (validation split) and to report the test accuracy (test split).

Loaded from the run's stored config (``dataset``, ``data_root``, ``seed``), as the search did.
A run whose accuracy came from a table trained nothing here: it has no dataset (``None``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ExportData:
    """Dataset facts and preprocessed (normalised, NCHW float32) images of a run."""

    info: Any  # search.training.data.DatasetInfo
    source: str
    check_images: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    calibration_images: np.ndarray | None = None  # from the training split (INT8 calibration)


def _arrays(ds: Any, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    n = len(ds) if limit is None else min(limit, len(ds))
    x, y = ds.get_batch(torch.arange(n))
    return x.numpy().astype(np.float32), y.numpy()


def load_export_data(run_dir: str | Path, *, check_images: int = 256, calibration_images: int = 0,
                     test_limit: int | None = 2000) -> ExportData | None:
    """The run's dataset (module docstring), or None for a table run; ``ValueError`` if unreadable."""
    from search.config import restore
    from search.loop.store import Store
    from search.training.data import load_dataset

    store = Store(run_dir, read_only=True)
    try:
        stored = store.get_meta("config")
    finally:
        store.close()
    if not stored:
        raise ValueError(f"{run_dir}: the run stored no config")
    cfg = restore(stored)
    if cfg.accuracy_table:
        return None
    splits = load_dataset(cfg.dataset, root=cfg.data_root or None, seed=cfg.seed)
    images, _ = _arrays(splits.val, check_images)
    test = splits.test
    tx, ty = _arrays(test, test_limit) if test is not None else (None, None)
    calib = _arrays(splits.train, calibration_images)[0] if calibration_images > 0 else None
    return ExportData(info=splits.info, source=splits.source, check_images=images,
                      test_images=tx, test_labels=ty, calibration_images=calib)
