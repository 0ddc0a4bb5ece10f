"""Issue 14's probes of the device agent side: the search's local agent process, the output
check on scalar inputs, the cache after a rejected upload. Real processes, real ONNX Runtime
sessions, a real agent over gRPC on loopback.

Each test is named ``test_probe_NN_*`` after the issue's item; ``bench/fault_probes.py`` runs
them all and prints probe | held/broke.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from _agent_util import write_nb201_table
from device_agent.launcher import REPO_ROOT


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------------- item 9
def test_probe_09_local_agent_dies_with_a_killed_search(tmp_path):
    table = tmp_path / "synth.csv.gz"
    write_nb201_table(table)
    run = tmp_path / "run"
    search = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "--out", str(run), "--space", "nb201",
                               "--accuracy-table", f"{table}:acc", "--budget", "100000", "--no-progress"],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(search.pid)
        end = time.monotonic() + 90
        agents: list[psutil.Process] = []
        while not agents:
            assert search.poll() is None, search.stderr.read()[-2000:]
            assert time.monotonic() < end, "no local agent started"
            agents = [c for c in parent.children() if "device_agent" in " ".join(c.cmdline())]
            time.sleep(0.2)
        agent = agents[0]
        time.sleep(1.0)  # let it serve
        search.send_signal(signal.SIGKILL)
        search.wait(30)
        end = time.monotonic() + 30
        while _alive(agent):
            if time.monotonic() > end:
                agent.kill()  # do not leave it behind when the probe breaks
                pytest.fail(f"local agent {agent.pid} outlived the killed search")
            time.sleep(0.2)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait(30)
