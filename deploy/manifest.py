"""``manifest.json``: what an exported candidate is, where every number in it came from.

File format (JSON object, UTF-8), one per exported candidate, beside its ``model.onnx``::

    {
      "schema": "hwnas.deploy.manifest", "schema_version": 1,
      "candidate_id": 7, "space": "menndl", "arch_key": "...", "genome": {...},
      "objectives": {"accuracy": 0.95, "latency_ms@cpu-x": 0.21, "params": 12034},
      "pareto": true,
      "provenance": {"accuracy": {"status": "measured", "method": "..."}, ...},
      "train": {...},                      # the run's training record, as stored
      "measurements": [...],               # the run's measurements, each with its provenance
      "model": {"file": "model.onnx", "sha256": "<hex>", "size_bytes": 1234, "opset": 17,
                "ir_version": 8, "producer": "pytorch 2.x",
                "inputs":  [{"name": "input",  "shape": ["batch", 1, 8, 8], "dtype": "float32"}],
                "outputs": [{"name": "logits", "shape": ["batch", 10],    "dtype": "float32"}],
                "metadata": {"hwnas.space": "...", ...}},
      "artifacts": [{"file": "model.ort.onnx" | "engine.plan", "format": "onnx" | "tensorrt-plan",
                     "backend": "onnxruntime", "sha256": "...", "size_bytes": ..., "agent": "host:port",
                     "device_key": "...", "build_config": {...}, "provenance": {...},
                     "output_check": {"status": "passed" | "failed" | "agent-reported" | "not-checked",
                                      "method": "...", "max_abs_diff": 1e-6, ...}}],
      "input": {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32", "layout": "NCHW"},
      "preprocessing": {"color": "RGB", "resize": [32, 32], "interpolation": "bilinear (Pillow)",
                        "scale": 255.0, "mean": [...], "std": [...], "layout": "NCHW", "dtype": "float32",
                        "formula": "x[c] = (pixel[c] / scale - mean[c]) / std[c]"},   # null: no dataset
      "classes": ["airplane", ...],         # index -> class name (null: no dataset)
      "accuracy": {"validation": {"value": 0.81, "kind": "measured", "method": "..."},
                   "test": {"value": 0.80, "kind": "measured" | "unavailable", "method": "..."},
                   "test_after_search": {...},   # the search's once-only test accuracy (Pareto members)
                   "final": null | {"epochs": 30, "val_accuracy": ..., "test_accuracy": ...,
                                    "model_sha256": ...}},   # hwnas train-final (its ONNX is exported)
      "costs": [{"metric": "latency_ms@<key>", "value": 0.21, "kind": "measured" | "published" | ...,
                 "method": "...", "device_key": "<key>" | null}],
      "runtime_versions": {"<device key>": {"onnxruntime": "1.20.1", "tensorrt": ..., "l4t": ..., ...}},
      "hwnas_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00"
    }

``hwnas run MANIFEST IMAGE...`` (:mod:`deploy.run`) classifies images from these fields alone.

Symbolic dimensions (the dynamic batch) are strings. ``sha256`` is that of the file's bytes.
A reader must reject a ``schema_version`` newer than it knows (:func:`read_manifest` does).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

SCHEMA = "hwnas.deploy.manifest"
SCHEMA_VERSION = 2  # 2: input, preprocessing, classes, accuracy, costs, runtime_versions
REQUIRED = ("schema", "schema_version", "candidate_id", "genome", "objectives", "model",
            "hwnas_version", "created")


class ManifestError(ValueError):
    """A manifest that is malformed or of an unknown schema version."""


def hwnas_version() -> str:
    """The installed hwnas version, or ``"unknown"`` when running from a bare checkout."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("hwnas")
    except PackageNotFoundError:
        return "unknown"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def onnx_info(data: bytes) -> dict[str, Any]:
    """Inputs, outputs (names, shapes, dtypes), opset, IR version and metadata of an ONNX model."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    init = {i.name for i in model.graph.initializer}

    def io(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if v.name in init:  # old-style graphs list initializers as inputs
                continue
            t = v.type.tensor_type
            shape = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                     for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape,
                        "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "inputs": io(model.graph.input), "outputs": io(model.graph.output),
            "metadata": {p.key: p.value for p in model.metadata_props}}


def preprocessing_of(info: Any, input_shape: list[Any]) -> dict[str, Any]:
    """The ``preprocessing`` entry from a :class:`search.training.data.DatasetInfo`."""
    h, w = (int(d) if isinstance(d, int) else info.image_size for d in input_shape[-2:])
    return {"color": "RGB" if info.in_channels == 3 else "L", "resize": [h, w],
            "interpolation": "bilinear (Pillow)", "scale": info.scale, "mean": list(info.mean),
            "std": list(info.std), "layout": "NCHW", "dtype": "float32",
            "formula": "x[c] = (pixel[c] / scale - mean[c]) / std[c]"}


def runtime_versions(candidate: dict[str, Any], artifacts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Runtime versions (and accelerator, driver, L4T) per device key, from the measurements'
    and the artifacts' provenance."""
    out: dict[str, dict[str, Any]] = {}
    for prov in [m.get("provenance") or {} for m in candidate.get("measurements") or []] + \
            [a.get("provenance") or {} for a in artifacts]:
        key = prov.get("device_key")
        if not key:
            continue
        entry = out.setdefault(key, {})
        entry.update(prov.get("versions") or {})
        runner = prov.get("runner") or {}
        for name in ("tensorrt", "onnxruntime"):
            if runner.get(name):
                entry[name] = runner[name]
        for name in ("jetson_module", "l4t", "gpu", "driver", "nvpmodel", "python"):
            if prov.get(name):
                entry[name] = prov[name]
    return out


