"""Export chosen candidates of a run as deployable folders.

For each chosen candidate (by default the Pareto members) ``export_candidates`` writes
``out_dir/<candidate-id>/``:

- ``model.onnx``: the candidate's ONNX, copied from ``run_dir/models/<sha256>.onnx`` after its
  sha256 is checked against the run's record;
- with an agent: the artifact the agent built on its device with the requested backend and
  precision (``model.ort.onnx`` for ONNX Runtime's optimized, possibly fp16, graph;
  ``engine.plan`` for a TensorRT plan), with an output check: an ONNX artifact is run beside
  the reference ONNX with ONNX Runtime CPU here, on real images of the run's dataset and judged
  by top-1 agreement (:mod:`deploy.check`; seeded random inputs and elementwise tolerances only
  when the run has no dataset); a TensorRT plan can only run on its device, so the manifest
  records the check the agent's build reply carried (or that there was none). The precision
  obtained (per layer type) is recorded; a build that did not obtain the requested precision
  fails on the agent;
- ``manifest.json`` (:mod:`deploy.manifest`).

and ``out_dir/index.json`` listing the exports (one entry per chosen candidate, with ``error``
set where one could not be exported: a missing or corrupted model file, a failed build).
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploy.check import MIN_AGREEMENT, agreement_check, onnx_accuracy
from deploy.manifest import build_manifest, sha256_bytes, write_manifest

INDEX_SCHEMA = "hwnas.deploy.index"
#: Tolerances of the ONNX artifact check (as ``numpy.allclose``).
CHECK_ATOL, CHECK_RTOL = 1e-4, 1e-3


class ExportError(RuntimeError):
    """A candidate that cannot be exported (the message says why)."""


def _ticket_note(c: dict[str, Any], name: str) -> str:
    """For a candidate whose final training pruned it to its Early-Bird ticket: the search's cost
    figures are the dense network's, not those of the exported ticket (empty otherwise)."""
    eb = (c.get("final") or {}).get("early_bird") or {}
    if not eb.get("ticket_params") or name.split("@")[0] in ("accuracy", "val_accuracy", "test_accuracy"):
        return ""
    return (f"; of the dense network searched ({eb['dense_params']:,} parameters), not of this exported "
            f"Early-Bird ticket ({eb['ticket_params']:,} parameters), whose costs were not measured")


def _objective_provenance(c: dict[str, Any]) -> dict[str, dict[str, str]]:
    from search.provenance import provenance

    out = {}
    for name in (c.get("objectives") or {}):
        try:
            status, how = provenance(c, name)
        except ValueError:  # a metric this version does not know
            status, how = "unknown", "metric not known to this hwnas version"
        out[name] = {"status": status, "method": how + _ticket_note(c, name)}
    return out


def _model_bytes(c: dict[str, Any], run_dir: Path) -> bytes:
    final = c.get("final") or {}
    if final.get("model_sha256"):  # retrained by `hwnas train-final`: its ONNX is the one to deploy
        sha, rel = final["model_sha256"], f"models/{final['model_sha256']}.onnx"
    else:
        sha = c.get("model_sha256")
        if not sha:
            raise ExportError(f"candidate {c['id']} has no exported model (model_sha256 is empty)")
        rel = c.get("onnx_path") or f"models/{sha}.onnx"
    path = run_dir / rel
    if not path.is_file():
        raise ExportError(f"candidate {c['id']}: model file {path} is missing")
    data = path.read_bytes()
    got = sha256_bytes(data)
    if got != sha:
        raise ExportError(f"candidate {c['id']}: {path} has sha256 {got[:16]}..., the run recorded "
                          f"{sha[:16]}... (file corrupted or replaced)")
    return data


