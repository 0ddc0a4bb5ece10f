"""A whole NAS-Bench-201-shaped search on table data, end to end, through a real agent process.

The table is written here (every one of the 15,625 cells, an accuracy column in percent as
NAS-Bench-201 reports it and a latency column made from per-op costs), so this runs without the
shared data: ``hwnas agent serve --backend table`` answers the measurements, ``hwnas search
--accuracy-table`` replaces training, then ``hwnas results --json``, ``hwnas status`` and
``hwnas report`` read the store. Every number in the results must be the table's, with the
table's provenance, and the Pareto flags must be the front of what was evaluated.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _agent_util import write_nb201_table
from device_agent.launcher import REPO_ROOT, start_local_agent
from search.pareto import pareto_mask


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, dict[str, tuple[float, float]]]:
    """``synth.csv.gz``: arch_str, acc (percent), lat_synth (ms) for all 15,625 cells."""
    path = tmp_path_factory.mktemp("table") / "synth.csv.gz"
    return path, write_nb201_table(path)


def hwnas(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def search_on_table(path: Path, out: Path, *args: str) -> list[dict]:
    """``hwnas search`` on the table through a real table agent process; the results, all done."""
    agent = start_local_agent(extra_args=["--backend", "table", "--table", str(path),
                                          "--metric", "latency_ms=lat_synth", "--device-key", "synth"])
    try:
        proc = hwnas("search", "--out", str(out), "--space", "nb201", "--accuracy-table", f"{path}:acc",
                     "--agent", agent.address, *(["--token", agent.token] if agent.token else []),
                     "--no-progress", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        agent.stop()
    res = hwnas("results", str(out), "--json")
    assert res.returncode == 0, res.stderr
    cands = json.loads(res.stdout)
    assert all(c["status"] == "done" for c in cands), [c["error"] for c in cands if c["status"] != "done"]
    return cands


def test_table_search_through_a_real_agent(table, tmp_path):
    path, rows = table
    out = tmp_path / "run"
    cands = search_on_table(path, out, "--budget", "60", "--seed", "5",
                            "--objective", "accuracy", "--objective", "latency_ms")
    assert len(cands) == 60
    assert len({c["arch_key"] for c in cands}) == 60, "a cell was proposed twice"
    for c in cands:
        acc, lat = rows[c["arch_key"]]
        assert c["objectives"]["accuracy"] == pytest.approx(acc / 100)  # percent -> fraction
        assert c["objectives"]["latency_ms@synth"] == pytest.approx(lat)
        (m,) = c["measurements"]
        assert m["ok"] and m["device_key"] == "synth" and m["backend"] == "table"
        assert m["latency_ms"]["method"].startswith("table:synth.csv.gz:lat_synth"), m["latency_ms"]["method"]
    # the flags are the front of what was evaluated (accuracy max, latency min)
    F = np.array([[-c["objectives"]["accuracy"], c["objectives"]["latency_ms@synth"]] for c in cands])
    assert [c["pareto"] for c in cands] == pareto_mask(F).tolist()
    # the search did better than its random start: the front holds bred candidates
    assert any(c["origin"] != "sample" for c in cands if c["pareto"])

    st = hwnas("status", str(out), "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["candidates"] == {"done": 60} and status["finished"]
    (a,) = status["agents"]
    assert a["device_key"] == "synth" and a["measured"] == 60 and a["health"] == "ok"

    rep = hwnas("report", str(out), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert (tmp_path / "report" / "index.html").is_file()


def test_default_objectives_on_a_table_count_the_built_models_parameters(table, tmp_path):
    """The default objectives include ``params``: with table accuracy and a table agent the
    server still builds each cell (no ONNX export, no training) to count its parameters."""
    from search.spaces.base import TaskSpec, get_space
    from search.training.exporting import count_params

    path, _ = table
    out = tmp_path / "run"
    cands = search_on_table(path, out, "--budget", "12", "--seed", "3")
    assert len(cands) == 12
    space = get_space("nb201")
    task = TaskSpec(in_channels=3, image_size=32, num_classes=10)
    for c in cands[:4]:
        assert "params" in c["objectives"]
        built = count_params(space.build(space.from_json(c["genome"]), task))
        assert c["objectives"]["params"] == built
    assert not any((out / "models").iterdir()), "no ONNX file is needed when nothing measures one"


def test_max_wall_s_ends_the_search_with_every_candidate_finished(table, tmp_path):
    """``--max-wall-s``: no new candidate after the limit, the ones in flight finish, the summary
    says what stopped the search; a budget far beyond reach is not spent."""
    path, _ = table
    out = tmp_path / "run"
    agent = start_local_agent(extra_args=["--backend", "table", "--table", str(path),
                                          "--metric", "latency_ms=lat_synth", "--device-key", "synth"])
    try:
        proc = hwnas("search", "--out", str(out), "--space", "nb201", "--accuracy-table", f"{path}:acc",
                     "--agent", agent.address, *(["--token", agent.token] if agent.token else []),
                     "--no-progress", "--budget", "5000", "--max-wall-s", "2",
                     "--objective", "accuracy", "--objective", "latency_ms")
    finally:
        agent.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["stopped_by"] == "max_wall_s"
    assert 0 < summary["candidates"] < 5000
    assert summary["done"] == summary["candidates"], summary  # nothing left half-way
    assert summary["wall_s"] >= 2
    st = json.loads(hwnas("status", str(out), "--json").stdout)
    assert st["finished"] and st["candidates"] == {"done": summary["candidates"]}
