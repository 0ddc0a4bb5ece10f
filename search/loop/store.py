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

Every write is one transaction, so a ``kill -9`` at any moment leaves a consistent file and
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
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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


class StoreError(RuntimeError):
    """The run directory or its database is missing, foreign or inconsistent."""


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
        self._lock = threading.RLock()
        self._batch_depth = 0  # > 0 while a batch() holds the lock and its transaction is open
        if read_only:
            self._db = self._connect_read_only()
            self._check_version(self.get_meta("schema_version"))
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(exist_ok=True)
        try:
            if not create and self.path.stat().st_size == 0:
                raise sqlite3.DatabaseError("the file is empty")
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            if not create and not self._db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                raise sqlite3.DatabaseError("it holds no hwnas tables")
            with self._lock:
                self._db.executescript(_SCHEMA)
                for table, column, decl in _ADDED_COLUMNS:
                    have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.Error as exc:
            raise self._damaged(exc) from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
            self.set_meta("created", time.time())
        else:
            self._check_version(version)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection; on read-only media without a WAL beside the file the
        database is opened ``immutable`` (SQLite could not create its ``-shm`` file there)."""
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        try:  # a WAL with content must be read: never immutable then
            wal_content = self.path.with_name(DB_NAME + "-wal").stat().st_size > 0
        except OSError:
            wal_content = False
        tries = [uri] if wal_content else [uri, uri + "&immutable=1"]
        last: sqlite3.Error | None = None
        for u in tries:
            try:
                db = sqlite3.connect(u, uri=True, check_same_thread=False, isolation_level=None)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA busy_timeout=5000")
                if not db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                    db.close()
                    raise sqlite3.DatabaseError("it holds no hwnas tables" if self.path.stat().st_size
                                                else "the file is empty")
                return db
            except sqlite3.OperationalError as exc:  # cannot open (read-only media): next try
                last = exc
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None
        raise self._damaged(last)  # type: ignore[arg-type]

    def _check_version(self, version: Any) -> None:
        if version is None:
            raise self._damaged(sqlite3.DatabaseError("no schema version"))
        if int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, this hwnas reads {SCHEMA_VERSION}")

    def _damaged(self, exc: BaseException) -> StoreError:
        """The one-line error of a store that cannot be used (``exc``: SQLite's reason)."""
        msg = str(exc)
        if "full" in msg:
            return StoreError(f"{self.path}: {msg}: free space, then continue with "
                              f"hwnas search --resume {self.run_dir}")
        if "readonly" in msg or "read-only" in msg:
            return StoreError(f"{self.path}: {msg} (the run directory is on read-only media or not writable)")
        return StoreError(f"{self.path} is damaged or not an hwnas run store ({msg}); restore the run "
                          "directory from a copy, or start a new run with another --out")

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
        with self._tx() as db:
            row = db.execute("SELECT train FROM candidates WHERE id=?", (cid,)).fetchone()
            train = json.loads(row["train"]) if row is not None and row["train"] else {}
            train.update(fields)
            # `updated` stays: it is when the search finished the candidate (status' throughput)
            db.execute("UPDATE candidates SET train=? WHERE id=?", (_dumps(train), cid))

    class _Tx:
        def __init__(self, store: "Store") -> None:
            self.store = store
            self.nested = False

        def __enter__(self) -> sqlite3.Connection:
            st = self.store
            st._lock.acquire()
            # inside this thread's batch (a batch holds the lock, so no other thread gets here):
            # a savepoint, so that a failed write undoes only itself
            self.nested = st._batch_depth > 0
            try:
                st._db.execute("SAVEPOINT tx" if self.nested else "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                st._lock.release()
                raise st._damaged(exc) from None
            except BaseException:
                st._lock.release()
                raise
            return st._db

        def __exit__(self, exc_type, exc, tb) -> None:
            st = self.store
            db = st._db
            try:
                if self.nested:
                    if exc_type:
                        db.execute("ROLLBACK TO tx")
                    db.execute("RELEASE tx")
                else:
                    db.execute("ROLLBACK" if exc_type else "COMMIT")
            except sqlite3.Error as err:
                if not self.nested:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise st._damaged(err) from None
            finally:
                st._lock.release()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise st._damaged(exc) from None  # disk full, I/O error: one line, not a traceback

    def _tx(self) -> "Store._Tx":
        return Store._Tx(self)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run the writes of this block (this thread's) in one transaction (group commit).

        Other threads' writes wait until the block ends, so keep it short. An exception rolls
        the whole batch back. Nested batches join the outer one.
        """
        with self._lock:
            if self._batch_depth:
                self._batch_depth += 1
                try:
                    yield
                finally:
                    self._batch_depth -= 1
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._damaged(exc) from None
            self._batch_depth = 1
            try:
                yield
            except BaseException:
                self._batch_depth = 0
                # SQLite may have rolled back already (a full disk does that)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._batch_depth = 0
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise self._damaged(exc) from None

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:  # a truncated or overwritten file shows up here
                raise self._damaged(exc) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, _dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    # -- candidates -------------------------------------------------------------------------
    def add_candidate(self, *, id: int, arch_key: str, genome: dict, parents: tuple[int, ...] = (),
                      origin: str = "sample") -> None:
        now = time.time()
        with self._tx() as db:
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
        with self._tx() as db:
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
        with self._tx() as db:
            for job_id, key in jobs:
                db.execute("INSERT OR IGNORE INTO jobs(id, candidate_id, device_key, updated) VALUES (?, ?, ?, ?)",
                           (job_id, cid, key, now))

    def infeasible_candidate(self, cid: int, *, train: dict, costs: dict[str, float], reason: str,
                             model_sha256: str | None, params: int | None, size_mb: float | None) -> None:
        """Cost first: the untrained network's measured ``costs`` violate a constraint; never trained."""
        with self._tx() as db:
            db.execute(
                "UPDATE candidates SET status='infeasible', error=?, train=?, objectives=?, model_sha256=?,"
                " params=?, size_mb=?, updated=? WHERE id=?",
                (reason, _dumps(train), _dumps(costs), model_sha256, params, size_mb, time.time(), cid))
            self._event(db, "candidate_infeasible", candidate_id=cid, detail={"reason": reason, "costs": costs})

    def promote_candidate(self, cid: int, *, train: dict, rung: int) -> None:
        """A fidelity rung passed the candidate on: it trains on to rung ``rung``."""
        with self._tx() as db:
            db.execute("UPDATE candidates SET status='promoted', train=?, updated=? WHERE id=?",
                       (_dumps(train), time.time(), cid))
            self._event(db, "candidate_promoted", candidate_id=cid, detail={"to_rung": rung})

    def finish_candidate(self, cid: int, *, objectives: dict[str, float]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE candidates SET status='done', objectives=?, error=NULL, updated=? WHERE id=?",
                (_dumps(objectives), time.time(), cid),
            )
            self._event(db, "candidate_done", candidate_id=cid)

    def fail_candidate(self, cid: int, error: str) -> None:
        with self._tx() as db:
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
        return [self._cand(r) for r in self._query(sql + " ORDER BY id", args)]

    def candidate(self, cid: int) -> dict[str, Any]:
        rows = self._query("SELECT * FROM candidates WHERE id = ?", (cid,))
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
        rows = self._query("SELECT status, COUNT(*) AS n FROM candidates GROUP BY status")
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
        return [dict(r) for r in self._query(sql + " ORDER BY candidate_id, device_key", tuple(args))]

    def lease_job(self, job_id: str, agent: str, deadline: float) -> bool:
        """Lease a queued job to ``agent``; False if it is not queued any more."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state='leased', agent=?, lease_deadline=?, attempts=attempts+1, updated=?"
                " WHERE id=? AND state='queued'",
                (agent, deadline, time.time(), job_id),
            )
            return cur.rowcount == 1

    def requeue_job(self, job_id: str, *, reason: str, crashed: bool = False, agent: str | None = None) -> None:
        with self._tx() as db:
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
        with self._tx() as db:
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
        with self._tx() as db:
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
        rows = self._query(sql + " ORDER BY id", tuple(args))
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
        rows = self._query(
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
        with self._tx() as db:
            db.execute("UPDATE candidates SET status='screened', prediction=?, error=?, updated=? WHERE id=?",
                       (_dumps(prediction), reason, time.time(), cid))
            self._event(db, "candidate_screened", candidate_id=cid, detail={"reason": reason})

    def set_prediction(self, cid: int, prediction: dict[str, Any]) -> None:
        """Keep the prediction of a candidate that is trained and measured anyway (an audit)."""
        with self._tx() as db:
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
        with self._tx() as db:
            self._event(db, kind, candidate_id=candidate_id, agent=agent, detail=detail)

    def events(self, kind: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM events", ()
        if kind:
            sql, args = sql + " WHERE kind = ?", (kind,)
        return [dict(r, detail=json.loads(r["detail"] or "{}")) for r in self._query(sql + " ORDER BY id", args)]
