"""Cheap accuracy in the loop (issue 11): memory metrics as objectives/constraints, cost first,
fidelity rungs, Early-Bird stop, inherited weights. Real local agent, real training on digits."""
from __future__ import annotations

import dataclasses

import pytest

from search import config as cfgmod
from search.loop.runner import SearchRunner
from search.loop.store import Store
from search.memory import parameter_count
from search.provenance import provenance
from search.reporting.results import collect

FAST = dataclasses.replace(
    cfgmod.SearchConfig(space_options={"max_layers": 4, "max_filters": 24, "min_epochs": 2, "max_epochs": 3}),
    budget=4, population_size=4,
    train=cfgmod.TrainSettings(max_epochs=3, time_budget_s=5.0, patience=1),  # the epoch genes reach 3
    measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=5, min_duration_s=0.02, warmup_s=0.01),
)


def test_memory_metrics_are_objectives_and_constraints(tmp_path):
    cfg = dataclasses.replace(FAST, objectives=("accuracy", "peak_activation_kb", "weights_kb"),
                              constraints=("peak_activation_kb <= 100000",))
    SearchRunner(config=cfg, run_dir=tmp_path, progress=False).run()
    done = [r for r in collect(tmp_path) if r["status"] == "done"]
    assert done
    for r in done:
        mem = r["train"]["memory"]
        assert r["objectives"]["peak_activation_kb"] == mem["peak_activation_kb"] > 0
        # fp32: 4 bytes per float parameter of the exported graph (batch norm folded into convs)
        n = parameter_count(tmp_path / r["onnx_path"])
        assert r["objectives"]["weights_kb"] == pytest.approx(n * 4 / 1024) and 0 < n <= r["params"]
        status, how = provenance(r, "peak_activation_kb")
        assert status == "computed" and "search.memory" in how


def _peaks(cfg, n):
    """peak_activation_kb of the first ``n`` genomes the run's algorithm proposes (same seed)."""
    from search.algorithms.base import AlgorithmOptions, create_algorithm
    from search.loop.setup import make_space
    from search.memory import peak_activation_kb
    from search.objectives import Objective
    from search.training.data import load_dataset
    from search.training.exporting import export_onnx

    space = make_space(cfg)
    task = load_dataset(cfg.dataset, seed=cfg.seed).task
    algo = create_algorithm(cfg.algorithm, AlgorithmOptions(space=space, objectives=(Objective.parse("accuracy"),),
                                                            constraints=(), seed=cfg.seed,
                                                            population_size=cfg.population_size))
    out = []
    for _ in range(n):
        g = algo.ask().genome
        out.append(peak_activation_kb(export_onnx(space.build(g, task), space.input_shape(g, task))))
    return out


def test_cost_first_never_trains_a_violator(tmp_path):
    # seed 3: its first six proposals have distinct third and fourth peaks (the bound lies between)
    base = dataclasses.replace(FAST, budget=6, population_size=6, cost_first=True, seed=3,
                               objectives=("accuracy", "peak_activation_kb", "latency_ms"))
    peaks = sorted(_peaks(base, 6))
    bound = (peaks[2] + peaks[3]) / 2  # about half of the proposals violate it
    assert peaks[2] < bound < peaks[3]
    cfg = dataclasses.replace(base, constraints=(f"peak_activation_kb <= {bound}",))
    summary = SearchRunner(config=cfg, run_dir=tmp_path, progress=False).run()
    results = collect(tmp_path)
    bad = [r for r in results if r["status"] == "infeasible"]
    good = [r for r in results if r["status"] != "infeasible"]
    assert len(bad) == 3 and summary["infeasible"] == 3
    for r in bad:
        assert r["objectives"]["peak_activation_kb"] > bound and "violates peak_activation_kb" in r["error"]
        # never trained: no epochs, no accuracy; but its costs were measured on the untrained network
        assert r["train"]["accuracy"] is None and "epochs" not in r["train"]
        (m,) = r["measurements"]
        assert m["ok"] and m["latency_ms"]["median"] > 0
    for r in good:
        assert r["status"] == "done" and r["train"]["epochs"] >= 1 and r["objectives"]["peak_activation_kb"] <= bound
        assert len(r["measurements"]) == 1  # measured once, before training
    st = Store(tmp_path)
    assert len(st.events("candidate_infeasible")) == 3
    st.close()


