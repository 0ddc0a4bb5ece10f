"""The run store: one SQLite file per run (WAL), the single source of truth of a search.

File format (``<run dir>/run.sqlite``), schema version 1:

- ``meta(key, value)``: ``schema_version``, ``config`` (the resolved search config as JSON),
  ``created``.
- ``candidates``: one row per proposed genome. ``id`` is the algorithm's trial number;
  ``status`` goes ``pending`` -> ``trained`` -> ``done`` | ``failed``
  (cost first: ``pending`` -> ``infeasible`` when the untrained network's measured costs violate
  a constraint; fidelity rungs: ``promoted`` between rungs, ``train`` holding the last rung's); ``genome`` and
  ``parents`` are JSON; ``train`` holds the training result (JSON); ``model_sha256`` names the
  ONNX file ``models/<sha256>.onnx`` beside the database; ``objectives`` (JSON) are the values
  told to the algorithm.
- ``jobs``: one row per (candidate, device key) measurement: ``state`` ``queued`` ->
  ``leased`` -> ``done`` | ``failed``, the agent holding the lease, its deadline and the attempt
  count. A job is ``done`` at most once per (candidate, device key): a UNIQUE index makes a
  second measurement impossible.
- ``measurements``: every result an agent returned (failures too), with its full provenance
  (the agent's result JSON). ``layers`` (JSON or NULL, issue 12) holds the per-layer profile of a
  job measured with ``profile_layers``: ``{"latency_ms": <the timed loop's median, taken without
  the profiler>, "batch": N, "layers": [<the agent's per-node rows, with shapes>]}``; the rows are
  kept out of ``result`` and put back into ``result["layers"]`` when read.
- ``candidates.prediction`` (JSON or NULL, issue 12): the cost model's prediction of a candidate
  that screening looked at (``status='screened'``: ruled out before training; not measured).
- ``events``: what happened when (agent joined/lost, job retried, candidate failed, ...).

Every write is one transaction (the connection, transactions and errors: :mod:`search.loop.rundb`), so a ``kill -9`` at any moment leaves a consistent file and
``hwnas search --resume`` can continue from it. :meth:`Store.batch` groups several writes of one
thread into a single transaction (group commit: fewer WAL pages and commits); they become durable
together, or, after a kill in the middle, none of them does. The journal is WAL with
``synchronous=NORMAL``: a committed transaction survives ``kill -9`` of the server (the WAL is
written before the commit returns); only a power loss or OS crash can lose the last commits.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.loop.rundb import RunDB, StoreError

SCHEMA_VERSION = 1
DB_NAME = "run.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    arch_key TEXT NOT NULL,
    genome TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '[]',
    origin TEXT NOT NULL DEFAULT 'sample',
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    train TEXT,
    model_sha256 TEXT,
    params INTEGER,
    size_mb REAL,
    objectives TEXT,
    prediction TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    candidate_id INTEGER NOT NULL REFERENCES candidates(id),
    device_key TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    agent TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    lease_deadline REAL,
    error TEXT,
    updated REAL NOT NULL,
    UNIQUE (candidate_id, device_key)
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    candidate_id INTEGER NOT NULL,
    device_key TEXT NOT NULL,
    agent TEXT,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    layers TEXT,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_ok_measurement
    ON measurements(candidate_id, device_key) WHERE ok = 1;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    candidate_id INTEGER,
    agent TEXT,
    detail TEXT
);
"""

#: columns added after schema version 1 was released: added on open to an older file (additive;
#: an older hwnas still reads a file that has them)
_ADDED_COLUMNS = (("candidates", "prediction", "TEXT"), ("measurements", "layers", "TEXT"))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RunFiles:
    """The files of a run beside its SQLite file (picklable: training workers write them)."""

    run_dir: Path

    def model_path(self, sha256: str) -> Path:
        """The exported ONNX file of that digest (content-addressed)."""
        return self.run_dir / "models" / f"{sha256}.onnx"

    def weights_path(self, cid: int) -> Path:
        """The trained weights (``state_dict``) of candidate ``cid``, kept for the test split."""
        return self.run_dir / "weights" / f"{cid}.pt"


