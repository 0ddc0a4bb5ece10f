"""The SQLite connection of a run store (:mod:`search.loop.store`): opening it, transactions,
and the one-line errors of a file that cannot be used.

:class:`RunDB` opens a fresh or existing file (WAL, ``synchronous=NORMAL``, the schema created
and older files given the columns added since), or a read-only one (also on read-only media),
and serialises every use of its one connection with a lock: :meth:`RunDB.tx` is one write
transaction (a savepoint inside a batch), :meth:`RunDB.batch` groups one thread's writes into a
single transaction (group commit), :meth:`RunDB.query` reads. Every SQLite error becomes a
:class:`StoreError` that says what to do (free space and resume; read-only media; restore a
damaged file). What the tables hold is the store's business.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Iterator, Sequence


class StoreError(RuntimeError):
    """The run directory or its database is missing, foreign or inconsistent."""


class RunDB:
    """One connection to ``path`` (thread-safe: serialised by a lock)."""

    def __init__(self, path: Path, *, create: bool, read_only: bool, schema: str,
                 added_columns: Sequence[tuple[str, str, str]] = ()) -> None:
        """``create``: the file may be new (``schema`` is run either way, it is idempotent);
        ``read_only``: open the file read-only; ``added_columns``: (table, column, declaration)
        added to an older file that lacks them."""
        self.path, self.run_dir = path, path.parent
        self._lock = threading.RLock()
        self._batch_depth = 0  # > 0 while a batch() holds the lock and its transaction is open
        if read_only:
            self._db = self._connect_read_only()
            return
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
                self._db.executescript(schema)
                for table, column, decl in added_columns:
                    have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.Error as exc:
            raise self.damaged(exc) from None

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection; on read-only media without a WAL beside the file the
        database is opened ``immutable`` (SQLite could not create its ``-shm`` file there)."""
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        try:  # a WAL with content must be read: never immutable then
            wal_content = self.path.with_name(self.path.name + "-wal").stat().st_size > 0
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
                raise self.damaged(exc) from None
        raise self.damaged(last)  # type: ignore[arg-type]

    def damaged(self, exc: BaseException) -> StoreError:
        """The one-line error of a store that cannot be used (``exc``: SQLite's reason)."""
        msg = str(exc)
        if "full" in msg:
            return StoreError(f"{self.path}: {msg}: free space, then continue with "
                              f"hwnas search --resume {self.run_dir}")
        if "readonly" in msg or "read-only" in msg:
            return StoreError(f"{self.path}: {msg} (the run directory is on read-only media or not writable)")
        return StoreError(f"{self.path} is damaged or not an hwnas run store ({msg}); restore the run "
                          "directory from a copy, or start a new run with another --out")

    class _Tx:
        def __init__(self, rundb: "RunDB") -> None:
            self.rundb = rundb
            self.nested = False

        def __enter__(self) -> sqlite3.Connection:
            st = self.rundb
            st._lock.acquire()
            # inside this thread's batch (a batch holds the lock, so no other thread gets here):
            # a savepoint, so that a failed write undoes only itself
            self.nested = st._batch_depth > 0
            try:
                st._db.execute("SAVEPOINT tx" if self.nested else "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                st._lock.release()
                raise st.damaged(exc) from None
            except BaseException:
                st._lock.release()
                raise
            return st._db

        def __exit__(self, exc_type, exc, tb) -> None:
            st = self.rundb
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
                raise st.damaged(err) from None
            finally:
                st._lock.release()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise st.damaged(exc) from None  # disk full, I/O error: one line, not a traceback

    def tx(self) -> "RunDB._Tx":
        """One write transaction (``with db.tx() as conn``): a savepoint inside this thread's batch."""
        return RunDB._Tx(self)

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
                raise self.damaged(exc) from None
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
                raise self.damaged(exc) from None

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """The rows of a read."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:  # a truncated or overwritten file shows up here
                raise self.damaged(exc) from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
