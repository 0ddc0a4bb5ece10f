"""Table look-ups (device_agent.tables): a CSV we write, and the real NAS-Bench-201 table where it is present."""
from __future__ import annotations

import csv
import gzip
import os
import time

import pytest

from device_agent.backends import BACKENDS, UnsupportedError, get_backend
from device_agent.tables import TableSource, answers_by_arch_key, load_table
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.core.describe import describe_device
from device_agent.core.jobs import run_job

from _shared import NB201_TABLE

NB201 = str(NB201_TABLE)

ROWS = [("a|b", "1.5", "10.0", "3"), ("c|d", "2.25", "", "4"), ("e|f", "", "7.0", "")]


def write_csv(path, gz: bool = False) -> str:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_str", "lat_dev", "energy_dev", "mem_dev"])
        w.writerows(ROWS)
    return str(path)


def test_simulated_column_is_labelled_simulated_never_measured(tmp_path):
    path = write_csv(tmp_path / "t.csv", False)
    tb = TableSource(table_path=path, metrics={"latency_ms": "lat_dev:simulated", "energy_mj": "energy_dev"})
    r = tb.lookup("a|b")
    assert r.latency_ms.median == 1.5 and r.latency_ms.status == "simulated"
    assert r.latency_ms.method == "table:t.csv:lat_dev" and r.energy.status == "published"
    assert tb.describe()["kinds"] == {"latency_ms": "simulated", "energy_mj": "published"}
    with pytest.raises(ValueError, match="lat_nope"):  # the column, not "lat_nope:simulated"
        TableSource(table_path=path, metrics={"latency_ms": "lat_nope:simulated"})


@pytest.mark.parametrize("gz", [False, True])
def test_lookup_from_written_csv(tmp_path, gz):
    path = write_csv(tmp_path / ("t.csv.gz" if gz else "t.csv"), gz)
    tb = TableSource(table_path=path, metrics={"latency_ms": "lat_dev", "energy_mj": "energy_dev",
                                                "peak_memory_mb": "mem_dev"})
    r = tb.lookup("a|b", job_id="j", device_key="dev")
    assert r.ok and r.backend == "table" and r.job_id == "j"
    s = r.latency_ms
    assert s.median == s.mean == 1.5 and s.count == 1
    assert s.method == f"table:{os.path.basename(path)}:lat_dev"
    assert r.energy.status == "published" and s.status == "published" and r.energy.value_mj == 10.0
    assert r.energy.method == f"table:{os.path.basename(path)}:energy_dev"
    assert r.peak_memory_mb.value == 3.0 and r.peak_memory_mb.status == "published"
    # missing energy cell: energy unavailable, never invented
    r = tb.lookup("c|d")
    assert r.ok and r.latency_ms.median == 2.25 and r.energy.status == "unavailable" and r.energy.value_mj is None
    # missing latency cell and unknown key: unsupported
    assert tb.lookup("e|f").error_kind == "unsupported"
    unknown = tb.lookup("zz")
    assert unknown.error_kind == "unsupported" and "not in table" in unknown.error


def test_bad_configs(tmp_path):
    path = write_csv(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="missing columns"):
        TableSource(table_path=path, metrics={"latency_ms": "no_such_column"})
    with pytest.raises(ValueError, match="latency_ms"):
        TableSource(table_path=path, metrics={"energy_mj": "energy_dev"})
    assert TableSource().lookup("a|b").error_kind == "unsupported"
    # a table is not a backend: it answers by arch_key and runs no model
    assert answers_by_arch_key("table") and not answers_by_arch_key("onnxruntime")
    assert "table" not in BACKENDS.names()
    with pytest.raises(UnsupportedError, match="unknown backend"):
        get_backend("table")


def test_load_table_quoted_and_plain_agree(tmp_path):
    """The comma-split fast path (no quote in the text) and csv.reader give the same dict."""
    plain = write_csv(tmp_path / "plain.csv")
    quoted = tmp_path / "quoted.csv"
    with open(quoted, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["arch_str", "lat_dev", "energy_dev", "mem_dev"])
        w.writerows(ROWS)
        w.writerow(["g,h", "5", "6"])  # a comma inside a key, a short row
    cols = ("lat_dev", "energy_dev", "mem_dev")
    a = load_table(plain, "arch_str", cols)
    b = load_table(str(quoted), "arch_str", cols)
    assert a == {"a|b": (1.5, 10.0, 3.0), "c|d": (2.25, None, 4.0), "e|f": (None, 7.0, None)}
    assert b == {**a, "g,h": (5.0, 6.0, None)}
    with pytest.raises(ValueError, match="missing columns"):
        load_table(plain, "arch_str", ("nope",))


def test_run_job_answers_in_process(tmp_path):
    tb = TableSource(table_path=write_csv(tmp_path / "t.csv"), metrics={"latency_ms": "lat_dev"})
    t0 = time.perf_counter()
    r = run_job("", BuildConfig(backend="table"), MeasureConfig(), job_id="t", device_key="dev",
                arch_key="a|b", table=tb)
    assert time.perf_counter() - t0 < 0.5  # no child process
    assert r.ok and r.latency_ms.median == 1.5 and r.measure_config == MeasureConfig().to_dict()
    r = run_job("", BuildConfig(backend="table"), MeasureConfig(), job_id="t", device_key="dev", arch_key="a|b")
    assert r.error_kind == "unsupported" and "no table" in r.error


def test_describe_reports_table(tmp_path):
    tb = TableSource(table_path=write_csv(tmp_path / "t.csv"), metrics={"latency_ms": "lat_dev"})
    d = describe_device(device_key="dev", table=tb)
    assert d["device_key"] == "dev" and d["backends"]["onnxruntime"]["available"]
    assert d["backends"]["table"]["table"]["rows"] == 3
    assert "tensorrt" in d["backends"] and d["backends"]["tensorrt"]["reason"]
    assert isinstance(d["sensors"], dict) and d["versions"]["onnxruntime"]


@pytest.mark.skipif(not os.path.exists(NB201), reason="NAS-Bench-201 table not present at ../shared/data/nb201")
def test_nb201_table_lookup_is_fast_and_exact():
    with gzip.open(NB201, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    tb = TableSource(table_path=NB201, metrics={"latency_ms": "lat_raspi4"})
    row = rows[1234]
    r = tb.lookup(row["arch_str"])
    assert r.ok and r.latency_ms.median == float(row["lat_raspi4"])
    assert r.latency_ms.method == "table:nb201_tables.csv.gz:lat_raspi4"
    keys = [rw["arch_str"] for rw in rows[:2000]]
    t0 = time.perf_counter()
    for k in keys:
        tb.lookup(k)
    per_call = (time.perf_counter() - t0) / len(keys)
    assert per_call < 500e-6, f"{per_call * 1e6:.0f} us per lookup"
    # loaded once per process: a second backend on the same table shares the dict
    assert TableSource(table_path=NB201, metrics={"latency_ms": "lat_raspi4"})._table is tb._table
