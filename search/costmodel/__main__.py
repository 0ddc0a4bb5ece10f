"""``python -m search.costmodel predict FILE MODEL.onnx [--json] [--batch N] [--strict]``
(the same as ``hwnas predict``; see :mod:`search.costmodel.cli`)."""
from __future__ import annotations

import argparse
import sys

from search.costmodel.cli import add_predict_args


def main(argv: list[str] | None = None) -> int:
    """Predict one ONNX file with a cost model file; a table, or JSON with ``--json``."""
    ap = argparse.ArgumentParser(prog="python -m search.costmodel")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_predict_args(sub.add_parser("predict", help="predict an ONNX model's latency with a cost model file"))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