def test_fidelity_rungs_promote_the_best_and_front_uses_the_top_rung(tmp_path):
    cfg = dataclasses.replace(FAST, budget=6, population_size=6, fidelity=cfgmod.FidelitySettings(rungs=(1, 2), eta=2),
                              objectives=("accuracy", "latency_ms"))
    SearchRunner(config=cfg, run_dir=tmp_path, progress=False).run()
    results = collect(tmp_path)
    done = [r for r in results if r["status"] == "done"]
    assert len(done) == 6
    top = [r for r in done if r["fidelity"] == 2]
    low = [r for r in done if r["fidelity"] == 1]
    assert top and low and len(top) <= 4  # the first arrival always goes on; then the best half
    for r in top:
        assert [x["epochs"] for x in r["train"]["rungs"]] == [1, 2]
        assert r["train"]["fidelity"]["epochs"] == 2 and r["train"]["epochs"] == 1  # trained on, one more epoch
        assert r["objectives"]["accuracy"] == r["train"]["rungs"][-1]["accuracy"]
        assert (tmp_path / "weights" / f"{r['id']}.pt").is_file()
    for r in low:
        assert len(r["train"]["rungs"]) == 1 and not r["pareto"]
    assert any(r["pareto"] for r in top)
    from search.cli import main as hwnas

    assert hwnas(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"trained to the highest rung reached (2 epochs); {len(low)} stopped at lower rungs" in page
    st = Store(tmp_path)
    assert len(st.events("candidate_promoted")) == len(top)
    assert len(st.measurements()) == 6  # costs measured once per candidate, not per rung
    # a server stopped while a promoted candidate trained on: put one back in that state
    t = top[0]
    import json

    import torch

    wpath = tmp_path / "weights" / f"{t['id']}.pt"
    state = torch.load(wpath, weights_only=False)
    state["epochs"] = 1
    torch.save(state, wpath)
    with st.db.tx() as db:
        db.execute("UPDATE candidates SET status='promoted', objectives=NULL, train=? WHERE id=?",
                   (json.dumps({**t["train"], "rungs": t["train"]["rungs"][:1]}), t["id"]))
    st.close()
    SearchRunner(config=cfg, run_dir=tmp_path, resume=True, progress=False).run()
    again = {r["id"]: r for r in collect(tmp_path)}[t["id"]]
    assert again["status"] == "done" and [x["epochs"] for x in again["train"]["rungs"]] == [1, 2]
    assert again["train"]["fidelity"]["epochs"] == 2 and again["train"]["epochs"] == 1  # on from the saved state
    st = Store(tmp_path)
    assert len(st.measurements()) == 6  # its costs were not measured again
    assert st.events("resumed")[-1]["detail"]["promoted"] == [t["id"]]
    st.close()


def test_early_bird_stops_training_and_children_inherit_weights(tmp_path):
    # a loose Early-Bird test (one distance below 0.5) so that it fires within a few epochs on digits
    train = cfgmod.TrainSettings(max_epochs=3, time_budget_s=5.0, patience=3, early_bird=True, early_bird_window=1,
                                 early_bird_eps=0.5, inherit_weights=True)
    cfg = dataclasses.replace(FAST, budget=5, population_size=2, train=train, objectives=("accuracy", "latency_ms"),
                              space_options={**FAST.space_options, "min_epochs": 3})
    SearchRunner(config=cfg, run_dir=tmp_path, progress=False).run()
    done = [r for r in collect(tmp_path) if r["status"] == "done"]
    assert len(done) >= 3
    stopped = [r for r in done if r["train"]["early_bird"]["stopped"]]
    assert stopped, [r["train"]["early_bird"] for r in done]
    for r in stopped:
        eb = r["train"]["early_bird"]
        assert r["train"]["stop_reason"] == "callback" and eb["drawn_at_epoch"] == r["train"]["epochs"] >= 2
        assert eb["distances"][-1] < 0.5
    children = [r for r in done if r["parents"] and r["train"].get("inherited")]
    assert children, [(r["parents"], r["train"].get("inherited")) for r in done]
    for r in children:
        inh = r["train"]["inherited"]
        assert inh["parent"] in r["parents"] and 0 < inh["tensors"] <= inh["of"]
