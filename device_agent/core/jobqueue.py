"""The agent's job slot: one job runs at a time, at most ``max_waiting`` wait (FIFO).

A caller that finds the queue full gets ``AgentBusy`` at once (RESOURCE_EXHAUSTED on the wire);
a waiting caller whose ``cancel`` event is set leaves the queue with ``Cancelled``; after
``close()`` (draining) new and waiting callers get ``AgentUnavailable``.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator

from device_agent.errors import AgentBusy, AgentUnavailable, Cancelled


class JobQueue:
    """One running job, at most ``max_waiting`` waiting (FIFO). Thread-safe."""

    def __init__(self, *, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self._running: object | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Jobs running or waiting now."""
        with self._cond:
            return len(self._waiting) + (self._running is not None)

    def close(self) -> None:
        """Refuse new jobs and release the waiting ones (they get ``AgentUnavailable``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs; True if idle."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._running is not None or self._waiting:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    @contextlib.contextmanager
    def slot(self, *, cancel: threading.Event) -> Iterator[float]:
        """Hold the single job slot; yields the seconds spent waiting for it."""
        ticket, t0 = object(), time.monotonic()
        with self._cond:
            if self._closed:
                raise AgentUnavailable("agent is shutting down")
            if self._running is None and not self._waiting:
                self._running = ticket
            else:
                if len(self._waiting) >= self.max_waiting:
                    raise AgentBusy(f"job queue full ({self.max_waiting} waiting behind the running job)")
                self._waiting.append(ticket)
                try:
                    while not (self._running is None and self._waiting[0] is ticket):
                        if self._closed:
                            raise AgentUnavailable("agent is shutting down")
                        if cancel.is_set():
                            raise Cancelled("cancelled while waiting in the queue")
                        self._cond.wait(0.05)
                finally:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                self._running = ticket
        try:
            yield time.monotonic() - t0
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()
