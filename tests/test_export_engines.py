"""Engines from the CLI: ``hwnas export DIR --agent H:P --backend onnxruntime --precision
fp32|fp16`` on a real run (digits, real training, a real local agent process). The agent builds
the artifact at the requested precision (fp16: ONNX Runtime's float16 converter), the export
checks it on the run's validation images by top-1 agreement with model.onnx and reports the max
abs difference, and the manifest says which precision was obtained per layer type, the test
accuracy, every cost with its kind and device key, and the runtime versions. A precision the
backend cannot give is a build error: on x86 ONNX Runtime's CPU provider has no fp16 kernels and
runs an fp16 graph in fp32, so there the fp16 export fails with that reason (where it has them,
the fp16 artifact is checked like the fp32 one); the top-1 check itself is run on an fp16 graph
here directly."""
from __future__ import annotations

import dataclasses
import json

import pytest

from deploy.manifest import read_manifest
from device_agent.launcher import start_local_agent
from search import config as cfgmod
from search.cli import main as hwnas
from search.loop.runner import SearchRunner

FAST = dataclasses.replace(
    cfgmod.SearchConfig(), budget=3, population_size=3,
    train=cfgmod.TrainSettings(max_epochs=2, time_budget_s=5.0, patience=1),
    measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=10, min_duration_s=0.05, warmup_s=0.02),
)


@pytest.fixture(scope="module")
def run_and_agent(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    SearchRunner(config=FAST, run_dir=out, progress=False).run()
    agent = start_local_agent()
    try:
        yield out, agent
    finally:
        agent.stop()


def _export(run_dir, out, agent, *extra: str) -> int:
    return hwnas(["export", str(run_dir), "--out", str(out), "--agent", agent.address,
                  *(["--token", agent.token] if agent.token else []), "--check-images", "200", *extra])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_cli_builds_checks_and_labels_the_precision(run_and_agent, tmp_path, precision, capsys):
    run_dir, agent = run_and_agent
    out = tmp_path / "export"
    rc = _export(run_dir, out, agent, "--backend", "onnxruntime", "--precision", precision)
    err = capsys.readouterr().err
    index = json.loads((out / "index.json").read_text())
    errors = [e.get("artifact_error") for e in index["exports"]]
    if precision == "fp16" and all(errors):  # the CPU provider ran fp16 as fp32: an error, not a label
        assert rc == 1 and "fp16 was not obtained: the build gave fp32" in err
        assert all("fp16 was not obtained: the build gave fp32" in e for e in errors), errors
        assert all(not (out / e["dir"] / "model.ort.onnx").exists() for e in index["exports"])
        return
    assert rc == 0, err
    assert index["exports"] and all(e["error"] is None and not e.get("artifact_error") for e in index["exports"]), index
    m = read_manifest(out / index["exports"][0]["manifest"])  # checks every file's sha256
    (art,) = m["artifacts"]
    assert art["file"] == "model.ort.onnx" and art["build_config"]["precision"] == precision
    assert art["precision"]["requested"] == precision and art["precision"]["obtained"] == precision
    assert set(art["precision"]["by_layer_type"]) == {precision}
    check = art["output_check"]
    assert check["status"] == "passed" and check["images"] == 200, check
    assert check["top1_agreement"] >= 0.99 and check["max_abs_diff"] >= 0.0
    if precision == "fp32":
        assert check["max_abs_diff"] < 1e-3
    else:  # fp16 weights: outputs differ a little, classes do not
        assert 0.0 < check["max_abs_diff"] < 0.5
    # what a deployment needs: input, preprocessing, classes, accuracies, labelled costs, versions
    assert m["input"]["name"] == "input" and m["input"]["layout"] == "NCHW"
    assert m["preprocessing"]["scale"] == 16.0 and len(m["preprocessing"]["mean"]) == 1
    assert m["classes"] == [str(i) for i in range(10)]
    assert m["accuracy"]["validation"]["kind"] == "measured"
    test = m["accuracy"]["test"]
    assert test["kind"] == "measured" and 0.0 <= test["value"] <= 1.0, test
    costs = {c["metric"]: c for c in m["costs"]}
    lat = next(c for k, c in costs.items() if k.startswith("latency_ms@"))
    assert lat["kind"] == "measured" and lat["device_key"] and costs["params"]["kind"] == "computed"
    assert costs.get(f"host_peak_mb@{lat['device_key']}", {}).get("kind") == "measured"
    assert m["runtime_versions"][lat["device_key"]]["onnxruntime"]


def test_precision_the_backend_cannot_give_is_an_error(run_and_agent, tmp_path, capsys):
    run_dir, agent = run_and_agent
    out = tmp_path / "export"
    assert _export(run_dir, out, agent, "--backend", "onnxruntime", "--precision", "int8") == 1
    index = json.loads((out / "index.json").read_text())
    assert all("int8" in e["artifact_error"] for e in index["exports"]), index
    assert all(not (out / e["dir"] / "model.ort.onnx").exists() for e in index["exports"])
    # a build flag without an agent is a one-line error
    assert hwnas(["export", str(run_dir), "--out", str(out), "--precision", "fp16"]) == 2
    assert "--agent" in capsys.readouterr().err


def test_top1_check_of_an_fp16_graph_on_the_runs_images(run_and_agent, tmp_path):
    """The task-level check on real validation images: an fp16 graph agrees with its fp32
    reference on the top-1 class (>= 99 %) while its outputs differ a little; a different
    network does not agree and fails."""
    from deploy.check import agreement_check
    from deploy.data import load_export_data
    from device_agent.backends.onnxruntime_backend import convert_to_fp16
    from search.reporting.results import collect

    run_dir, _ = run_and_agent
    data = load_export_data(run_dir, check_images=200)
    assert data.check_images.shape[1:] == (1, 8, 8) and len(data.check_images) == 200
    done = [c for c in collect(run_dir) if c["status"] == "done"]
    ref = (run_dir / done[0]["onnx_path"]).read_bytes()
    (tmp_path / "m.onnx").write_bytes(ref)
    fp16 = (tmp_path / "m16.onnx")
    convert_to_fp16(str(tmp_path / "m.onnx"), str(fp16))
    check = agreement_check(ref, fp16.read_bytes(), data.check_images, source="digits")
    assert check["status"] == "passed" and check["top1_agreement"] >= 0.99, check
    assert 0.0 < check["max_abs_diff"] < 0.5 and check["images"] == 200
    # an artifact whose classifier weights are negated picks other classes: the check fails
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(ref)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
    bad = agreement_check(ref, model.SerializeToString(), data.check_images)
    assert bad["status"] == "failed" and bad["top1_agreement"] < 0.5, bad


def test_calibration_images_travel_and_onnxruntime_says_it_does_not_calibrate(run_and_agent, tmp_path, capsys):
    """``--calibration N``: N training images are uploaded to the agent as a .npy and named in
    the build; ONNX Runtime does not calibrate INT8, so the build fails saying TensorRT does."""
    run_dir, agent = run_and_agent
    out = tmp_path / "export"
    assert _export(run_dir, out, agent, "--precision", "int8", "--calibration", "32") == 1
    index = json.loads((out / "index.json").read_text())
    assert all("does not calibrate INT8 (TensorRT does)" in e["artifact_error"] for e in index["exports"]), index
    assert hwnas(["export", str(run_dir), "--out", str(out), "--agent", agent.address,
                  "--precision", "fp16", "--calibration", "8"]) == 2
    assert "--precision int8 or best" in capsys.readouterr().err
