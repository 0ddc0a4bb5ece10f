"""The cost model's commands (issue 12): ``hwnas predictor fit`` and ``hwnas predict``.

    hwnas predictor fit DIR --device-key K -o FILE [--holdout 0.2] [--seed 0]
    hwnas predict FILE MODEL.onnx [--json] [--batch N] [--strict]

``predictor fit`` reads a run directory's profiled measurements on one device key (a run
searched with ``--predictor`` / ``[predictor] enabled``) and writes a model file;
``predict`` prints a model file's prediction for one ONNX file: a per-layer table, or JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def format_prediction(r: dict[str, Any]) -> str:
    """The per-layer breakdown table of a prediction (``CostModel.predict_layers``)."""
    lines = [f"{'layer':40s} {'type':18s} {'ms':>9s}  flags"]
    for row in r["layers"]:
        lines.append(f"{row['name'][:40]:40s} {row['type'][:18]:18s} {row['latency_ms']:9.4f}  "
                     f"{' '.join(row['flags'])}")
    iv = r["interval_ms"]
    span = f" [{iv['low']:.3f}, {iv['high']:.3f}] ({iv['coverage']:.0%})" if iv else " (no interval)"
    lines.append(f"network latency {r['latency_ms']:.3f} ms{span}  {r['label']}"
                 + ("  EXTRAPOLATED" if r["extrapolated"] else ""))
    return "\n".join(lines)


def _fail(msg: str) -> int:
    print(f"hwnas: error: {msg}", file=sys.stderr)
    return 2


def predict_main(args: argparse.Namespace) -> int:
    """``hwnas predict``: one ONNX file through a model file."""
    from search.costmodel.features import FeatureError
    from search.costmodel.fit import predict_onnx
    from search.costmodel.model import CostModelError

    try:
        r = predict_onnx(args.model_file, args.onnx, batch=args.batch, strict=args.strict)
    except (CostModelError, FeatureError, OSError) as exc:
        return _fail(str(exc))
    print(json.dumps(r, indent=1) if args.json else format_prediction(r))
    return 0


def fit_main(args: argparse.Namespace) -> int:
    """``hwnas predictor fit``: a run's profiled measurements on one key -> a model file."""
    from search.costmodel.fleet import fit_single_threaded, measurements_from_store
    from search.costmodel.model import CostModelError
    from search.loop.store import Store, StoreError

    try:
        store = Store(args.run_dir)
    except StoreError as exc:
        return _fail(str(exc))
    try:
        ms = measurements_from_store(store, args.device_key)
        keys = sorted({m["device_key"] for m in store.measurements(ok_only=True)})
    finally:
        store.close()
    if not ms:
        return _fail(f"no profiled measurements on device key {args.device_key!r} in {args.run_dir} "
                     f"(keys measured: {keys or 'none'}; profiles need a run with --predictor)")
    try:
        model = fit_single_threaded(ms, device_key=args.device_key, holdout=args.holdout, seed=args.seed)
    except CostModelError as exc:
        return _fail(str(exc))
    model.save(args.output)
    held = (model.metrics or {}).get("heldout")
    print(json.dumps({"file": args.output, "model": model.label, "n_networks": len(ms), "heldout": held,
                      "interval": model.interval, "choices": model.choices}, indent=1))
    return 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``predict`` (shared with ``python -m search.costmodel predict``)."""
    p.add_argument("model_file", help="a cost model file (hwnas predictor fit, bench/cost_model.py --save)")
    p.add_argument("onnx", help="the ONNX model to predict")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--strict", action="store_true", help="refuse to extrapolate")
    p.set_defaults(func=predict_main)


def add_parsers(sub: Any) -> None:
    """Add ``predictor fit`` and ``predict`` to the ``hwnas`` subcommands."""
    pr = sub.add_parser("predictor", help="fit a device key's cost model from a run")
    psub = pr.add_subparsers(dest="predictor_command", required=True)
    f = psub.add_parser("fit", help="fit a cost model from a run's profiled measurements")
    f.add_argument("run_dir")
    f.add_argument("--device-key", required=True, help="the device key whose measurements to fit")
    f.add_argument("-o", "--output", required=True, help="model file to write")
    f.add_argument("--holdout", type=float, default=0.2, help="share of networks held out (interval, choice)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=fit_main)
    add_predict_args(sub.add_parser("predict", help="predict an ONNX model's latency with a cost model file"))
