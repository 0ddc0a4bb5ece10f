"""The HTML/PNG report from plausible run results: files, Pareto members, near-best choice."""
from __future__ import annotations

import json
import random
import re

import pytest

from search.objectives import Objective
from search.provenance import cost_values, provenance
from search.reporting.report import near_best, write_report

DEV = "cpu-x"
OBJS = [Objective("accuracy", "max"), Objective(f"latency_ms@{DEV}", "min"), Objective("params", "min")]


def _measurement(lat: float, mem: float) -> dict:
    return {
        "device_key": DEV, "agent": "127.0.0.1:5000", "ok": True, "error": None, "backend": "onnxruntime",
        "latency_ms": {"median": lat, "mean": lat * 1.02, "p99": lat * 1.3, "count": 200,
                       "ci_low": lat * 0.99, "ci_high": lat * 1.01, "method": "perf_counter_ns, ORT CPU"},
        "peak_memory_mb": {"value": mem, "status": "measured", "method": "ru_maxrss of the job process",
                           "unit": "MB"},
        "energy": {"status": "unavailable", "method": "no power sensor on this host", "value_mj": None},
        "flags": [],
    }


def make_results() -> list[dict]:
    """Candidates where the expected near-best picks are known by construction."""
    rng = random.Random(0)
    # id: (accuracy, latency ms, params)
    fixed = {
        3: (0.950, 2.0, 100_000),  # most accurate
        5: (0.945, 0.5, 20_000),   # within 1 point: 4x faster, 5x smaller
        7: (0.935, 0.2, 5_000),    # within 2 points (not 1): 10x faster, 20x smaller
        8: (0.900, 0.05, 1_000),   # cheapest overall but 5 points worse
    }
    results = []
    for i in range(1, 16):
        if i in (4, 11):
            results.append({"id": i, "status": "failed", "error": "training diverged: loss is nan at epoch 1",
                            "genome": {"layers": i}, "objectives": {}, "pareto": False, "measurements": []})
            continue
        if i in fixed:
            acc, lat, params = fixed[i]
        else:  # dominated filler: worse accuracy and slower than #8..#3
            acc = rng.uniform(0.80, 0.93)
            lat = rng.uniform(2.1, 5.0)
            params = rng.randint(100_001, 400_000)
        results.append({
            "id": i, "status": "done", "error": None, "genome": {"layers": i, "filters": 8 * i},
            "arch_key": f"net-{i}", "objectives": {"accuracy": acc, f"latency_ms@{DEV}": lat, "params": params},
            "params": params, "size_mb": params * 4 / 1e6, "feasible": True,
            "train": {"accuracy": acc, "epochs": 4, "source": "trained on digits; held-out split"},
            "measurements": [_measurement(lat, 40 + params / 1e4)],
        })
    from search.pareto import pareto_members

    done = [c for c in results if c["status"] == "done"]
    mask = pareto_members([c["objectives"] for c in done], OBJS)
    for c, m in zip(done, mask):
        c["pareto"] = bool(m)
    return results


def test_near_best_picks_the_cheapest_within_tolerance():
    rows = near_best(make_results(), OBJS)
    by = {(r["tolerance_points"], r["metric"]): r for r in rows}
    r1 = by[(1.0, f"latency_ms@{DEV}")]
    assert r1["best_id"] == 3 and r1["cheapest_id"] == 5 and r1["ratio"] == pytest.approx(4.0)
    assert r1["accuracy_drop_points"] == pytest.approx(0.5)
    r2 = by[(2.0, f"latency_ms@{DEV}")]
    assert r2["cheapest_id"] == 7 and r2["ratio"] == pytest.approx(10.0)
    assert by[(2.0, "params")]["ratio"] == pytest.approx(20.0)
    # measured peak memory counts as a cost; unavailable energy does not appear
    assert (1.0, f"host_peak_mb@{DEV}") in by
    assert not any(m.startswith("energy") for _, m in by)


def test_provenance_says_where_numbers_come_from():
    c = next(c for c in make_results() if c["id"] == 5)
    st, how = provenance(c, f"latency_ms@{DEV}")
    assert st == "measured" and "200 timed runs" in how and "ORT CPU" in how
    assert provenance(c, f"energy_mj@{DEV}")[0] == "unavailable"
    assert provenance(c, "params")[0] == "computed"
    assert provenance(c, "latency_ms@other-dev") == ("unavailable", "no measurement on other-dev")
    assert "energy_mj@cpu-x" not in cost_values(c, OBJS)


def test_write_report(tmp_path):
    results = make_results()
    index = write_report(results, str(tmp_path / "rep"), objectives=OBJS, title="digits test run",
                         summary={"dataset": "digits"})
    text = open(index, encoding="utf-8").read()
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["front_latency_ms_cpu-x.png", "front_params.png", "near_best.png"]
    for p in pngs:
        data = (tmp_path / "rep" / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert p in text
    members = sorted(c["id"] for c in results if c.get("pareto"))
    assert members == [3, 5, 7, 8]
    pareto_section = text.split("<h2>Pareto set")[1].split("<h2>")[0]
    listed = sorted(int(x) for x in re.findall(r"<tr><td>#(\d+)</td>", pareto_section))
    assert listed == members
    assert "measured</span>: median of 200 timed runs" in pareto_section
    failures = text.split("<h2>Failures (2)</h2>")[1]
    assert "training diverged" in failures and "#4" in failures and "#11" in failures
    rows = json.loads((tmp_path / "rep" / "near_best.json").read_text())
    assert any(r["cheapest_id"] == 7 and r["tolerance_points"] == 2.0 for r in rows)
    assert "digits" in text


def test_report_without_pareto_flags_computes_them(tmp_path):
    results = make_results()
    for c in results:
        c.pop("pareto", None)
    index = write_report(results, str(tmp_path), objectives=OBJS)
    section = open(index).read().split("<h2>Pareto set")[1].split("<h2>")[0]
    assert sorted(int(x) for x in re.findall(r"<tr><td>#(\d+)</td>", section)) == [3, 5, 7, 8]
    with pytest.raises(ValueError):
        write_report(results, str(tmp_path), objectives=[])


def test_report_of_a_run_with_nothing_finished(tmp_path):
    results = [{"id": 0, "status": "failed", "error": "export failed: bad op", "genome": {}},
               {"id": 1, "status": "pending", "genome": {}}]
    index = write_report(results, str(tmp_path), objectives=OBJS)
    text = open(index).read()
    assert "No plottable candidates" in text and "export failed: bad op" in text
    assert "pending: 1" in text and not list(tmp_path.glob("*.png"))
    assert near_best(results, OBJS) == []
