"""The run store on a real SQLite file: lifecycle, leases, one measurement per key, reopen."""
from __future__ import annotations

import sqlite3

import pytest

from search.loop.store import Store, StoreError


def _cand(st: Store, cid: int) -> None:
    st.add_candidate(id=cid, arch_key=f"k{cid}", genome={"g": cid}, parents=(0,), origin="mutate")


def test_candidate_lifecycle_and_reopen(tmp_path):
    st = Store(tmp_path, create=True)
    _cand(st, 0)
    st.set_trained(0, train={"accuracy": 0.9}, model_sha256="ab", params=10, size_mb=0.1,
                   jobs=[("c0-cpu", "cpu")])
    assert st.lease_job("c0-cpu", "a1", deadline=1e12)
    assert not st.lease_job("c0-cpu", "a2", deadline=1e12), "a leased job cannot be leased twice"
    assert st.record_measurement("c0-cpu", agent="a1", result={"error": None, "latency_ms": {"median": 1.0}})
    st.finish_candidate(0, objectives={"accuracy": 0.9})
    st.close()

    st2 = Store(tmp_path)
    c = st2.candidate(0)
    assert c["status"] == "done" and c["objectives"] == {"accuracy": 0.9} and c["parents"] == [0]
    assert [m["ok"] for m in st2.measurements(0)] == [True]
    assert st2.jobs(candidate_id=0)[0]["state"] == "done"
    kinds = [e["kind"] for e in st2.events()]
    assert "candidate_proposed" in kinds and "candidate_done" in kinds


def test_requeue_counts_attempts_and_late_result_is_ignored(tmp_path):
    st = Store(tmp_path, create=True)
    _cand(st, 1)
    st.set_trained(1, train={}, model_sha256=None, params=None, size_mb=None, jobs=[("j", "gpu")])
    assert st.lease_job("j", "a1", 1e12)
    st.requeue_job("j", reason="agent lost", crashed=True)
    job = st.jobs(candidate_id=1)[0]
    assert (job["state"], job["attempts"], job["crashes"]) == ("queued", 1, 1)
    # a result that arrives after the lease was given back does not count
    assert not st.record_measurement("j", agent="a1", result={"error": None})
    assert st.measurements(1) == []
    assert st.lease_job("j", "a2", 1e12)
    assert st.record_measurement("j", agent="a2", result={"error": None})
    assert st.jobs(candidate_id=1)[0]["attempts"] == 2


def test_second_ok_measurement_for_same_key_is_impossible(tmp_path):
    st = Store(tmp_path, create=True)
    _cand(st, 2)
    st.set_trained(2, train={}, model_sha256=None, params=None, size_mb=None, jobs=[("j2", "k")])
    st.lease_job("j2", "a", 1e12)
    st.record_measurement("j2", agent="a", result={"error": None})
    with pytest.raises(sqlite3.IntegrityError):
        with st.db.tx() as db:
            db.execute("INSERT INTO measurements(job_id, candidate_id, device_key, agent, ok, result, created)"
                       " VALUES ('j2', 2, 'k', 'b', 1, '{}', 0)")


def test_fail_candidate_fails_its_open_jobs(tmp_path):
    st = Store(tmp_path, create=True)
    _cand(st, 3)
    st.set_trained(3, train={}, model_sha256=None, params=None, size_mb=None, jobs=[("j3", "k")])
    st.fail_candidate(3, "energy unavailable")
    assert st.candidate(3)["error"] == "energy unavailable"
    assert st.jobs(candidate_id=3)[0]["state"] == "failed"
    assert st.count() == {"failed": 1}


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no run store"):
        Store(tmp_path / "nope")


def _other_connection_count(tmp_path, sql: str) -> int:
    con = sqlite3.connect(f"file:{tmp_path / 'run.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_batch_commits_together_and_rolls_back_together(tmp_path):
    st = Store(tmp_path, create=True)
    with st.batch():
        _cand(st, 0)
        _cand(st, 1)
        with st.batch():  # nested: joins the outer transaction
            _cand(st, 2)
        # not committed yet: another connection does not see the rows
        assert _other_connection_count(tmp_path, "SELECT COUNT(*) FROM candidates") == 0
    assert _other_connection_count(tmp_path, "SELECT COUNT(*) FROM candidates") == 3

    with pytest.raises(RuntimeError):
        with st.batch():
            _cand(st, 3)
            raise RuntimeError("boom")
    assert [c["id"] for c in st.candidates()] == [0, 1, 2], "a failed batch leaves nothing behind"

    # a write that fails inside a batch undoes only itself (savepoint); the batch goes on
    with st.batch():
        _cand(st, 4)
        with pytest.raises(sqlite3.IntegrityError):
            _cand(st, 0)  # duplicate id
        _cand(st, 5)
    assert [c["id"] for c in st.candidates()] == [0, 1, 2, 4, 5]
    assert len(st.events("candidate_proposed")) == 5


def test_batch_blocks_other_threads_writes_until_it_ends(tmp_path):
    import threading

    st = Store(tmp_path, create=True)
    order: list[str] = []
    with st.batch():
        _cand(st, 0)
        t = threading.Thread(target=lambda: (st.event("other_thread"), order.append("other")))
        t.start()
        t.join(0.3)
        assert t.is_alive(), "another thread's write must wait for the batch"
        order.append("batch")
    t.join(5)
    assert order == ["batch", "other"]
    assert len(st.events("other_thread")) == 1


def test_kill_9_keeps_committed_writes_and_drops_an_open_batch(tmp_path):
    """A real SIGKILL: what was committed (alone or as a batch) survives; an open batch is gone
    and the file is consistent."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from search.loop.store import Store
st = Store({str(tmp_path)!r}, create=True)
st.add_candidate(id=0, arch_key="k0", genome={{}})
with st.batch():
    st.add_candidate(id=1, arch_key="k1", genome={{}})
    st.add_candidate(id=2, arch_key="k2", genome={{}})
with st.batch():
    st.add_candidate(id=3, arch_key="k3", genome={{}})
    print("inside", flush=True)
    signal.pause()  # holds the transaction open until the SIGKILL
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    st = Store(tmp_path)
    assert [c["id"] for c in st.candidates()] == [0, 1, 2]
    assert st.db.query("PRAGMA integrity_check")[0][0] == "ok"
