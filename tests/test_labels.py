"""Every number labelled for what it is: a search on the shared NAS-Bench-201 table, through two
real table agents (raspi4: a published measurement; eyeriss: a simulator's output), shows
``published`` and ``simulated`` in the agents' results, the results JSON and the report, never
``measured`` (nothing was measured on any device here)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _shared import NB201_TABLE
from device_agent.launcher import REPO_ROOT, start_local_agent

pytestmark = pytest.mark.skipif(not NB201_TABLE.is_file(), reason=f"shared table absent: {NB201_TABLE}")


def _hwnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240)


def test_table_run_says_published_and_simulated_never_measured(tmp_path):
    agents = [start_local_agent(extra_args=["--backend", "table", "--table", str(NB201_TABLE),
                                            "--metric", metric, "--device-key", key])
              for metric, key in (("latency_ms=lat_raspi4", "raspi4"),
                                  ("latency_ms=lat_eyeriss:simulated", "eyeriss"))]
    out = tmp_path / "run"
    try:
        args = ["search", "--out", str(out), "--space", "nb201", "--budget", "6", "--seed", "1",
                "--accuracy-table", f"{NB201_TABLE}:c10_test_200ep", "--no-progress",
                "--objective", "accuracy", "--objective", "latency_ms@raspi4",
                "--objective", "latency_ms@eyeriss"]
        for a in agents:
            args += ["--agent", a.address] + (["--token", a.token] if a.token else [])
        proc = _hwnas(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        for a in agents:
            a.stop()
    res = _hwnas("results", str(out), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    cands = [c for c in json.loads(res.stdout) if c["status"] == "done"]
    assert cands
    for c in cands:
        assert c["kinds"] == {"accuracy": "published", "latency_ms@raspi4": "published",
                              "latency_ms@eyeriss": "simulated"}, c["kinds"]
        statuses = {m["device_key"]: m["latency_ms"]["status"] for m in c["measurements"]}
        assert statuses == {"raspi4": "published", "eyeriss": "simulated"}
        assert "measured" not in json.dumps([m["latency_ms"] for m in c["measurements"]])
    rep = _hwnas("report", str(out), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<span class='simulated'>simulated</span>" in html
    assert "<span class='published'>published</span>" in html
    assert "<span class='measured'>" not in html
