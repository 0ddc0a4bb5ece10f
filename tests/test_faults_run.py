"""Issue 14's probes of a run as a user meets it: the ``hwnas`` command in real processes, real
table agents on loopback, real SQLite files, a real small filesystem for the full disk.

Each test is named ``test_probe_NN_*`` after the issue's item; ``bench/fault_probes.py`` runs
them all and prints probe | held/broke.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _agent_util import write_nb201_table
from device_agent.launcher import REPO_ROOT, LocalAgent, start_local_agent


def hwnas(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``hwnas ARGS`` in a new process (stderr is a pipe: not a terminal)."""
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def hwnas_bg(*args: str, stderr: Path) -> subprocess.Popen:
    """Start ``hwnas ARGS`` in the background, stderr into a file."""
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(stderr, "w"))  # noqa: SIM115


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single ``hwnas: error:`` line of a failed command (no traceback)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hwnas: error:")]
    assert len(lines) >= 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A NAS-Bench-201-shaped table (arch_str, acc in percent, lat_synth in ms)."""
    path = tmp_path_factory.mktemp("table") / "synth.csv.gz"
    write_nb201_table(path)
    return path


def table_agent(table: Path, key: str = "synth", column: str = "lat_synth", token: str | None = None,
                port: int = 0) -> LocalAgent:
    """A real table agent process answering ``latency_ms`` from ``column``."""
    extra = ["--backend", "table", "--table", str(table), "--metric", f"latency_ms={column}",
             "--device-key", key]
    if port:
        extra += ["--port", str(port)]  # the launcher's own --port 0 comes first; the last wins
    return start_local_agent(token=token, extra_args=extra)


@pytest.fixture(scope="module")
def agent(table):
    a = table_agent(table)
    yield a
    a.stop()


def search_args(table: Path, out: Path, agent: LocalAgent, *more: str) -> list[str]:
    return ["search", "--out", str(out), "--space", "nb201", "--accuracy-table", f"{table}:acc",
            "--agent", agent.address, "--no-progress", *more]


def candidates(run: Path) -> int:
    """Candidates in a run store, read without writing (the writer may be running)."""
    with contextlib.closing(sqlite3.connect(f"file:{run / 'run.sqlite'}?mode=ro", uri=True, timeout=10)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is being created
            return 0


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def finished_run(table, agent, tmp_path_factory) -> Path:
    """A finished 8-candidate table run with ONNX files (size_mb is an objective)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = hwnas(*search_args(table, out, agent, "--budget", "8", "--objective", "accuracy",
                              "--objective", "latency_ms", "--objective", "size_mb"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """A tmpfs of ``size`` mounted at ``where`` (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# ---------------------------------------------------------------------------------- item 1
def test_probe_01_full_disk_stops_with_one_line_and_resume_continues(table, agent, tmp_path):
    with small_filesystem(tmp_path / "disk", "8m") as disk:
        free = shutil.disk_usage(disk).free
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free - 300 * 1024))  # ~300 KB left: full after a few candidates
        run = disk / "run"
        t0 = time.monotonic()
        proc = hwnas(*search_args(table, run, agent, "--budget", "5000"), timeout=120)
        assert time.monotonic() - t0 < 90, "the search must stop, not hang"
        line = one_line_error(proc)
        assert proc.returncode == 2 and "full" in line and "--resume" in line, line
        # the store is intact, and the search goes on once there is space again
        filler.unlink()
        proc = hwnas("status", str(run))
        assert proc.returncode == 0, proc.stderr
        with contextlib.closing(sqlite3.connect(f"file:{run / 'run.sqlite'}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = candidates(run)
        proc = hwnas("search", "--resume", str(run), "--budget", str(n + 5), "--no-progress", timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert summary["candidates"] == n + 5 and summary["done"] == n + 5


# ---------------------------------------------------------------------------------- item 2
def test_probe_02_run_directory_is_exclusive(table, agent, tmp_path):
    run = tmp_path / "run"
    first = hwnas_bg(*search_args(table, run, agent, "--budget", "100000"), stderr=tmp_path / "first.err")
    try:
        wait_for(lambda: (run / "run.sqlite").exists() and candidates(run) >= 3, 60, "the first search")
        second = hwnas("search", "--resume", str(run), "--no-progress", timeout=60)
        line = one_line_error(second)
        assert f"PID {first.pid}" in line, line
        again = hwnas(*search_args(table, run, agent, "--budget", "5"))
        assert one_line_error(again)
        assert first.poll() is None, "the first search must go on untouched"
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9 frees the lock
        first.wait(30)
    n = candidates(run)
    proc = hwnas("search", "--resume", str(run), "--budget", str(n + 3), "--no-progress", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(hwnas("results", str(run), "--json").stdout)
    assert len(res) == n + 3 and all(c["status"] == "done" for c in res)
    keys = [(c["id"], m["device_key"]) for c in res for m in c["measurements"] if m["ok"]]
    assert len(keys) == len(set(keys)), "a job measured twice"


# ---------------------------------------------------------------------------------- item 3
def test_probe_03_resume_keeps_agents_and_device_key_bindings(table, tmp_path):
    run = tmp_path / "run"
    a = table_agent(table, key="board-a")
    try:
        proc = hwnas(*search_args(table, run, a, "--budget", "6"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        proc = hwnas("search", "--resume", str(run), "--budget", "10", "--no-progress")  # no --agent
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads(hwnas("results", str(run), "--json").stdout)
        assert len(res) == 10 and all(c["status"] == "done" for c in res)
        assert all(set(c["objectives"]) >= {"latency_ms@board-a"} for c in res)
        assert {m["agent"] for c in res for m in c["measurements"]} == {a.address}
    finally:
        a.stop()
    # the run's agent is gone and another device is there: say so, change nothing
    b = table_agent(table, key="board-b")
    try:
        proc = hwnas("search", "--resume", str(run), "--budget", "12", "--agent", b.address, "--no-progress")
        line = one_line_error(proc)
        assert "board-a" in line, line
        proc = hwnas("search", "--resume", str(run), "--budget", "12", "--no-progress")
        assert one_line_error(proc)
    finally:
        b.stop()
    objectives = json.loads(hwnas("results", str(run), "--json").stdout)[0]["objectives"]
    assert "latency_ms@board-a" in objectives
    status = json.loads(hwnas("status", str(run), "--json").stdout)
    assert status["candidates"] == {"done": 10}


# ---------------------------------------------------------------------------------- item 4
@pytest.mark.parametrize("text, key", [
    ('[measure]\ntimeout_s = "abc"\n', "[measure].timeout_s"),
    ('[search]\nbudget = "twelve"\n', "[search].budget"),
    ("[search]\nbudget = 12.5\n", "[search].budget"),
    ("[search]\nbudget = true\n", "[search].budget"),
    ('[search]\nseed = "x"\n', "[search].seed"),
    ("[search]\npopulation_size = 1\n", "[search].population_size"),
    ('[agents]\naddresses = "127.0.0.1:1"\n', "[agents].addresses"),
    ("[agents]\nmax_attempts = 0\n", "[agents].max_attempts"),
    ("[train]\ntime_budget_s = nan\n", "[train].time_budget_s"),
    ('[build]\nintra_op_threads = "2"\n', "[build].intra_op_threads"),
    ("[measure]\nmemory_limit_mb = -3\n", "[measure].memory_limit_mb"),
    ('[search]\nalgorithm = "nope"\n', "[search].algorithm"),
])
def test_probe_04_config_types_and_ranges(tmp_path, text, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    proc = hwnas("search", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress", timeout=60)
    line = one_line_error(proc)
    assert key in line, line
    assert not (tmp_path / "run").exists(), "nothing is created for a bad config"


# ---------------------------------------------------------------------------------- item 6
def test_probe_06_export_fails_for_missing_or_corrupt_models(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ok = hwnas("export", str(run), "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    models = sorted((run / "models").glob("*.onnx"))
    assert models
    models[0].write_bytes(b"not the model")
    corrupt = hwnas("export", str(run), "--all", "--out", str(tmp_path / "corrupt"))
    assert corrupt.returncode == 1 and "corrupted" in corrupt.stderr, corrupt.stderr
    shutil.rmtree(run / "models")
    gone = hwnas("export", str(run), "--out", str(tmp_path / "gone"))
    assert gone.returncode == 1 and "missing" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr
    assert gone.stdout.strip().splitlines()[-1].startswith("0 candidate(s) exported")


# ---------------------------------------------------------------------------------- item 7
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_probe_07_damaged_store_is_one_line_and_never_written(finished_run, tmp_path, how):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    db = run / "run.sqlite"
    _damage(db, how)
    before = db.read_bytes()
    for args in (["results", str(run)], ["status", str(run)], ["report", str(run), "--out", str(tmp_path / "r")],
                 ["export", str(run), "--out", str(tmp_path / "e")], ["search", "--resume", str(run)]):
        proc = hwnas(*args, timeout=60)
        line = one_line_error(proc)
        assert "run.sqlite" in line, (args, line)
    assert db.read_bytes() == before, "a read command wrote into the store"


def test_probe_07_read_commands_work_on_read_only_media(finished_run, tmp_path):
    with small_filesystem(tmp_path / "ro", "16m") as ro:
        shutil.copytree(finished_run, ro / "run")
        r = subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        for args in (["results", str(ro / "run"), "--json"], ["status", str(ro / "run")],
                     ["report", str(ro / "run"), "--out", str(tmp_path / "report")],
                     ["export", str(ro / "run"), "--out", str(tmp_path / "export")]):
            proc = hwnas(*args, timeout=120)
            assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert len(json.loads(hwnas("results", str(ro / "run"), "--json").stdout)) == 8
        for args in (["report", str(ro / "run")], ["export", str(ro / "run")]):  # default --out on the medium
            line = one_line_error(hwnas(*args, timeout=120))
            assert "Read-only file system" in line, line


# ---------------------------------------------------------------------------------- item 10
def test_probe_10_start_up_checks_create_nothing(table, agent, tmp_path):
    out = tmp_path / "run"
    cases = [
        ["--accuracy-table", f"{tmp_path / 'nope.csv'}:acc"],
        ["--accuracy-table", f"{table}:no_such_column"],
        ["--accuracy-table", f"{table}:arch_str"],  # a column without numbers
        ["--accuracy-table", f"{table}:acc", "--registry-port", "0", "--registry-host", "0.0.0.0"],
    ]
    for extra in cases:
        proc = hwnas("search", "--out", str(out), "--space", "nb201", "--agent", agent.address,
                     "--no-progress", *extra, timeout=60)
        one_line_error(proc)
        assert not out.exists(), f"{extra} left {sorted(p.name for p in out.iterdir())}"
    proc = hwnas(*search_args(table, out, agent, "--budget", "3"))  # the same --out now works
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------- item 15
def test_probe_15_plain_progress_lines_when_not_a_terminal(table, agent, tmp_path):
    args = [a for a in search_args(table, tmp_path / "run", agent, "--budget", "40", "--progress-every", "0.2")
            if a != "--no-progress"]
    proc = hwnas(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr, "a redrawn bar in a log"
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hwnas search: ")]
    assert len(lines) >= 2, proc.stderr[-2000:]
    assert lines[-1].startswith("hwnas search: 40/40 candidates (100%)"), lines[-1]
