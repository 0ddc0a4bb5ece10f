"""The whole loop for real: a small search on digits with a real local agent (gRPC on
loopback, ONNX Runtime in the agent's job process), real training, a real SQLite store; then
results, report and export on the run, and a resume that redoes nothing."""
from __future__ import annotations

import dataclasses
import json

import pytest

from search import config as cfgmod
from search.cli import main as hwnas
from search.loop.runner import SearchError, SearchRunner
from search.loop.store import Store
from search.reporting.recommend import accuracy_floor
from search.reporting.results import collect

FAST = dataclasses.replace(
    cfgmod.SearchConfig(),
    budget=6, population_size=4,
    train=cfgmod.TrainSettings(max_epochs=2, time_budget_s=5.0, patience=1),
    measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=10, min_duration_s=0.05, warmup_s=0.02),
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = SearchRunner(config=FAST, run_dir=out, progress=False).run()
    assert summary["candidates"] == 6
    return out


def test_every_candidate_is_trained_measured_and_recorded(run_dir):
    results = collect(run_dir)
    assert len(results) == 6
    done = [r for r in results if r["status"] == "done"]
    assert done, [r["error"] for r in results]
    for r in results:
        assert r["status"] in ("done", "failed")
        if r["status"] == "failed":
            assert r["error"]
    for r in done:
        key = next(k for k in r["objectives"] if k.startswith("latency_ms@"))
        assert set(r["objectives"]) == {"accuracy", key, "params"}
        assert 0.0 <= r["objectives"]["accuracy"] <= 1.0
        (m,) = r["measurements"]
        assert m["ok"] and m["device_key"] == key.split("@", 1)[1]
        lat = m["latency_ms"]
        assert lat["min"] <= lat["median"] <= lat["max"] and lat["count"] >= 10
        assert lat["ci_low"] <= lat["median"] <= lat["ci_high"]
        assert r["objectives"][key] == lat["median"]
        # no sensor here: energy is reported unavailable, never invented
        assert m["energy"]["status"] == "unavailable" and m["energy"]["value_mj"] is None
        assert m["peak_memory_mb"]["status"] == "measured"
        assert (run_dir / r["onnx_path"]).is_file()
    assert any(r["pareto"] for r in done)
    assert not any(r["pareto"] for r in results if r["status"] != "done")


def test_results_json_and_report_and_export_cli(run_dir, tmp_path, capsys):
    assert hwnas(["results", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"id", "status", "error", "genome", "objectives", "pareto", "measurements"} <= set(data[0])
    assert hwnas(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file()
    assert list((tmp_path / "rep").glob("*.png"))
    assert hwnas(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    manifests = list((tmp_path / "exp").glob("*/manifest.json"))
    floor = accuracy_floor(10)  # digits: 10 classes; members at chance level are not exported
    above = [r for r in data if r["pareto"] and r["objectives"]["accuracy"] > floor]
    assert sorted(int(m.parent.name) for m in manifests) == sorted(r["id"] for r in above)
    assert hwnas(["export", str(run_dir), "--out", str(tmp_path / "all"), "--include-chance"]) == 0
    assert len(list((tmp_path / "all").glob("*/manifest.json"))) == sum(r["pareto"] for r in data)
    assert hwnas(["status", str(run_dir)]) == 0
    assert "agents:" in capsys.readouterr().out


def test_resume_redoes_no_finished_work(run_dir):
    st = Store(run_dir)
    trained_before = {c["id"]: c["train"] for c in st.candidates()}
    n_meas = len(st.measurements())
    st.close()
    cfg = dataclasses.replace(FAST, budget=8)
    summary = SearchRunner(config=cfg, run_dir=run_dir, resume=True, progress=False).run()
    assert summary["candidates"] == 8
    st = Store(run_dir)
    after = {c["id"]: c for c in st.candidates()}
    for cid, train in trained_before.items():
        assert after[cid]["train"] == train, "a finished training was redone"
    # exactly the two new candidates were measured (at most once each per key)
    new_meas = st.measurements()[n_meas:]
    assert {m["candidate_id"] for m in new_meas} <= {6, 7}
    st.close()


def test_existing_run_dir_and_unreachable_agent_are_clear_errors(run_dir, tmp_path):
    with pytest.raises(SearchError, match="already holds a run"):
        SearchRunner(config=FAST, run_dir=run_dir)
    with pytest.raises(SearchError, match="no agent could be reached"):
        SearchRunner(config=FAST, run_dir=tmp_path / "x", agents=["127.0.0.1:1"], progress=False).run()


def test_unknown_dataset_is_a_clear_cli_error(tmp_path, capsys):
    rc = hwnas(["search", "--out", str(tmp_path / "r"), "--dataset", "mnist-foo", "--no-progress"])
    assert rc == 2
    assert "mnist-foo" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--space", "--algorithm"])
def test_space_and_algorithm_choices_are_the_registries(flag, capsys):
    """``--space`` / ``--algorithm`` list the registries' names and refuse others up front."""
    from search.algorithms.base import ALGORITHMS
    from search.spaces.base import SPACES

    names = SPACES.names() if flag == "--space" else ALGORITHMS.names()
    with pytest.raises(SystemExit) as exc:
        hwnas(["search", flag, "no-such-plugin", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-plugin'" in err and all(repr(n) in err for n in names)


def test_same_seed_and_config_train_to_the_same_numbers(tmp_path):
    """Two runs with one seed and config propose the same genomes and train each to the same
    accuracies, epoch by epoch (one training worker, no time budget: only wall times and the
    agent's latencies may differ, and README's "Reproducibility" says so)."""
    cfg = dataclasses.replace(FAST, budget=3, population_size=3, seed=7,
                              train=cfgmod.TrainSettings(max_epochs=2, time_budget_s=0.0, patience=2))
    timing = {"time_s", "images_per_s"}

    def trained(run_dir):
        SearchRunner(config=cfg, run_dir=run_dir, progress=False).run()
        out = {}
        for r in collect(run_dir):
            assert r["status"] == "done", r["error"]
            history = [{k: v for k, v in h.items() if k not in timing} for h in r["train"]["history"]]
            out[r["id"]] = (r["genome"], r["params"], r["objectives"]["accuracy"], history)
        return out

    first, second = trained(tmp_path / "a"), trained(tmp_path / "b")
    assert len(first) == 3
    assert first == second
