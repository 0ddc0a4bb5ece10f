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
    train=cfgmod.TrainSettings(max_epochs=2, time_budget_s=5.0, patience=1),
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
