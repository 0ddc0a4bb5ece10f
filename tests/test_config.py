"""Search configuration: TOML parsing, validation errors, stored round trip."""
from __future__ import annotations

import pytest

from search import config as cfgmod
from search.objectives import Constraint, Objective, ObjectiveError, bind


def test_default_config_is_valid():
    cfg = cfgmod.load(None)
    assert cfg.dataset == "digits" and cfg.space == "menndl" and cfg.algorithm == "nsga2"
    assert [o.direction for o in cfg.objective_list()] == ["max", "min", "min"]


def test_toml_round_trip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[search]\nbudget = 5\nobjectives = ["accuracy", "min:latency_ms@gpu"]\n'
                 'constraints = ["latency_ms@gpu <= 5"]\n[measure]\nmin_iterations = 7\n'
                 '[build]\nintra_op_threads = 2\n[agents]\naddresses = ["127.0.0.1:1"]\n')
    cfg = cfgmod.load(p)
    assert cfg.budget == 5 and cfg.measure.min_iterations == 7 and cfg.build.intra_op_threads == 2
    assert cfg.constraint_list() == [Constraint("latency_ms@gpu", "<=", 5.0)]
    assert cfgmod.restore(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text, match", [
    ("[search]\nbudgte = 3\n", "unknown keys"),
    ("[serch]\n", "unknown sections"),
    ("[search]\nobjectives = ['speed']\n", "unknown metric"),
    ("[search]\nconstraints = ['latency_ms ~ 3']\n", "cannot parse"),
    ("[measure]\nbogus = 1\n", "bogus"),
    ("not toml [", "not valid TOML"),
    ("[agents]\ntls_cert = 'c.pem'\n", "tls_cert and tls_key go together"),
    ("[agents]\ntls_ca = '/nonexistent/ca.pem'\n", "no file"),
    ("[agents]\nstraggler_s = -1\n", "straggler_s"),
])
def test_broken_config_gets_clear_message(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(cfgmod.ConfigError, match=match):
        cfgmod.load(p)


def test_objective_binding_and_violation():
    assert bind("latency_ms", "cpu-x") == "latency_ms@cpu-x"
    assert bind("accuracy", "cpu-x") == "accuracy"
    assert Objective.parse("accuracy").minimized(0.9) == -0.9
    c = Constraint.parse("latency_ms <= 2")
    assert c.violation(1.0) == 0 and c.violation(3.0) == pytest.approx(0.5)
    assert c.violation(None) == float("inf")
    with pytest.raises(ObjectiveError):
        Objective.parse("latency_ms@")


def test_agent_tls_settings_reach_the_client_options(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here: the handshake test is in test_agent_security.py")
    p = tmp_path / "c.toml"
    p.write_text(f"[agents]\ntls_ca = '{ca}'\ntls_server_name = 'agent.lab'\nstraggler_s = 0\n")
    cfg = cfgmod.load(p)
    assert cfg.agents.client_tls() == {"tls_ca": str(ca), "tls_server_name": "agent.lab"}
    assert cfgmod.load(None).agents.client_tls() == {}, "no TLS unless asked"
    assert cfgmod.restore(cfg.to_dict()) == cfg


def test_train_section_validates_and_the_epoch_gene_ends_at_max_epochs():
    import dataclasses

    import pytest

    from search import config as cfgmod
    from search.loop.setup import make_space

    for bad, match in (({"time_budget_s": -1.0}, "time_budget_s"), ({"executor": "slurm"}, "executor"),
                       ({"device": "tpu"}, "device"), ({"max_epochs": 0}, "max_epochs"),
                       ({"ray_max_retries": -1}, "ray_max_retries")):
        with pytest.raises(cfgmod.ConfigError, match=match):
            cfgmod.from_dict({"train": bad})
    # a space range beyond the cap would make genes without effect: refused for a new run
    with pytest.raises(cfgmod.ConfigError, match="no effect"):
        cfgmod.from_dict({"search": {"space_options": {"max_epochs": 8}}, "train": {"max_epochs": 6}})
    cfg = cfgmod.from_dict({"train": {"max_epochs": 4}})
    assert make_space(cfg).max_epochs == 4  # the default range ends at the cap
    assert cfgmod.load(None).space_options["max_epochs"] == cfgmod.load(None).train.max_epochs
    # a stored config from before the new [train] keys restores with their defaults
    stored = cfgmod.SearchConfig().to_stored()
    stored["train"] = {"max_epochs": 6, "time_budget_s": 20.0, "patience": 2}
    restored = cfgmod.restore(stored)
    assert restored.train.executor == "local" and restored.train.device == "auto"
    assert dataclasses.replace(restored.train, time_budget_s=0.0).budget_s is None


def test_training_flags_reach_the_config(tmp_path, capsys):
    from search.cli import main as hwnas

    rc = hwnas(["search", "--out", str(tmp_path / "r"), "--time-budget-s", "-3", "--no-progress"])
    assert rc == 2 and "time_budget_s must be >= 0" in capsys.readouterr().err
    rc = hwnas(["search", "--out", str(tmp_path / "r2"), "--max-epochs", "0", "--no-progress"])
    assert rc == 2 and "[train].max_epochs must be >= 1, got 0" in capsys.readouterr().err
