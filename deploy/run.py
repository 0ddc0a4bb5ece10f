"""``hwnas run MANIFEST IMAGE...``: classify image files with an exported model, using only
what its ``manifest.json`` says (input name, shape and layout, preprocessing, class names).

Runs on a device with the agent's install alone (numpy, Pillow, onnxruntime; TensorRT for an
``engine.plan``): no torch, no run folder. Each image is decoded with Pillow, converted to the
manifest's colour mode, resized (bilinear) to the input's size, divided by ``scale``,
normalised per channel with ``mean``/``std`` and laid out NCHW float32 — the same steps the
dataset code applied in training (``search/training/datasets.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.manifest import ManifestError, read_manifest


def preprocess(paths: Sequence[str | Path], pre: dict[str, Any]) -> np.ndarray:
    """Images -> (N, C, H, W) float32 as ``pre`` (the manifest's ``preprocessing``) describes."""
    from PIL import Image

    h, w = pre["resize"]
    mean = np.asarray(pre["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(-1, 1, 1)
    out = np.empty((len(paths), len(mean), h, w), np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im = im.convert(pre["color"])
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            x = np.asarray(im, np.float32).reshape(h, w, -1).transpose(2, 0, 1)
        out[i] = (x / float(pre["scale"]) - mean) / std
    return out


def _artifact(manifest: dict[str, Any], name: str | None) -> dict[str, Any]:
    if name in (None, "", manifest["model"]["file"]):
        return manifest["model"]
    for a in manifest.get("artifacts", []):
        if name in (a["file"], a["format"]):
            return a
    known = [manifest["model"]["file"], *(a["file"] for a in manifest.get("artifacts", []))]
    raise ManifestError(f"no artifact {name!r} in the manifest; it has {', '.join(known)}")


def logits(folder: Path, entry: dict[str, Any], input_name: str, x: np.ndarray) -> np.ndarray:
    """Outputs of the model file ``entry`` names on ``x`` (ONNX via ONNX Runtime, plan via TensorRT)."""
    path = folder / entry["file"]
    if entry.get("format") == "tensorrt-plan":
        from device_agent.backends.tensorrt import TensorRTRunner  # lazily: only on a GPU device

        outs = []
        for row in x:  # the plan's profile may be fixed at batch 1
            with TensorRTRunner(plan=path.read_bytes(), batch_size=1, build_info={}) as runner:
                runner.prepare({input_name: row[None]})
                runner.run()
                outs.append(next(iter(runner.outputs().values()))[0])
        return np.stack(outs).astype(np.float64)
    from deploy.check import cpu_session, run_batches

    return run_batches(cpu_session(str(path)), x)


def classify(manifest_path: str | Path, images: Sequence[str | Path], *,
             artifact: str | None = None, top_k: int = 1) -> list[dict[str, Any]]:
    """Top-``k`` classes (name, index, probability) of each image, from the manifest alone."""
    path = Path(manifest_path)
    m = read_manifest(path)  # checks the files' sha256
    pre, classes = m.get("preprocessing"), m.get("classes")
    if not pre or not classes:
        raise ManifestError(f"{path} has no preprocessing/classes (exported by an older hwnas)")
    x = preprocess(images, pre)
    z = logits(path.parent, _artifact(m, artifact), m["input"]["name"], x)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = []
    for img, row in zip(images, p):
        best = np.argsort(-row)[:top_k]
        out.append({"image": str(img), "top": [{"class": classes[i], "index": int(i),
                                                 "probability": float(row[i])} for i in best]})
    return out


def main(argv: Sequence[str] | None = None, *, prog: str = "hwnas run") -> int:
    """Entry point of ``hwnas run``: one line per image (``--json`` for the full answer)."""
    p = argparse.ArgumentParser(prog=prog, description="classify images with an exported model")
    p.add_argument("manifest", help="manifest.json of an export")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--artifact", help="run this artifact (file name or format) instead of model.onnx")
    p.add_argument("--top", type=int, default=1, help="classes per image (default 1)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        res = classify(args.manifest, args.images, artifact=args.artifact, top_k=args.top)
    except (ManifestError, OSError, KeyError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for r in res:
        print(json.dumps(r) if args.json else
              f"{r['image']}\t" + "  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
