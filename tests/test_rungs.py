"""RungLadder (asynchronous successive halving by multi-objective rank) and the [fidelity] config."""
from __future__ import annotations

import pytest

from search import config as cfgmod
from search.loop.rungs import RungLadder
from search.objectives import Constraint, Objective

OBJ = [Objective.parse("accuracy"), Objective.parse("params")]


def test_first_arrival_goes_on_then_only_the_best_third():
    ladder = RungLadder(rungs=(1, 3, 9), eta=3, objectives=OBJ)
    assert ladder.record(0, 1, {"accuracy": 0.5, "params": 100})  # alone at the rung: promoted
    assert not ladder.record(0, 2, {"accuracy": 0.4, "params": 200})  # dominated by #1; 2 // 3 -> best 1
    assert not ladder.record(0, 3, {"accuracy": 0.45, "params": 150})  # n=3: best 1 is #1
    assert ladder.record(0, 4, {"accuracy": 0.9, "params": 50})  # dominates everyone
    # n=6: best 2 by rank then crowding; a non-dominated newcomer at an extreme of the front goes on
    assert not ladder.record(0, 5, {"accuracy": 0.3, "params": 300})
    assert ladder.record(0, 6, {"accuracy": 0.95, "params": 500})
    assert not ladder.record(2, 1, {"accuracy": 0.99, "params": 1})  # the top rung promotes nobody


def test_constraint_violators_rank_last():
    ladder = RungLadder(rungs=(1, 2), eta=2, objectives=OBJ, constraints=[Constraint.parse("params <= 100")])
    ladder.record(0, 1, {"accuracy": 0.2, "params": 90})
    assert not ladder.record(0, 2, {"accuracy": 0.99, "params": 1000})  # better accuracy, infeasible


def test_fidelity_section_parses_and_rejects_bad_rungs():
    cfg = cfgmod.from_dict({"fidelity": {"rungs": [1, 3, 9], "eta": 3}, "search": {"cost_first": True}})
    assert cfg.fidelity.rungs == (1, 3, 9) and cfg.fidelity.enabled and cfg.cost_first
    assert cfgmod.restore(cfg.to_stored()).fidelity == cfg.fidelity
    old = cfg.to_stored()
    del old["fidelity"]  # a run stored before [fidelity] existed
    assert not cfgmod.restore(old).fidelity.enabled
    for bad in ({"rungs": [3, 1]}, {"rungs": [1, 3], "eta": 1}, {"rungs": "1,3"}, {"rung": [1]}):
        with pytest.raises(cfgmod.ConfigError):
            cfgmod.from_dict({"fidelity": bad})
    with pytest.raises(cfgmod.ConfigError, match="supernet:PATH"):
        cfgmod.from_dict({"search": {"accuracy": "table.csv"}})


def test_cli_flags_become_config_overrides():
    from search.cli import CLIError, _cheap_overrides, build_parser

    cfg = cfgmod.load(None)
    args = build_parser().parse_args(["search", "--cost-first", "--rungs", "1,3,9", "--eta", "4", "--early-bird",
                                      "--inherit-weights", "--accuracy", "supernet:x.pt"])
    out = _cheap_overrides(args, cfg)
    assert out["cost_first"] and out["accuracy"] == "supernet:x.pt"
    assert out["fidelity"] == cfgmod.FidelitySettings(rungs=(1, 3, 9), eta=4)
    assert out["train"].early_bird and out["train"].inherit_weights and out["train"].max_epochs == cfg.train.max_epochs
    with pytest.raises(CLIError, match="--rungs"):
        _cheap_overrides(build_parser().parse_args(["search", "--rungs", "1,x"]), cfg)
    assert _cheap_overrides(build_parser().parse_args(["search"]), cfg) == {}
