"""Fitting a :class:`~search.costmodel.model.CostModel` from measurements, and predicting.

A :class:`Measurement` is one network measured on one device: its ONNX file, the measured
latency (ms, the timed loop's median) and the agent's per-layer profile (``layers`` of a job
result with ``MeasureConfig(profile_layers=True)``). :func:`fit_from_measurements` holds out a
share of the networks, fits both learners per layer type on the rest, keeps per type the one
with the lower held-out error, takes the prediction interval from the held-out networks'
residuals, and refits the chosen learners on everything. :func:`predict_onnx` loads a model file
and predicts one ONNX file.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from search.costmodel.features import FEATURES, Layer, extract_layers, map_profile, node_index
from search.costmodel.model import FALLBACK, CostModel, CostModelError, make_learner, net_vector, wape


@dataclass(frozen=True)
class Measurement:
    """One measured network: ONNX (path or bytes), measured latency (ms), per-layer profile."""

    onnx: Any
    latency_ms: float
    layers: tuple[dict[str, Any], ...]
    batch: int = 1


@dataclass
class _Net:
    layers: list[Layer]
    times: list[float]  # profiled ms per layer (0 where the runtime removed it)
    latency_ms: float


def _prepare(m: Measurement) -> _Net:
    layers = extract_layers(m.onnx, batch=m.batch)
    mapped, _unmapped = map_profile(node_index(m.onnx, layers), list(m.layers))
    times = [mapped.get(i, 0.0) for i in range(len(layers))]
    if m.latency_ms <= 0 or not np.isfinite(m.latency_ms):
        raise CostModelError(f"measured latency must be > 0 ms, got {m.latency_ms!r}")
    return _Net(layers, times, float(m.latency_ms))


def _rows(nets: list[_Net]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    by: dict[str, tuple[list[list[float]], list[float]]] = {}
    for net in nets:
        for layer, t in zip(net.layers, net.times):
            xs, ys = by.setdefault(layer.type, ([], []))
            xs.append(layer.vector())
            ys.append(t)
    return {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in by.items()}


def _fit_type(x: np.ndarray, y: np.ndarray, kind: str) -> Any:
    return make_learner(kind, len(y)).fit(x, y)


def _net_stage(nets: list[_Net], types: list[str]) -> list[float]:
    """Least squares of relative error (rows weighted by 1/latency^2): non-negative constant and
    per-type time scales, non-positive per-layer counts (the profiler's per-node cost)."""
    from sklearn.linear_model import LinearRegression

    x = np.asarray([net_vector(n.layers, n.times, types) for n in nets])
    y = np.asarray([n.latency_ms for n in nets])
    k = len(types)
    if len(nets) < x.shape[1] + 5:  # too few networks: scale of the layer sum only
        scale = float(np.median(y / np.maximum(x[:, 1:1 + k].sum(1), 1e-9)))
        return [0.0] + [scale] * k + [0.0] * k
    x[:, 1 + k:] *= -1.0  # so that one sign constraint gives counts a non-positive coefficient
    coef = LinearRegression(positive=True, fit_intercept=False).fit(
        x, y, sample_weight=1.0 / y ** 2).coef_.copy()
    coef[1 + k:] *= -1.0
    return [float(c) for c in coef]


def _model(nets: list[_Net], choices: dict[str, str], device_key: str,
           fitted: dict[str, Any] | None = None) -> CostModel:
    rows = _rows(nets)
    fitted = fitted or {}
    est = {t: fitted.get(t) or _fit_type(x, y, choices.get(t, "lasso_poly")) for t, (x, y) in rows.items()}
    allx = np.vstack([x for x, _ in rows.values()])
    ally = np.concatenate([y for _, y in rows.values()])
    est[FALLBACK] = _fit_type(allx, ally, "boosting")
    ranges = {t: np.stack([x.min(0), x.max(0)], 1).tolist() for t, (x, _) in rows.items()}
    ranges[FALLBACK] = np.stack([allx.min(0), allx.max(0)], 1).tolist()
    types = sorted(rows) + [FALLBACK]
    return CostModel(device_key=device_key, estimators=est, choices=dict(choices),
                     ranges=ranges, net_coef=_net_stage(nets, types), net_types=types)


def network_metrics(measured: Iterable[float], predicted: Iterable[float]) -> dict[str, float]:
    """Share within +-10 %, MAPE (%) and Spearman rho of predicted vs measured latencies."""
    from scipy.stats import spearmanr

    y, p = np.asarray(list(measured), float), np.asarray(list(predicted), float)
    rel = np.abs(p - y) / y
    rho = float(spearmanr(y, p).statistic) if len(y) > 2 else float("nan")
    return {"n": int(len(y)), "within_10pct": float(np.mean(rel <= 0.10)),
            "mape_pct": float(100 * rel.mean()), "spearman": rho}


def fit_from_measurements(measurements: Iterable[Measurement], *, device_key: str,
                          holdout: float = 0.2, seed: int = 0,
                          learners: tuple[str, ...] = ("lasso_poly", "boosting")) -> CostModel:
    """Fit a cost model for ``device_key`` (see the module docstring); needs >= 3 networks."""
    nets = [_prepare(m) for m in measurements]
    if len(nets) < 3:
        raise CostModelError(f"need at least 3 measured networks, got {len(nets)}")
    order = list(range(len(nets)))
    random.Random(seed).shuffle(order)
    n_hold = int(round(holdout * len(nets))) if len(nets) >= 10 else 0
    held, train = [nets[i] for i in order[:n_hold]], [nets[i] for i in order[n_hold:]]
    choices = {t: learners[0] for t in _rows(nets)}
    metrics: dict[str, Any] = {"n_networks": len(nets), "n_heldout": n_hold, "layer_types": {}}
    interval = None
    if held:
        train_rows, held_rows = _rows(train), _rows(held)
        fitted: dict[str, Any] = {}  # the chosen learners fitted on the training networks
        for t, (x, y) in train_rows.items():
            errs = {}
            if t in held_rows:
                hx, hy = held_rows[t]
                cands = {k: _fit_type(x, y, k) for k in learners}
                errs = {k: wape(hy, np.maximum(e.predict(hx), 0.0)) for k, e in cands.items()}
                choices[t] = min(errs, key=errs.get)
                fitted[t] = cands[choices[t]]
            metrics["layer_types"][t] = {"rows": int(len(y)), "heldout_wape": errs,
                                         "chosen": choices[t]}
        part = _model(train, choices, device_key, fitted)
        pred = [part.predict_layers(n.layers)["latency_ms"] for n in held]
        meas = [n.latency_ms for n in held]
        rel = np.asarray(meas) / np.maximum(np.asarray(pred), 1e-9) - 1.0
        interval = {"low": float(np.quantile(rel, 0.05)), "high": float(np.quantile(rel, 0.95)),
                    "coverage": 0.90, "n": n_hold, "method": "5th/95th percentile of held-out "
                    "networks' relative residuals (measured/predicted - 1)"}
        metrics["heldout"] = network_metrics(meas, pred)
    model = _model(nets, choices, device_key)
    model.interval, model.metrics = interval, metrics
    return model


def predict_onnx(model_file: str | Path | CostModel, onnx_path: Any, *, batch: int = 1,
                 strict: bool = False) -> dict[str, Any]:
    """Predict ``onnx_path`` with a model file (or loaded model): see ``CostModel.predict_layers``.

    ``strict``: raise :class:`CostModelError` instead of returning an extrapolated prediction.
    """
    model = model_file if isinstance(model_file, CostModel) else CostModel.load(model_file)
    result = model.predict_layers(extract_layers(onnx_path, batch=batch))
    if strict and result["extrapolated"]:
        raise CostModelError("prediction would extrapolate: " + "; ".join(result["extrapolation"]))
    return result


__all__ = ["FEATURES", "Measurement", "fit_from_measurements", "network_metrics", "predict_onnx"]
