"""The layer-wise cost model: per-layer-type regressors, network aggregation, interval, file.

Per layer type (:func:`search.costmodel.features.layer_type`) two learners are fitted on the
same features (:data:`~search.costmodel.features.FEATURES`): NeuralPower's sparse polynomial
regression (``PolynomialFeatures(degree 2)`` + ``StandardScaler`` + ``LassoCV``, target the
layer's runtime in ms, rows weighted by 1/runtime) and ``HistGradientBoostingRegressor`` (target
log runtime). The one with the lower weighted absolute error on held-out networks' layers is kept for that type, and the
choice is recorded (:attr:`CostModel.choices`). Network latency = ``b0 + sum over types t of (a_t * the type's predicted layer times + c_t *
its number of layers)`` (the *network stage*, fitted by least squares of the relative error on
the measured latencies and the profiled per-type sums, with ``b0, a_t >= 0`` and ``c_t <= 0``:
``b0`` is the per-network overhead (session dispatch, layout reorders the runtime inserts),
``c_t`` removes the profiler's own per-node cost, which makes profiled layers add up to more
than the timed network). A type's term is never below zero (its layers cannot take time away
from the others'; a network with many more layers of a type than any fitted one would otherwise
be predicted at 0 ms): where that floor binds, the network is flagged ``network_stage_floor``
and ``extrapolated``. The prediction interval is the 5th/95th
percentile of held-out networks' relative residuals. An op type never seen is predicted by a
fallback model over all layers and flagged ``unseen_op``; features outside the training range
are flagged ``out_of_range``; either marks the network ``extrapolated``.

File format (``FORMAT`` = ``hwnas-costmodel``, ``FORMAT_VERSION`` = 1): a zip with
``manifest.json`` (format, version, model id, device key, scikit-learn version, features, layer
types with their chosen learner, per-type feature ranges and held-out errors, network-stage
coefficients, interval) and ``estimators.joblib`` (the fitted scikit-learn estimators). Loading
refuses another format/version or another scikit-learn minor version. joblib unpickles code:
load only files you trust.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.costmodel.features import FEATURES, Layer

FORMAT, FORMAT_VERSION = "hwnas-costmodel", 1
FALLBACK = "_any"  # the op-agnostic model used for unseen op types
_EPS_MS = 1e-4


class CostModelError(ValueError):
    """A cost model file or input the model cannot use."""


class WeightedLassoPoly:
    """NeuralPower's learner: degree-2 polynomial features, scaled, Lasso with CV.

    Rows are weighted by 1/runtime (floored), so the squared error the Lasso minimises is closer
    to a relative error; unweighted, the fit is dominated by the slowest layers and misses the
    fast ones by tens of percent (NeuralPower fits unweighted).
    """

    def __init__(self, n_rows: int) -> None:
        from sklearn.linear_model import LassoCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        self.pipe = make_pipeline(PolynomialFeatures(degree=2, include_bias=False), StandardScaler(),
                                  LassoCV(cv=min(5, n_rows), eps=1e-5, alphas=30, max_iter=5000,
                                          tol=1e-4, random_state=0))

    def fit(self, x: np.ndarray, y: np.ndarray) -> "WeightedLassoPoly":
        """Fit on runtime ``y`` (ms) with weights 1/max(y, floor)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        pos = y[y > 0]
        floor = max(_EPS_MS, float(np.quantile(pos, 0.05))) if len(pos) else 1.0
        w = 1.0 / np.maximum(y, floor)
        with warnings.catch_warnings():  # a near-zero alpha converges slowly; the CV still picks
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.pipe.fit(x, y, lassocv__sample_weight=w / w.mean())
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Runtime in ms."""
        return self.pipe.predict(x)


def lasso_poly(n_rows: int) -> WeightedLassoPoly:
    """A fresh :class:`WeightedLassoPoly`."""
    return WeightedLassoPoly(n_rows)


class LogTarget:
    """Wraps a regressor fitted on log runtime; predicts runtime in ms."""

    def __init__(self, est: Any) -> None:
        self.est = est

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogTarget":
        """Fit on ``log(y + eps)``."""
        self.est.fit(x, np.log(np.maximum(y, 0.0) + _EPS_MS))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Runtime in ms."""
        return np.exp(self.est.predict(x)) - _EPS_MS


