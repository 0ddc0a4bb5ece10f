"""``python -m search.costmodel predict FILE MODEL.onnx [--json] [--batch N] [--strict]``."""
from __future__ import annotations

import argparse
import json
import sys

from search.costmodel.features import FeatureError
from search.costmodel.fit import predict_onnx
from search.costmodel.model import CostModelError


def main(argv: list[str] | None = None) -> int:
    """Predict one ONNX file with a cost model file; a table, or JSON with ``--json``."""
    ap = argparse.ArgumentParser(prog="python -m search.costmodel")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="predict an ONNX model's latency with a cost model file")
    p.add_argument("model_file")
    p.add_argument("onnx")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--strict", action="store_true", help="refuse to extrapolate")
    args = ap.parse_args(argv)
    try:
        r = predict_onnx(args.model_file, args.onnx, batch=args.batch, strict=args.strict)
    except (CostModelError, FeatureError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{'layer':40s} {'type':18s} {'ms':>9s}  flags")
    for row in r["layers"]:
        print(f"{row['name'][:40]:40s} {row['type'][:18]:18s} {row['latency_ms']:9.4f}  "
              f"{' '.join(row['flags'])}")
    iv = r["interval_ms"]
    span = f" [{iv['low']:.3f}, {iv['high']:.3f}] ({iv['coverage']:.0%})" if iv else " (no interval)"
    print(f"network latency {r['latency_ms']:.3f} ms{span}  {r['label']}"
          + ("  EXTRAPOLATED" if r["extrapolated"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
