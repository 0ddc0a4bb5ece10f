"""Shared test helpers, one section per side of the project."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from _shared import NB201_TABLE

# ============================================================================ search helpers

#: mark a test that reads the shared NAS-Bench-201 table (skipped where the shared data is absent)
needs_nb201 = pytest.mark.skipif(not Path(NB201_TABLE).is_file(),
                                 reason=f"shared NB201 table {NB201_TABLE} not here")


class ScriptedAgentClient:
    """Stands in for :class:`device_agent.client.AgentClient` in the pool's client interface
    (``describe``, ``measure``, ``close``) where a test needs an agent that misbehaves on cue:
    ``answer(job_id, call_number)`` returns the result dict or raises (an ``OSError`` is a lost
    agent to the pool). Every call is recorded in ``calls``."""

    def __init__(self, address: str, *, device_key: str, answer: Callable[[str, int], dict[str, Any]],
                 token: str | None = None) -> None:
        self.address, self.device_key, self.answer = address, device_key, answer
        self.calls: list[str] = []

    def describe(self) -> dict[str, Any]:
        """What an agent's ``Describe`` gives the pool."""
        return {"device_key": self.device_key, "backend": "scripted"}

    def measure(self, model: bytes, *, job_id: str, **_: Any) -> dict[str, Any]:
        """The scripted answer to the ``len(calls)``-th call."""
        self.calls.append(job_id)
        return self.answer(job_id, len(self.calls))

    def close(self) -> None:
        """Nothing to close."""


class DoneEvents:
    """An ``on_done`` callback for :class:`search.fleet.pool.AgentPool` that records each final
    answer and lets a test wait for ``n`` of them (an event, not a sleep)."""

    def __init__(self) -> None:
        self.done: dict[str, tuple[dict | None, str | None]] = {}
        self._cv = threading.Condition()

    def __call__(self, job: Any, result: dict | None, error: str | None) -> None:
        with self._cv:
            assert job.job_id not in self.done, f"job {job.job_id} finished twice"
            self.done[job.job_id] = (result, error)
            self._cv.notify_all()

    def wait(self, n: int, timeout: float) -> bool:
        """True once ``n`` jobs have finished (False after ``timeout`` seconds)."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self.done) >= n, timeout)


# ============================================================================ the run's summary

@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    """Say loudly when the shared data is missing: its tests skip, and a quiet skip line in a
    long summary is easy to miss (issue 15)."""
    from _shared import SHARED_DATA

    if Path(SHARED_DATA).is_dir():
        return
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if str(SHARED_DATA) in str(getattr(r, "longrepr", "")))
    bar = "!" * 78
    terminalreporter.write_line(bar, red=True, bold=True)
    terminalreporter.write_line(f"SHARED DATA MISSING: {SHARED_DATA} is not here; {n} test(s) that read it "
                                "were SKIPPED, not passed.", red=True, bold=True)
    terminalreporter.write_line("Put the shared data at ../shared/data beside the project, or set "
                                "HWNAS_SHARED_DATA=/path/to/shared/data, and run `make test` again.",
                                red=True, bold=True)
    terminalreporter.write_line(bar, red=True, bold=True)
