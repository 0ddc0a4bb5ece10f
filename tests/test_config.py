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
