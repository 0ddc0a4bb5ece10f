"""One process per run directory: an OS lock on ``<run dir>/run.lock`` held for the lifetime
of the process that searches in it.

``fcntl.flock`` locks belong to the open file, so the kernel frees the lock when the process
ends however it ends (``kill -9`` included): a stale lock file never blocks a later ``--resume``.
The file holds the holder's PID so that a refused second process can name it. Read-only
commands (results, status, report, export) never take it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "run.lock"


class RunLocked(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """An exclusive, non-blocking lock on a run directory (``acquire()``, ``release()``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLocked` naming the holder's PID (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another hwnas process (PID {holder}); "
                            "wait for it to end or stop it, then resume") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the file frees it); idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