def build_manifest(candidate: dict[str, Any], *, model_bytes: bytes, model_file: str = "model.onnx",
                   provenance: dict[str, dict[str, str]] | None = None,
                   artifacts: list[dict[str, Any]] | None = None, dataset: Any = None,
                   accuracy: dict[str, Any] | None = None,
                   costs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest of ``candidate`` (an entry of the run's results) exported as ``model_bytes``.

    dataset: the run's :class:`search.training.data.DatasetInfo` (preprocessing, class names);
    accuracy / costs: the ``accuracy`` and ``costs`` entries (module docstring).
    """
    info = onnx_info(model_bytes)
    first = info["inputs"][0] if info["inputs"] else {"name": "", "shape": [], "dtype": ""}
    artifacts = artifacts or []
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "candidate_id": candidate["id"],
        "space": candidate.get("space") or info["metadata"].get("hwnas.space"),
        "arch_key": candidate.get("arch_key") or info["metadata"].get("hwnas.arch_key"),
        "genome": candidate.get("genome"),
        "objectives": candidate.get("objectives") or {},
        "pareto": bool(candidate.get("pareto")),
        "provenance": provenance or {},
        "train": candidate.get("train"),
        "measurements": candidate.get("measurements") or [],
        "model": {"file": model_file, "sha256": sha256_bytes(model_bytes), "size_bytes": len(model_bytes),
                  **info},
        "artifacts": artifacts,
        "input": {**first, "layout": "NCHW"},
        "preprocessing": preprocessing_of(dataset, first["shape"]) if dataset is not None else None,
        "classes": list(dataset.classes) if dataset is not None else None,
        "accuracy": accuracy or {},
        "costs": costs or [],
        "runtime_versions": runtime_versions(candidate, artifacts),
        "hwnas_version": hwnas_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as indented JSON (atomically: a temporary file then a rename)."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False, default=str), encoding="utf-8")
    tmp.replace(path)


def read_manifest(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and check a manifest; with ``verify`` also check the sha256 of the files it names."""
    path = Path(path)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    missing = [k for k in REQUIRED if k not in m]
    if missing or m.get("schema") != SCHEMA:
        raise ManifestError(f"{path} is not an hwnas manifest (missing {missing or ['schema']})")
    if int(m["schema_version"]) > SCHEMA_VERSION:
        raise ManifestError(f"{path} has schema_version {m['schema_version']}; this hwnas reads "
                            f"up to {SCHEMA_VERSION}")
    if verify:
        for entry in [m["model"], *m.get("artifacts", [])]:
            f = path.parent / entry["file"]
            if not f.is_file():
                raise ManifestError(f"{f} named by {path} is missing")
            if sha256_bytes(f.read_bytes()) != entry["sha256"]:
                raise ManifestError(f"{f} does not match the sha256 in {path}")
    return m