def boosting(n_rows: int) -> Any:
    """The stronger learner: gradient-boosted trees on log runtime."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return LogTarget(HistGradientBoostingRegressor(max_iter=300, learning_rate=0.08,
                                                   min_samples_leaf=min(5, max(2, n_rows // 10)),
                                                   random_state=0))


LEARNERS = {"lasso_poly": lasso_poly, "boosting": boosting}


def make_learner(kind: str, n_rows: int) -> Any:
    """A fresh learner ``kind`` (``lasso_poly``/``boosting``/``median`` for < 4 rows)."""
    if kind == "median" or n_rows < 4:
        from sklearn.dummy import DummyRegressor

        return DummyRegressor(strategy="median")
    return LEARNERS[kind](n_rows)


def wape(y: np.ndarray, p: np.ndarray) -> float:
    """Weighted absolute percentage error sum|p - y| / sum(y) (robust to near-zero layers)."""
    return float(np.abs(p - y).sum() / max(float(np.abs(y).sum()), 1e-12))


def net_vector(layers: list[Layer], times: list[float], types: list[str]) -> list[float]:
    """Inputs of the network stage: 1, then per type in ``types`` the sum of its layers' times,
    then per type the number of its layers (types outside ``types`` count as the last one)."""
    sums, counts = [0.0] * len(types), [0.0] * len(types)
    pos = {t: i for i, t in enumerate(types)}
    for layer, t in zip(layers, times):
        i = pos.get(layer.type, len(types) - 1)
        sums[i] += t
        counts[i] += 1.0
    return [1.0] + sums + counts


@dataclass
class CostModel:
    """A fitted cost model for one device key (see the module docstring)."""

    device_key: str
    estimators: dict[str, Any]
    choices: dict[str, str]
    ranges: dict[str, list[list[float]]]
    net_coef: list[float]
    net_types: list[str]
    interval: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """``costmodel-<12 hex>``: a digest of the manifest (estimators included by their choice)."""
        blob = json.dumps(self._manifest_core(), sort_keys=True).encode()
        return "costmodel-" + hashlib.sha256(blob).hexdigest()[:12]

    @property
    def label(self) -> str:
        """How every predicted number is labelled: ``estimated:<model id>``."""
        return f"estimated:{self.model_id}"

    def layer_time(self, layer: Layer) -> tuple[float, list[str]]:
        """Predicted ms of one layer and its extrapolation flags."""
        t, flags = layer.type, []
        if t not in self.estimators:
            flags.append(f"unseen_op:{t}")
            t = FALLBACK
        x = np.asarray([layer.vector()])
        lo, hi = np.asarray(self.ranges[t]).T
        out = [FEATURES[i] for i in np.flatnonzero((x[0] < lo - 1e-9) | (x[0] > hi + 1e-9))]
        if out and t != FALLBACK:
            flags.append("out_of_range:" + ",".join(out))
        return max(0.0, float(self.estimators[t].predict(x)[0])), flags

    def network_time(self, vec: list[float]) -> tuple[float, list[str]]:
        """The network stage on :func:`net_vector`'s inputs: ms, and the types whose term was
        below zero and counted as zero."""
        c, k = self.net_coef, len(self.net_types)
        total, floored = c[0] * vec[0], []
        for i, t in enumerate(self.net_types):
            term = c[1 + i] * vec[1 + i] + c[1 + k + i] * vec[1 + k + i]
            if term < 0.0:
                floored.append(t)
                term = 0.0
            total += term
        return max(0.0, float(total)), floored

    def predict_layers(self, layers: list[Layer]) -> dict[str, Any]:
        """Network latency (ms) with interval, per-layer breakdown and extrapolation flags."""
        rows, total, reasons, times = [], 0.0, [], []
        for layer in layers:
            ms, flags = self.layer_time(layer)
            total += ms
            times.append(ms)
            reasons += [f"{layer.name}: {f}" for f in flags]
            rows.append({"name": layer.name, "type": layer.type, "nodes": layer.nodes,
                         "latency_ms": ms, "extrapolated": bool(flags), "flags": flags,
                         "features": dict(layer.features)})
        net, floored = self.network_time(net_vector(layers, times, self.net_types))
        reasons += [f"network_stage_floor:{t}" for t in floored]
        result: dict[str, Any] = {
            "latency_ms": net, "label": self.label, "model_id": self.model_id,
            "device_key": self.device_key, "layer_sum_ms": total,
            "extrapolated": bool(reasons), "extrapolation": reasons, "layers": rows,
            "interval_ms": None,
        }
        if self.interval:
            q = self.interval
            result["interval_ms"] = {"low": net * (1 + q["low"]), "high": net * (1 + q["high"]),
                                     "coverage": q["coverage"], "n_heldout": q["n"]}
        return result

    # -- file -------------------------------------------------------------------------------
    def _manifest_core(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "device_key": self.device_key,
                "features": list(FEATURES), "choices": self.choices, "ranges": self.ranges,
                "net_coef": self.net_coef, "net_types": self.net_types, "interval": self.interval, "metrics": self.metrics}

    def save(self, path: str | Path) -> None:
        """Write the versioned zip file described in the module docstring."""
        import joblib
        import sklearn

        manifest = self._manifest_core() | {"model_id": self.model_id, "sklearn": sklearn.__version__}
        buf = io.BytesIO()
        joblib.dump(self.estimators, buf)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
            zf.writestr("estimators.joblib", buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "CostModel":
        """Read a file written by :meth:`save`; a clear :class:`CostModelError` otherwise."""
        import joblib
        import sklearn

        try:
            with zipfile.ZipFile(path) as zf:
                m = json.loads(zf.read("manifest.json"))
                blob = zf.read("estimators.joblib")
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise CostModelError(f"{path}: not a cost model file ({exc})") from None
        if m.get("format") != FORMAT or m.get("version") != FORMAT_VERSION:
            raise CostModelError(f"{path}: format {m.get('format')!r} v{m.get('version')}; "
                                 f"this code reads {FORMAT} v{FORMAT_VERSION}")
        if m.get("features") != list(FEATURES):
            raise CostModelError(f"{path}: written with other features {m.get('features')}")
        if m["sklearn"].split(".")[:2] != sklearn.__version__.split(".")[:2]:
            raise CostModelError(f"{path}: fitted with scikit-learn {m['sklearn']}, "
                                 f"this is {sklearn.__version__}; refit it")
        model = cls(device_key=m["device_key"], estimators=joblib.load(io.BytesIO(blob)),
                    choices=m["choices"], ranges=m["ranges"], net_coef=m["net_coef"], net_types=m["net_types"],
                    interval=m["interval"], metrics=m["metrics"])
        if model.model_id != m["model_id"]:
            raise CostModelError(f"{path}: manifest does not match its model id")
        return model
