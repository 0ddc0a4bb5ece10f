"""deploy/: export of Pareto members from a run dir with real ONNX models; manifest; agent build."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.export import check_onnx_artifact, export_candidates
from deploy.manifest import SCHEMA_VERSION, ManifestError, read_manifest, write_manifest
from search.training.exporting import export_onnx

DEV = "cpu-test"


def tiny_net(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def make_run(run_dir: Path) -> list[dict]:
    """A run dir holding real ONNX models and its results list (format of search.reporting.results)."""
    (run_dir / "models").mkdir(parents=True)
    results = []
    for cid, width, acc, lat, pareto in [(1, 4, 0.90, 0.05, True), (2, 8, 0.95, 0.09, True),
                                         (3, 6, 0.85, 0.10, False)]:
        data = export_onnx(tiny_net(cid, width), (1, 1, 8, 8),
                           metadata={"hwnas.space": "menndl", "hwnas.arch_key": f"w{width}"})
        sha = hashlib.sha256(data).hexdigest()
        (run_dir / "models" / f"{sha}.onnx").write_bytes(data)
        results.append({
            "id": cid, "status": "done", "error": None, "space": "menndl", "arch_key": f"w{width}",
            "genome": {"width": width}, "pareto": pareto, "feasible": True,
            "objectives": {"accuracy": acc, f"latency_ms@{DEV}": lat, "params": 10 * width},
            "train": {"accuracy": acc, "epochs": 3, "source": "trained on digits; held-out split"},
            "model_sha256": sha, "onnx_path": f"models/{sha}.onnx",
            "measurements": [{"device_key": DEV, "agent": "127.0.0.1:1", "ok": True, "error": None,
                              "latency_ms": {"median": lat, "count": 100, "method": "ORT CPU timed loop"},
                              "peak_memory_mb": {"value": 50.0, "status": "measured", "method": "rss"},
                              "energy": {"status": "unavailable", "method": "no power sensor"}}],
        })
    results.append({"id": 4, "status": "failed", "error": "training diverged", "genome": {"width": 99},
                    "objectives": {}, "pareto": False, "model_sha256": None, "measurements": []})
    return results


def test_export_pareto_members_with_manifest(tmp_path):
    results = make_run(tmp_path / "run")
    entries = export_candidates(results, str(tmp_path / "run"), str(tmp_path / "out"))
    assert [e["candidate_id"] for e in entries] == [1, 2]
    assert all(e["error"] is None for e in entries)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1", "2", "index.json"]
    m = read_manifest(tmp_path / "out" / "2" / "manifest.json")  # verifies sha256 of model.onnx
    src = results[1]
    assert m["candidate_id"] == 2 and m["genome"] == {"width": 8} and m["space"] == "menndl"
    assert m["model"]["sha256"] == src["model_sha256"]
    assert hashlib.sha256((tmp_path / "out" / "2" / "model.onnx").read_bytes()).hexdigest() == src["model_sha256"]
    assert m["model"]["opset"] == 17
    assert m["model"]["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert m["model"]["outputs"][0]["name"] == "logits" and m["model"]["outputs"][0]["shape"][1] == 10
    assert m["model"]["metadata"]["hwnas.arch_key"] == "w8"
    assert m["objectives"][f"latency_ms@{DEV}"] == 0.09
    assert m["provenance"][f"latency_ms@{DEV}"]["status"] == "measured"
    assert m["provenance"]["accuracy"]["status"] == "measured"
    assert m["provenance"]["params"]["status"] == "computed"
    assert m["measurements"][0]["energy"]["status"] == "unavailable"
    assert m["artifacts"] == [] and m["schema_version"] == SCHEMA_VERSION and m["hwnas_version"]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [e["candidate_id"] for e in index["exports"]] == [1, 2] and index["only_pareto"] is True


def test_export_all_ids_and_bad_files(tmp_path):
    results = make_run(tmp_path / "run")
    # candidate 3's file corrupted, candidate 1's missing: both reported, 2 still exported
    p3 = tmp_path / "run" / results[2]["onnx_path"]
    p3.write_bytes(p3.read_bytes()[:-10] + b"0123456789")
    (tmp_path / "run" / results[0]["onnx_path"]).unlink()
    entries = export_candidates(results, str(tmp_path / "run"), str(tmp_path / "out"), only_pareto=False)
    by = {e["candidate_id"]: e for e in entries}
    assert set(by) == {1, 2, 3}
    assert "missing" in by[1]["error"] and "sha256" in by[3]["error"] and by[2]["error"] is None
    assert not (tmp_path / "out" / "3").exists()
    only = export_candidates(results, str(tmp_path / "run"), str(tmp_path / "o2"), ids=[2])
    assert [e["candidate_id"] for e in only] == [2]
    with pytest.raises(RuntimeError, match="no candidates with ids"):
        export_candidates(results, str(tmp_path / "run"), str(tmp_path / "o3"), ids=[42])


def test_manifest_rejects_tampering_and_newer_schema(tmp_path):
    results = make_run(tmp_path / "run")
    export_candidates(results, str(tmp_path / "run"), str(tmp_path / "out"))
    d = tmp_path / "out" / "1"
    m = read_manifest(d / "manifest.json")
    m["schema_version"] = SCHEMA_VERSION + 1
    write_manifest(d / "manifest.json", m)
    with pytest.raises(ManifestError, match="schema_version"):
        read_manifest(d / "manifest.json")
    m["schema_version"] = SCHEMA_VERSION
    write_manifest(d / "manifest.json", m)
    (d / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(ManifestError, match="does not match the sha256"):
        read_manifest(d / "manifest.json")
    assert read_manifest(d / "manifest.json", verify=False)["candidate_id"] == 1


def test_onnx_artifact_check_detects_different_outputs():
    a = export_onnx(tiny_net(1, 4), (1, 1, 8, 8))
    b = export_onnx(tiny_net(2, 4), (1, 1, 8, 8))  # same graph, other weights
    same = check_onnx_artifact(a, a)
    assert same["status"] == "passed" and same["max_abs_diff"] == 0.0
    diff = check_onnx_artifact(a, b)
    assert diff["status"] == "failed" and diff["max_abs_diff"] > 1e-3
    assert check_onnx_artifact(a, b"garbage")["status"] == "error"


def test_export_with_local_agent_builds_and_checks_artifact(tmp_path):
    try:
        from device_agent.config import BuildConfig
        from device_agent.launcher import start_local_agent
    except ImportError as exc:
        pytest.skip(f"device_agent client/launcher not importable: {exc}")
    results = make_run(tmp_path / "run")
    with start_local_agent(token="s3cret") as agent:
        entries = export_candidates(results, str(tmp_path / "run"), str(tmp_path / "out"),
                                    agent=agent.address, token="s3cret",
                                    build=BuildConfig(backend="onnxruntime", intra_op_threads=1))
        bad = export_candidates(results, str(tmp_path / "run"), str(tmp_path / "bad"), ids=[2],
                                agent=agent.address, token="wrong")
    assert all(e["error"] is None and "artifact_error" not in e for e in entries), entries
    m = read_manifest(tmp_path / "out" / "2" / "manifest.json")  # verifies the artifact sha256 too
    (art,) = m["artifacts"]
    assert art["file"] == "model.ort.onnx" and art["format"] == "onnx" and art["backend"] == "onnxruntime"
    assert art["output_check"]["status"] == "passed", art["output_check"]
    assert art["output_check"]["max_abs_diff"] < 1e-4
    assert art["agent"] == agent.address and art["device_key"]
    assert art["build_config"]["backend"] == "onnxruntime" and art["provenance"]["versions"]
    assert (tmp_path / "out" / "2" / "model.ort.onnx").stat().st_size > 0
    # reference and artifact really differ as files (ORT rewrote the graph) yet agree on outputs
    assert art["sha256"] != m["model"]["sha256"]
    # a rejected token is recorded, the ONNX export is kept
    assert "Unauthenticated" in bad[0]["artifact_error"] or "token" in bad[0]["artifact_error"].lower(), bad
    assert "artifact_error" in bad[0] and (tmp_path / "bad" / "2" / "model.onnx").exists()
    assert np.isfinite(art["output_check"]["max_abs_diff"])