class Store:
    """Thread-safe access to a run's SQLite file (one connection, serialised by a lock)."""

    def __init__(self, run_dir: str | Path, *, create: bool = False, read_only: bool = False) -> None:
        """``create``: make the run directory and a fresh store; ``read_only``: open the file
        read-only (read commands: nothing is written, works on read-only media)."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.read_only = read_only
        if not create and not self.path.exists():
            raise StoreError(f"no run store at {self.path} (is {self.run_dir} a run directory?)")
        if not read_only:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.models_dir.mkdir(exist_ok=True)
        #: the connection (transactions, reads, errors)
        self.db = RunDB(self.path, create=create, read_only=read_only, schema=_SCHEMA, added_columns=_ADDED_COLUMNS)
        version = self.get_meta("schema_version")
        if version is None and not read_only:
            self.set_meta("schema_version", SCHEMA_VERSION)
            self.set_meta("created", time.time())
        else:
            self._check_version(version)

    def _check_version(self, version: Any) -> None:
        if version is None:
            raise self.db.damaged(sqlite3.DatabaseError("no schema version"))
        if int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, this hwnas reads {SCHEMA_VERSION}")

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.run_dir / "models"

    def model_path(self, sha256: str) -> Path:
        return RunFiles(self.run_dir).model_path(sha256)

    @property
    def files(self) -> RunFiles:
        """The run's files (ONNX models, trained weights)."""
        return RunFiles(self.run_dir)

    def update_train(self, cid: int, **fields: Any) -> None:
        """Add ``fields`` to candidate ``cid``'s training record (test accuracy, final training)."""
        with self.db.tx() as db:
            row = db.execute("SELECT train FROM candidates WHERE id=?", (cid,)).fetchone()
            train = json.loads(row["train"]) if row is not None and row["train"] else {}
            train.update(fields)
            # `updated` stays: it is when the search finished the candidate (status' throughput)
            db.execute("UPDATE candidates SET train=? WHERE id=?", (_dumps(train), cid))

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Run the writes of this block (this thread's) in one transaction (group commit; see
        :meth:`RunDB.batch`)."""
        return self.db.batch()

    def close(self) -> None:
        self.db.close()

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.db.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, _dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self.db.query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    # -- candidates -------------------------------------------------------------------------
    def add_candidate(self, *, id: int, arch_key: str, genome: dict, parents: tuple[int, ...] = (),
                      origin: str = "sample") -> None:
        now = time.time()
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO candidates(id, arch_key, genome, parents, origin, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (id, arch_key, _dumps(genome), _dumps(list(parents)), origin, now, now),
            )
            self._event(db, "candidate_proposed", candidate_id=id, detail={"origin": origin})

    def set_trained(self, cid: int, *, train: dict, model_sha256: str | None, params: int | None,
                    size_mb: float | None, jobs: list[tuple[str, str]]) -> None:
        """Record training + export and queue one measurement job per ``(job_id, device_key)``."""
        now = time.time()
        with self.db.tx() as db:
            db.execute(
                "UPDATE candidates SET status='trained', train=?, model_sha256=?, params=?, size_mb=?,"
                " updated=? WHERE id=? AND status IN ('pending', 'promoted')",
                (_dumps(train), model_sha256, params, size_mb, now, cid),
            )
            for job_id, key in jobs:
                db.execute(
                    "INSERT OR IGNORE INTO jobs(id, candidate_id, device_key, updated) VALUES (?, ?, ?, ?)",
                    (job_id, cid, key, now),
                )

    def add_jobs(self, cid: int, jobs: list[tuple[str, str]]) -> None:
        """Queue measurement jobs ``(job_id, device_key)`` of a candidate not yet trained (cost
        first measures the untrained network); jobs that exist already are kept."""
        now = time.time()
        with self.db.tx() as db:
            for job_id, key in jobs:
                db.execute("INSERT OR IGNORE INTO jobs(id, candidate_id, device_key, updated) VALUES (?, ?, ?, ?)",
                           (job_id, cid, key, now))

    def infeasible_candidate(self, cid: int, *, train: dict, costs: dict[str, float], reason: str,
                             model_sha256: str | None, params: int | None, size_mb: float | None) -> None:
        """Cost first: the untrained network's measured ``costs`` violate a constraint; never trained."""
        with self.db.tx() as db:
            db.execute(
                "UPDATE candidates SET status='infeasible', error=?, train=?, objectives=?, model_sha256=?,"
                " params=?, size_mb=?, updated=? WHERE id=?",
                (reason, _dumps(train), _dumps(costs), model_sha256, params, size_mb, time.time(), cid))
            self._event(db, "candidate_infeasible", candidate_id=cid, detail={"reason": reason, "costs": costs})

    def promote_candidate(self, cid: int, *, train: dict, rung: int) -> None:
        """A fidelity rung passed the candidate on: it trains on to rung ``rung``."""
        with self.db.tx() as db:
            db.execute("UPDATE candidates SET status='promoted', train=?, updated=? WHERE id=?",
                       (_dumps(train), time.time(), cid))
            self._event(db, "candidate_promoted", candidate_id=cid, detail={"to_rung": rung})

    def finish_candidate(self, cid: int, *, objectives: dict[str, float]) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE candidates SET status='done', objectives=?, error=NULL, updated=? WHERE id=?",
                (_dumps(objectives), time.time(), cid),
            )
            self._event(db, "candidate_done", candidate_id=cid)

    def fail_candidate(self, cid: int, error: str) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE candidates SET status='failed', error=?, updated=? WHERE id=?",
                (error, time.time(), cid),
            )
            db.execute(
                "UPDATE jobs SET state='failed', error=COALESCE(error, 'candidate failed'), updated=?"
                " WHERE candidate_id=? AND state IN ('queued', 'leased')",
                (time.time(), cid),
            )
            self._event(db, "candidate_failed", candidate_id=cid, detail={"error": error})

    def candidates(self, status: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM candidates"
        args: tuple = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        return [self._cand(r) for r in self.db.query(sql + " ORDER BY id", args)]

    def candidate(self, cid: int) -> dict[str, Any]:
        rows = self.db.query("SELECT * FROM candidates WHERE id = ?", (cid,))
        if not rows:
            raise StoreError(f"no candidate {cid}")
        return self._cand(rows[0])

    @staticmethod
    def _cand(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        for k in ("genome", "parents", "train", "objectives", "prediction"):
            d[k] = json.loads(d[k]) if d.get(k) is not None else None
        return d

    def count(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) AS n FROM candidates GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    # -- jobs and measurements --------------------------------------------------------------
    def jobs(self, *, candidate_id: int | None = None, state: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if candidate_id is not None:
            sql += " AND candidate_id = ?"
            args.append(candidate_id)
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [dict(r) for r in self.db.query(sql + " ORDER BY candidate_id, device_key", tuple(args))]

    def lease_job(self, job_id: str, agent: str, deadline: float) -> bool:
        """Lease a queued job to ``agent``; False if it is not queued any more."""
        with self.db.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state='leased', agent=?, lease_deadline=?, attempts=attempts+1, updated=?"
                " WHERE id=? AND state='queued'",
                (agent, deadline, time.time(), job_id),
            )
            return cur.rowcount == 1

    def requeue_job(self, job_id: str, *, reason: str, crashed: bool = False, agent: str | None = None) -> None:
        with self.db.tx() as db:
            db.execute(
                "UPDATE jobs SET state='queued', agent=NULL, lease_deadline=NULL, error=?,"
                " crashes=crashes+?, updated=? WHERE id=? AND state='leased'",
                (reason, 1 if crashed else 0, time.time(), job_id),
            )
            self._event(db, "job_requeued", agent=agent, detail={"job": job_id, "reason": reason})

    def record_measurement(self, job_id: str, *, agent: str, result: dict[str, Any]) -> bool:
        """Store one agent result; mark the job done (ok) or failed. False if the job was not
        leased any more (its lease expired and someone else has it): the result is kept as a
        record but does not count."""
        ok = result.get("error") is None
        now = time.time()
        layers = None
        if result.get("layers"):  # the profile goes in its own column, beside the timed latency
            result = dict(result)
            layers = _dumps({"latency_ms": (result.get("latency_ms") or {}).get("median"),
                             "batch": (result.get("measure_config") or {}).get("batch_size", 1),
                             "layers": result.pop("layers")})
        with self.db.tx() as db:
            row = db.execute("SELECT candidate_id, device_key, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"unknown job {job_id}")
            if row["state"] != "leased":
                self._event(db, "late_result_ignored", agent=agent, detail={"job": job_id})
                return False
            db.execute(
                "INSERT INTO measurements(job_id, candidate_id, device_key, agent, ok, result, layers, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, row["candidate_id"], row["device_key"], agent, int(ok), _dumps(result), layers, now),
            )
            db.execute(
                "UPDATE jobs SET state=?, error=?, lease_deadline=NULL, updated=? WHERE id=?",
                ("done" if ok else "failed", result.get("error"), now, job_id),
            )
            return True

    def fail_job(self, job_id: str, error: str) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE jobs SET state='failed', error=?, updated=? WHERE id=? AND state IN ('queued','leased')",
                       (error, time.time(), job_id))
            self._event(db, "job_failed", detail={"job": job_id, "error": error})

    def measurements(self, candidate_id: int | None = None, *, ok_only: bool = False) -> list[dict]:
        sql, args = "SELECT * FROM measurements WHERE 1=1", []
        if candidate_id is not None:
            sql += " AND candidate_id = ?"
            args.append(candidate_id)
        if ok_only:
            sql += " AND ok = 1"
        rows = self.db.query(sql + " ORDER BY id", tuple(args))
        out = []
        for r in rows:
            d = dict(r)
            d["result"] = json.loads(d["result"])
            d["ok"] = bool(d["ok"])
            d["layers"] = json.loads(d["layers"]) if d.get("layers") else None
            if d["layers"]:
                d["result"]["layers"] = d["layers"]["layers"]
            out.append(d)
        return out

    def profiles(self, device_key: str) -> list[dict[str, Any]]:
        """The ok measurements on ``device_key`` that carry a per-layer profile, oldest first:
        ``candidate_id``, ``model_sha256``, ``latency_ms`` (timed, unprofiled), ``batch``, ``layers``."""
        rows = self.db.query(
            "SELECT m.candidate_id, m.layers, c.model_sha256 FROM measurements m JOIN candidates c"
            " ON c.id = m.candidate_id WHERE m.ok = 1 AND m.device_key = ? AND m.layers IS NOT NULL"
            " ORDER BY m.id", (device_key,))
        out = []
        for r in rows:
            prof = json.loads(r["layers"])
            out.append({"candidate_id": r["candidate_id"], "model_sha256": r["model_sha256"],
                        "latency_ms": prof.get("latency_ms"), "batch": prof.get("batch", 1),
                        "layers": prof["layers"]})
        return out

    def screen_candidate(self, cid: int, *, prediction: dict[str, Any], reason: str) -> None:
        """Record a candidate the cost model ruled out before training (``status='screened'``)."""
        with self.db.tx() as db:
            db.execute("UPDATE candidates SET status='screened', prediction=?, error=?, updated=? WHERE id=?",
                       (_dumps(prediction), reason, time.time(), cid))
            self._event(db, "candidate_screened", candidate_id=cid, detail={"reason": reason})

    def set_prediction(self, cid: int, prediction: dict[str, Any]) -> None:
        """Keep the prediction of a candidate that is trained and measured anyway (an audit)."""
        with self.db.tx() as db:
            db.execute("UPDATE candidates SET prediction=? WHERE id=?", (_dumps(prediction), cid))

    # -- events -----------------------------------------------------------------------------
    def _event(self, db: sqlite3.Connection, kind: str, *, candidate_id: int | None = None,
               agent: str | None = None, detail: dict | None = None) -> None:
        db.execute(
            "INSERT INTO events(time, kind, candidate_id, agent, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), kind, candidate_id, agent, _dumps(detail or {})),
        )

    def event(self, kind: str, *, candidate_id: int | None = None, agent: str | None = None,
              detail: dict | None = None) -> None:
        with self.db.tx() as db:
            self._event(db, kind, candidate_id=candidate_id, agent=agent, detail=detail)

    def events(self, kind: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM events", ()
        if kind:
            sql, args = sql + " WHERE kind = ?", (kind,)
        return [dict(r, detail=json.loads(r["detail"] or "{}")) for r in self.db.query(sql + " ORDER BY id", args)]
