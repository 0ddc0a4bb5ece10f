"""Per-layer-type cost model on the shared per-layer GPU timings (Justus et al., 2018).

Data: ``$HWNAS_SHARED_DATA/layer_latency/convolution_layers_by_gpu.csv.gz`` (published
measurements: median forward time in ms of random convolution layers on five GPUs). Only rows
with ``opt_None == 1`` are used: the README says ``opt_None`` means forward only, and this script
checks it (the median time per multiply-accumulate of the other rows, which include a training
step with an optimizer, must be clearly higher). Per GPU, a seeded random 80/20 split; both
learners of :mod:`search.costmodel.model` (weighted Lasso on degree-2 polynomial features, and
gradient boosting on log time) are fitted on the same features (those of
:data:`search.costmodel.features.FEATURES` a convolution has) and scored on the held-out 20 %:
MAPE, RMSPE, share within +-10 %, Spearman rho. NeuralPower's published figure beside them is
network-level (88.24 % average runtime accuracy over its networks on a Titan X / GTX 1070), so it
is a reference point, not the same experiment.

    PYTHONPATH=$PWD python bench/layer_latency_model.py [--max-train N]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import math
import os
import random
import statistics
import time
from collections import defaultdict

import numpy as np

from search.config import shared_data_dir
from search.costmodel.features import FEATURES
from search.costmodel.model import make_learner

NEURALPOWER_RUNTIME_ACCURACY = 0.8824  # NeuralPower (Cai et al., 2017), abstract: 88.24 % runtime


def conv_features(row: dict[str, str]) -> list[float]:
    """One CSV row -> the FEATURES vector (padding 1 = 'same', 0 = 'valid', as in the source)."""
    b, m, cin, cout = (int(row[k]) for k in ("batchsize", "matsize", "channels_in", "channels_out"))
    k, s, same = int(row["kernelsize"]), int(row["strides"]), int(row["padding"]) == 1
    o = math.ceil(m / s) if same else math.ceil((m - k + 1) / s)
    f = {"batch": b, "cin": cin, "cout": cout, "h": m, "w": m, "oh": o, "ow": o, "k": k, "stride": s,
         "pad": (k - 1) // 2 if same else 0, "groups": 1, "macs": b * o * o * cout * cin * k * k,
         "in_elems": b * cin * m * m, "out_elems": b * cout * o * o,
         "params": k * k * cin * cout + cout * int(row["use_bias"]), "has_bn": 0,
         "has_act": int(row["act_None"] == "0"), "has_add": 0}
    return [float(f[name]) for name in FEATURES]


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MAPE, RMSPE, share within +-10 %, Spearman rho."""
    from scipy.stats import spearmanr

    rel = (p - y) / y
    return {"mape": float(np.mean(np.abs(rel))), "rmspe": float(np.sqrt(np.mean(rel ** 2))),
            "within10": float(np.mean(np.abs(rel) <= 0.10)), "rho": float(spearmanr(y, p).statistic)}


def main() -> None:
    """Load, check opt_None, fit and score per GPU; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-train", type=int, default=0, help="subsample the training rows (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = str(shared_data_dir() / "layer_latency" / "convolution_layers_by_gpu.csv.gz")
    print(f"load before: {os.getloadavg()}  data: {path}")
    rows: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    per_mac: dict[str, list[float]] = defaultdict(list)
    with gzip.open(path, "rt") as f:
        for row in csv.DictReader(f):
            x, t = conv_features(row), float(row["timeUsed_median"])
            kind = "forward" if row["opt_None"] == "1" else "with optimizer"
            per_mac[kind].append(t / max(x[FEATURES.index("macs")], 1.0))
            if row["opt_None"] == "1" and t > 0:
                rows[row["gpu_name"]].append((x, t))
    fwd, opt = statistics.median(per_mac["forward"]), statistics.median(per_mac["with optimizer"])
    print(f"opt_None check: median ms per MAC forward-only {fwd:.3e}, other rows {opt:.3e} "
          f"(ratio {opt / fwd:.2f}; > 1 supports 'opt_None = forward only')")
    print(f"NeuralPower published: network runtime accuracy {NEURALPOWER_RUNTIME_ACCURACY:.2%} "
          f"(~{1 - NEURALPOWER_RUNTIME_ACCURACY:.1%} mean error), network level, other GPUs")
    print(f"{'gpu':8s} {'learner':11s} {'train':>6s} {'test':>6s} {'MAPE':>7s} {'RMSPE':>7s} "
          f"{'+-10%':>6s} {'rho':>6s} {'fit s':>6s}")
    for gpu in sorted(rows):
        data = rows[gpu]
        random.Random(args.seed).shuffle(data)
        cut = int(0.8 * len(data))
        train, test = data[:cut], data[cut:]
        if args.max_train:
            train = train[: args.max_train]
        x, y = np.asarray([r[0] for r in train]), np.asarray([r[1] for r in train])
        xt, yt = np.asarray([r[0] for r in test]), np.asarray([r[1] for r in test])
        for kind in ("lasso_poly", "boosting"):
            t0 = time.time()
            est = make_learner(kind, len(y)).fit(x, y)
            p = np.maximum(est.predict(xt), 1e-6)
            m = metrics(yt, p)
            print(f"{gpu:8s} {kind:11s} {len(y):6d} {len(yt):6d} {m['mape']:7.1%} {m['rmspe']:7.1%} "
                  f"{m['within10']:6.1%} {m['rho']:6.3f} {time.time() - t0:6.1f}", flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