def _feeds(sess: Any, seed: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                 "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32}.get(i.type, np.float32)
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def check_onnx_artifact(reference: bytes, artifact: bytes, *, seed: int = 0, batch: int = 2) -> dict[str, Any]:
    """Run both ONNX models with ONNX Runtime CPU on the same seeded inputs; compare outputs."""
    import onnxruntime as ort

    method = (f"ONNX Runtime {ort.__version__} CPU, reference model.onnx vs artifact, seeded "
              f"standard-normal inputs (seed {seed}, batch {batch}), atol {CHECK_ATOL} + rtol {CHECK_RTOL}")
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        ref = ort.InferenceSession(reference, so, providers=["CPUExecutionProvider"])
        art = ort.InferenceSession(artifact, so, providers=["CPUExecutionProvider"])
        feeds = _feeds(ref, seed, batch)
        a = ref.run(None, feeds)
        b = art.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - an artifact that does not run here is a result
        return {"status": "error", "method": method, "error": f"{type(exc).__name__}: {exc}"}
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return {"status": "failed", "method": method,
                "error": f"output shapes differ: {[x.shape for x in a]} vs {[y.shape for y in b]}"}
    diff = max((float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(a, b)),
               default=0.0)
    ok = all(np.allclose(y, x, atol=CHECK_ATOL, rtol=CHECK_RTOL) for x, y in zip(a, b))
    return {"status": "passed" if ok else "failed", "method": method, "max_abs_diff": diff,
            "outputs": len(a)}


def _artifact_file(backend: str, data: bytes) -> tuple[str, str]:
    """``(file name, format)`` of an artifact by the backend that built it."""
    if backend == "tensorrt":
        return "engine.plan", "tensorrt-plan"
    try:
        import onnx

        onnx.load_from_string(data)
        return "model.ort.onnx", "onnx"
    except Exception:  # noqa: BLE001 - not ONNX: keep the bytes, say we do not know the format
        return "artifact.bin", "unknown"


def _build_dict(build: Any) -> dict[str, Any] | None:
    """A BuildConfig, a mapping of some of its fields (the agent fills the rest) or None."""
    return dict(build) if isinstance(build, dict) else (build.to_dict() if build is not None else None)


def _with_calibration(client: Any, build: Any, ds: Any) -> Any:
    """``build`` naming the calibration images, uploaded to the agent in an ONNX container (INT8)."""
    if ds is None or ds.calibration_images is None:
        return build
    from device_agent.core.calibration import calibration_model

    sha = client.upload_model(calibration_model(ds.calibration_images))["model_sha256"]
    return {**(_build_dict(build) or {}), "calibration_sha256": sha}


def _build_artifact(client: Any, agent: str, model: bytes, build: Any, dest: Path,
                    ds: Any = None, min_agreement: float = MIN_AGREEMENT) -> dict[str, Any]:
    build = _with_calibration(client, build, ds)
    data, meta = client.build_engine(model, build=build)
    backend = str(meta.get("backend") or (_build_dict(build) or {}).get("backend") or "")
    name, fmt = _artifact_file(backend, data)
    (dest / name).write_bytes(data)
    prov = meta.get("provenance") or {}
    if fmt == "onnx" and ds is not None:
        check = agreement_check(model, data, ds.check_images, min_agreement=min_agreement,
                                source=f"the validation split of {ds.source}")
    elif fmt == "onnx":
        check = check_onnx_artifact(model, data)
    elif prov.get("output_check"):
        check = {"status": "agent-reported", "method": "output check run by the agent on its device "
                 "during the build", "agent_check": prov["output_check"]}
    else:
        check = {"status": "not-checked", "method": f"a {fmt} artifact runs only on its device and the "
                 "agent's build reply carried no output check"}
    notes = ("ONNX Runtime's graph optimized (ORT_ENABLE_ALL) on the agent: it may hold fused, "
             "hardware-specific operators, so load it with the same ONNX Runtime version and "
             "execution provider" if fmt == "onnx" else
             "a TensorRT plan runs only on the GPU model and TensorRT version that built it"
             if fmt == "tensorrt-plan" else "artifact of unknown format, kept as built")
    return {"file": name, "format": fmt, "backend": backend, "sha256": sha256_bytes(data), "notes": notes,
            "size_bytes": len(data), "agent": agent, "device_key": prov.get("device_key"),
            "from_cache": meta.get("from_cache"), "cache_key": meta.get("cache_key"),
            # the build the agent applied (its defaults filled in), else the one requested
            "build_config": prov.get("build") or _build_dict(build),
            "precision": {"requested": (prov.get("build") or _build_dict(build) or {}).get("precision"),
                          "obtained": prov.get("precision_obtained", "unknown"),
                          "by_layer_type": ((prov.get("runner") or {}).get("precision_obtained") or {})
                          .get("layer_types", {})},
            "provenance": prov, "output_check": check}


def _accuracy(c: dict[str, Any], model: bytes, ds: Any, prov: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Validation accuracy as the run recorded it; test accuracy of the exported ONNX, here."""
    train = c.get("train") or {}
    val = {"value": train.get("accuracy"), "kind": (prov.get("accuracy") or {}).get("status", "unavailable"),
           "method": train.get("source") or "not recorded"}
    if ds is None or ds.test_images is None:
        test = {"value": None, "kind": "unavailable",
                "method": "no test split (a table run, or a dataset without one)"}
    else:
        test = {"value": onnx_accuracy(model, ds.test_images, ds.test_labels), "kind": "measured",
                "method": f"top-1 of model.onnx (ONNX Runtime CPU) on {len(ds.test_labels)} test images "
                          f"of {ds.source}, at export"}
    searched = c.get("test_accuracy")
    after = {"value": searched, "kind": "measured" if searched is not None else "unavailable",
             "method": train.get("test_source") or "not measured (not a Pareto member, or no test split)"}
    final = c.get("final") or None
    if final is not None:
        final = {k: final.get(k) for k in ("epochs", "val_accuracy", "test_accuracy", "model_sha256", "device",
                                           "early_bird")}
    return {"validation": val, "test": test, "test_after_search": after, "final": final}


def _costs(c: dict[str, Any], objectives: Sequence[Any]) -> list[dict[str, Any]]:
    """Every cost number with what it is (kind, method) and the device key it belongs to."""
    from search.provenance import cost_values, provenance

    out = []
    for name, value in cost_values(c, objectives).items():
        kind, how = provenance(c, name)
        out.append({"metric": name, "value": value, "kind": kind, "method": how + _ticket_note(c, name),
                    "device_key": name.partition("@")[2] or None})
    return out


def export_candidates(results: list[dict[str, Any]], run_dir: str, out_dir: str, *,
                      only_pareto: bool = True, agent: str | None = None, token: str | None = None,
                      build: Any | None = None, ids: Sequence[int] | None = None,
                      tls: dict[str, str] | None = None, data: Any = None,
                      objectives: Sequence[Any] = (),
                      min_agreement: float = MIN_AGREEMENT, floor: float = 0.0) -> list[dict[str, Any]]:
    """Export the chosen candidates of a run (see the module docstring); return the index entries.

    only_pareto: export the Pareto members only (else every finished candidate with a model).
    floor: leave out candidates whose accuracy is at or below it (chance level, see
    :func:`search.reporting.recommend.accuracy_floor`), unless ``ids`` names them.
    ids: export exactly these candidate ids (overrides ``only_pareto``).
    agent / token / build: build the deployable artifact on that agent with ``build``
    (a :class:`device_agent.config.BuildConfig`; the agent's default when ``None``); ``tls``: the
    TLS keyword arguments of :class:`device_agent.rpc.client.AgentClient` (``tls_ca``, ``tls_cert``,
    ``tls_key``, ``tls_server_name``).
    data: the run's :class:`deploy.data.ExportData` (preprocessing, class names, check and test
    images; ``None`` for a run without a dataset); objectives: the run's, for the costs list;
    min_agreement: the top-1 agreement an ONNX artifact must reach on the check images.
    A candidate that cannot be exported gets an entry with ``error``; the others go on.
    """
    run = Path(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ids is not None:
        known = {c["id"] for c in results}
        unknown = sorted(set(ids) - known)
        if unknown:
            raise ExportError(f"no candidates with ids {unknown} in the results")
        chosen = [c for c in results if c["id"] in set(ids)]
    else:
        chosen = [c for c in results if c.get("status") == "done" and (c.get("pareto") or not only_pareto)
                  and ((c.get("objectives") or {}).get("accuracy", 1.0) or 0.0) > floor]
    client = None
    if agent is not None:
        from device_agent.rpc.client import AgentClient

        client = AgentClient(agent, token=token, **(tls or {}))
    entries: list[dict[str, Any]] = []
    try:
        for c in chosen:
            dest = out / str(c["id"])
            entry: dict[str, Any] = {"candidate_id": c["id"], "dir": dest.name, "error": None,
                                     "objectives": c.get("objectives") or {}, "pareto": bool(c.get("pareto")),
                                     "val_accuracy": c.get("val_accuracy"), "test_accuracy": c.get("test_accuracy")}
            try:
                model = _model_bytes(c, run)
            except ExportError as exc:
                entry["error"] = str(exc)
                entries.append(entry)
                continue
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            (dest / "model.onnx").write_bytes(model)
            artifacts: list[dict[str, Any]] = []
            if client is not None:
                try:
                    artifacts.append(_build_artifact(client, agent, model, build, dest,  # type: ignore[arg-type]
                                                     data, min_agreement))
                except Exception as exc:  # noqa: BLE001 - a failed build is recorded, the ONNX stays
                    entry["artifact_error"] = f"{type(exc).__name__}: {exc}"
            prov = _objective_provenance(c)
            manifest = build_manifest(c, model_bytes=model, provenance=prov, artifacts=artifacts,
                                      dataset=data.info if data is not None else None,
                                      accuracy=_accuracy(c, model, data, prov), costs=_costs(c, objectives))
            if entry.get("artifact_error"):
                manifest["artifact_error"] = entry["artifact_error"]
            write_manifest(dest / "manifest.json", manifest)
            entry.update(manifest=f"{dest.name}/manifest.json", model_sha256=manifest["model"]["sha256"],
                         artifacts=[{"file": a["file"], "format": a["format"],
                                     "output_check": a["output_check"]["status"]} for a in artifacts])
            entries.append(entry)
    finally:
        if client is not None:
            client.close()
    index = {"schema": INDEX_SCHEMA, "schema_version": 1, "run_dir": str(run.resolve()),
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "only_pareto": only_pareto if ids is None else None, "agent": agent, "exports": entries}
    (out / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    return entries
