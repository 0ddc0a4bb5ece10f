"""Shared test helpers, one section per side of the project (pytest loads this first; test
modules import the plain functions)."""
from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

from _shared import NB201_TABLE

# ============================================================================ search helpers

#: mark a test that reads the shared NAS-Bench-201 table (skipped where the shared data is absent)
needs_nb201 = pytest.mark.skipif(not Path(NB201_TABLE).is_file(),
                                 reason=f"shared NB201 table {NB201_TABLE} not here")


class ScriptedAgentClient:
    """Stands in for :class:`device_agent.rpc.client.AgentClient` in the pool's client interface
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


# ============================================================================ agent helpers


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds pass; its last value as a bool.

    A wait on a state with a deadline, instead of a fixed ``time.sleep``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def job_processes() -> list:
    """The agent's job child processes below this test process: the children of the
    multiprocessing forkserver that ``device_agent.core.jobs`` starts jobs from (psutil)."""
    import psutil

    out = []
    for p in psutil.Process().children():
        try:
            if "forkserver" in " ".join(p.cmdline()):
                out.extend(p.children())
        except psutil.NoSuchProcess:  # it ended while we looked
            continue
    return out


@functools.lru_cache(maxsize=None)
def hang_onnx() -> bytes:
    """A valid model that runs (practically) forever: a Loop of 2**62 iterations."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
                 h.make_tensor_value_info("v_in", T.FLOAT, [1])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [1])],
        [nh.from_array(np.ones(1, np.float32), "one")])
    g = h.make_graph([h.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)], "hang",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])], [h.make_tensor_value_info("y", T.FLOAT, [1])],
                     [nh.from_array(np.array(2**62, np.int64), "M"), nh.from_array(np.array(True), "cond")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()



def export_tiny_cnn(path: str | Path, *, seed: int = 0, in_channels: int = 3, size: int = 32,
                    dynamic_batch: bool = True) -> str:
    """Export a tiny torch CNN (conv-bn-relu, strided conv, pool, linear) to ONNX at ``path``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(16, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(1, in_channels, size, size), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}} if dynamic_batch else None)
    return str(path)


# ============================================================================ the run's summary

def pytest_unconfigure(config):  # noqa: ARG001 - pytest's hook signature
    """A watchdog for the interpreter's exit: once a CI run's tests had all passed, the process
    did not exit (a thread or an atexit hook waiting on something gone) and CI waited for its
    limit. If exiting takes over HWNAS_EXIT_WATCHDOG_S (120) seconds, every thread's stack goes
    to stderr and the process exits with status 1: a red run that says where it hung."""
    import faulthandler

    seconds = float(os.environ.get("HWNAS_EXIT_WATCHDOG_S", "120"))
    if seconds > 0:
        faulthandler.dump_traceback_later(seconds, exit=True)


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
