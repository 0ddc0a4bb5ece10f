"""Learning from the fleet (issue 12, part 3): one cost model per device key, fitted from a run's
stored measurements as they arrive and refitted as more come.

:func:`measurements_from_store` turns a run store's profiled measurements on one device key
(``Store.profiles``: the agent's per-layer rows, the timed loop's unprofiled median, the batch)
and the candidates' ONNX files into :class:`~search.costmodel.fit.Measurement` s; ``hwnas
predictor fit`` uses it. :class:`FleetModels` does the same during a search: the loop calls
:meth:`FleetModels.observe` for every profiled measurement (cheap); once a key has
``min_networks`` profiled networks, and again after every ``refit_every`` more, it reads them
from the store (on the caller's thread, the loop's) and a background thread fits that key's model, saves it as ``<run dir>/predictors/<key>.costmodel`` and logs a
``predictor_fitted`` event with its held-out error. The loop never waits for a fit.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.costmodel.fit import Measurement, fit_from_measurements
from search.costmodel.model import CostModel, CostModelError

log = logging.getLogger(__name__)


def measurements_from_store(store: Any, device_key: str) -> list[Measurement]:
    """The profiled, ok measurements of ``device_key`` in ``store`` whose ONNX file exists."""
    out = []
    for p in store.profiles(device_key):
        path = store.model_path(p["model_sha256"]) if p["model_sha256"] else None
        if path is None or not path.exists() or not p["latency_ms"]:
            continue
        out.append(Measurement(onnx=str(path), latency_ms=float(p["latency_ms"]), layers=tuple(p["layers"]),
                               batch=int(p["batch"] or 1)))
    return out


def fit_single_threaded(measurements: list[Measurement], *, device_key: str, holdout: float = 0.2,
                        seed: int = 0) -> CostModel:
    """:func:`~search.costmodel.fit.fit_from_measurements` with one OpenMP thread: the boosting
    learner's default (a thread per core) competes with training threads and agents, and a fit of
    a dozen networks took minutes instead of seconds on a busy 2-core host."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        return fit_from_measurements(measurements, device_key=device_key, holdout=holdout, seed=seed)


def model_file(run_dir: str | Path, device_key: str) -> Path:
    """Where a run keeps ``device_key``'s latest fitted model."""
    return Path(run_dir) / "predictors" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', device_key)}.costmodel"


@dataclass(frozen=True)
class FittedModel:
    """A key's current model, its held-out MAPE (%) and how many networks it was fitted on."""

    model: CostModel
    heldout_mape_pct: float
    n_networks: int
    #: how many held-out networks the MAPE was measured on
    n_heldout: int = 0


class FleetModels:
    """Per-device-key cost models fitted in the background from ``store`` (see module docstring)."""

    def __init__(self, *, store: Any, min_networks: int = 12, refit_every: int = 6, seed: int = 0) -> None:
        self.store = store
        self.min_networks, self.refit_every, self.seed = min_networks, refit_every, seed
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._fitted_at: dict[str, int] = {}
        self._busy: set[str] = set()
        self._models: dict[str, FittedModel] = {}
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._fitted = threading.Condition(self._lock)
        self.fits = 0

    def start(self) -> None:
        """Count what a resumed store already holds, and fit where that is enough."""
        for key in {m["device_key"] for m in self.store.measurements(ok_only=True)}:
            n = len(self.store.profiles(key))
            if n:
                self.observe(key, n)

    def observe(self, device_key: str, n: int = 1) -> None:
        """``n`` more profiled measurements on ``device_key``; starts a fit when due."""
        with self._lock:
            seen = self._seen[device_key] = self._seen.get(device_key, 0) + n
            last = self._fitted_at.get(device_key)
            due = seen >= self.min_networks if last is None else seen >= last + self.refit_every
            if not due or device_key in self._busy:
                return
            self._busy.add(device_key)
            self._fitted_at[device_key] = seen
        # read here, not in the thread: the loop holds the store's lock for a whole round
        ms = measurements_from_store(self.store, device_key)
        t = threading.Thread(target=self._fit, args=(device_key, ms), name=f"costmodel-{device_key}", daemon=True)
        self._threads.append(t)
        t.start()

    def _fit(self, key: str, ms: list[Measurement]) -> None:
        try:
            model = fit_single_threaded(ms, device_key=key, seed=self.seed)
            if self._closed.is_set():  # the run ended while fitting: its store is closed
                return
            held = (model.metrics or {}).get("heldout") or {}
            mape = float(held.get("mape_pct", float("inf")))
            path = model_file(self.store.run_dir, key)
            path.parent.mkdir(exist_ok=True)
            model.save(path)
            with self._fitted:
                self._models[key] = FittedModel(model=model, heldout_mape_pct=mape, n_networks=len(ms),
                                                n_heldout=int(held.get("n", 0)))
                self.fits += 1
                self._fitted.notify_all()
            self.store.event("predictor_fitted", detail={
                "device_key": key, "model": model.label, "n_networks": len(ms), "heldout": held,
                "interval": model.interval, "file": str(path)})
        except (CostModelError, ValueError, OSError) as exc:  # a fit that fails leaves the old model
            log.warning("cost model fit for %s failed: %s", key, exc)
            if not self._closed.is_set():
                self.store.event("predictor_fit_failed", detail={"device_key": key, "error": str(exc)})
        finally:
            with self._fitted:
                self._busy.discard(key)
                self._fitted.notify_all()

    def current(self, device_key: str) -> FittedModel | None:
        """The latest model of ``device_key`` (None before its first fit)."""
        with self._lock:
            return self._models.get(device_key)

    def wait_fitted(self, n: int = 1, timeout: float = 300.0) -> bool:
        """Wait until ``n`` fits have finished (tests); False on timeout."""
        with self._fitted:
            return self._fitted.wait_for(lambda: self.fits >= n or not self._busy, timeout)

    def join(self, timeout: float = 60.0) -> None:
        """Wait for running fits (tests)."""
        for t in list(self._threads):
            t.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Let a running fit finish (up to ``timeout``), then drop any still running: it writes
        nothing once the run's store closes."""
        self.join(timeout)
        self._closed.set()
