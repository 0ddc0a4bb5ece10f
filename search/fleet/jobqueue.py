"""The pool's measurement queue: jobs waiting per device key, and those on an agent now.

:class:`JobQueue` shares the :class:`~search.fleet.pool.AgentPool`'s lock, with one condition per
device key on it: a queued job wakes one waiting worker of its key, not every worker of the fleet
(no thundering herd with many agents). It also knows which job each agent holds and since when,
so an idle agent can measure a straggler's job a second time (``straggler_s``; first result wins,
the store keeps one measurement per job).
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from search.fleet.pool import MeasureJob


class JobQueue:
    """Per-key FIFO queues of :class:`~search.fleet.pool.MeasureJob` s under ``lock``."""

    def __init__(self, lock: threading.RLock, *, straggler_s: float | None) -> None:
        self._lock = lock
        self.straggler_s = straggler_s
        self._key_cvs: dict[str, threading.Condition] = {}
        self._queues: dict[str, collections.deque[MeasureJob]] = collections.defaultdict(collections.deque)
        #: job id -> (job, agent address, monotonic start) of every job on an agent now
        self._inflight: dict[str, tuple[MeasureJob, str, float]] = {}
        self._reissued: set[str] = set()
        #: stragglers' jobs handed to a second agent
        self.reissued = 0

    def _key_cv(self, key: str) -> threading.Condition:
        cv = self._key_cvs.get(key)
        if cv is None:
            cv = self._key_cvs.setdefault(key, threading.Condition(self._lock))
        return cv

    def put(self, job: MeasureJob) -> None:
        """Queue a job at the back of its key's queue."""
        with self._lock:
            self._queues[job.device_key].append(job)
            self._key_cv(job.device_key).notify()

    def put_front(self, job: MeasureJob) -> None:
        """A job given back (lost agent, busy agent, crash retry): the next of its key."""
        with self._lock:
            self._queues[job.device_key].appendleft(job)
            self._key_cv(job.device_key).notify()

    def depth(self) -> dict[str, int]:
        """Jobs waiting per device key (keys with none left out)."""
        with self._lock:
            return {k: len(q) for k, q in self._queues.items() if q}

    def take(self, key: str, agent: str, waiting: Callable[[], bool]) -> MeasureJob | None:
        """The next job of ``key`` for ``agent``, or a straggler's job to measure again; waits
        while ``waiting()`` holds (checked at least every 0.5 s), None once it does not."""
        cv = self._key_cv(key)
        with self._lock:
            while waiting():
                q = self._queues.get(key)
                if q:
                    return q.popleft()
                dup = self._straggler(key, agent)
                if dup is not None:
                    return dup
                cv.wait(timeout=0.5)
            if self._queues.get(key):
                cv.notify()  # pass a wake-up meant for this (leaving) worker on
        return None

    def _straggler(self, key: str, agent: str) -> MeasureJob | None:
        """With the lock held and nothing queued for ``key``: a job of the key that another agent
        has held for longer than ``straggler_s``, marked ``duplicate``."""
        if self.straggler_s is None:
            return None
        limit = time.monotonic() - self.straggler_s
        for job_id, (job, holder, t0) in self._inflight.items():
            if job.device_key == key and holder != agent and t0 < limit and job_id not in self._reissued:
                self._reissued.add(job_id)
                self.reissued += 1
                return dataclasses.replace(job, duplicate=True)
        return None

    def started(self, job: MeasureJob, agent: str) -> None:
        """``agent`` holds ``job`` from now."""
        with self._lock:
            self._inflight[job.job_id] = (job, agent, time.monotonic())

    def ended(self, job_id: str) -> None:
        """The job is no longer on an agent."""
        with self._lock:
            self._inflight.pop(job_id, None)

    def wake_all(self) -> None:
        """Wake every waiting worker (an agent left, the pool closes)."""
        with self._lock:
            for cv in list(self._key_cvs.values()):
                cv.notify_all()
