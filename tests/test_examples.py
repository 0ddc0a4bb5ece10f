"""Every ``examples/*.toml`` is validated, and run with a tiny budget where it can run here.

digits (the embedded default written out; tests/test_readme_commands.py runs it through the
CLI as the README shows) and the two NAS-Bench-201 examples (one device key, two device keys)
run end to end through real agent processes (table-backed agents answering
from the shared table, as the examples' comments start them). The CIFAR-10 example is validated
(its dataset path resolves into the shared data); the Ray example needs the training work of
issue 7 (``[train] executor``) and says so when that is not merged.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _shared import NB201_TABLE
from conftest import needs_nb201
from device_agent.launcher import REPO_ROOT, start_local_agent
from search import config as cfgmod

EXAMPLES = REPO_ROOT / "examples"
TESTED = {"digits.toml", "cifar10.toml", "nb201.toml", "two-devices.toml", "ray.toml"}


def test_every_example_has_a_test():
    assert {p.name for p in EXAMPLES.glob("*.toml")} == TESTED


def test_digits_example_is_the_embedded_default():
    # `make demo` runs the embedded default; the example must not drift from it
    assert cfgmod.load(EXAMPLES / "digits.toml") == cfgmod.load(None)


def test_cifar10_example_validates():
    cfg = cfgmod.load(EXAMPLES / "cifar10.toml")
    assert cfg.dataset.endswith("cifar10/CIFAR-10-images.tar")
    assert "${" not in cfg.dataset  # the shared-data variable was expanded
    assert Path(cfg.dataset.partition(":")[2]).parent.parent == cfgmod.shared_data_dir()


def test_ray_example_validates():
    try:
        cfg = cfgmod.load(EXAMPLES / "ray.toml")
    except cfgmod.ConfigError as exc:
        if "executor" in str(exc):
            pytest.skip(f"the Ray executor ([train] executor, issue 7) is not in this tree: {exc}")
        raise
    assert cfg.train.executor == "ray"


def _table_agent(column: str, key: str):
    return start_local_agent(extra_args=["--backend", "table", "--table", str(NB201_TABLE),
                                         "--metric", f"latency_ms={column}", "--device-key", key])


def _run_example(name: str, agents: list, tmp_path: Path, budget: int) -> tuple[list[dict], str]:
    from search.cli import main
    from search.reporting.results import collect

    cfg = cfgmod.load(EXAMPLES / name)
    assert cfg.accuracy_table.startswith(str(cfgmod.shared_data_dir()))
    out = tmp_path / "run"
    args = ["search", "--config", str(EXAMPLES / name), "--out", str(out), "--budget", str(budget),
            "--no-progress"]
    for a in agents:
        args += ["--agent", a.address]
    assert main(args) == 0
    assert main(["report", str(out)]) == 0
    return collect(out), (out / "report" / "index.html").read_text()


@needs_nb201
def test_nb201_example_runs(tmp_path):
    agent = _table_agent("lat_raspi4", "raspi4")
    try:
        results, page = _run_example("nb201.toml", [agent], tmp_path, budget=16)
    finally:
        agent.stop()
    assert len(results) == 16 and all(c["status"] == "done" for c in results)
    assert all("latency_ms@raspi4" in c["objectives"] for c in results)
    assert "Deploy this on raspi4" in page


@needs_nb201
def test_two_devices_example_runs_with_a_front_and_a_box_per_key(tmp_path):
    agents = [_table_agent("lat_raspi4", "raspi4"), _table_agent("lat_pixel3", "pixel3")]
    try:
        results, page = _run_example("two-devices.toml", agents, tmp_path, budget=16)
    finally:
        for a in agents:
            a.stop()
    assert all(c["status"] == "done" for c in results)
    assert {"latency_ms@raspi4", "latency_ms@pixel3"} <= set(results[0]["objectives"])
    assert "Deploy this on raspi4" in page and "Deploy this on pixel3" in page
    assert "front_latency_ms_raspi4.png" in page and "front_latency_ms_pixel3.png" in page
    assert json.loads((tmp_path / "run" / "report" / "near_best.json").read_text())
