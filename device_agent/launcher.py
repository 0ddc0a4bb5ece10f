"""Start a device agent as a subprocess on a free loopback port (used when no ``--agent`` is given).

``start_local_agent()`` runs ``python -m device_agent serve --host 127.0.0.1 --port 0
--port-file F ...``, reads the bound port from ``F`` and waits until health is SERVING. The
token travels in the environment (``HWNAS_AGENT_TOKEN``), not on the command line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from device_agent.settings import TOKEN_ENV
from device_agent.errors import AgentUnavailable

REPO_ROOT = Path(__file__).resolve().parent.parent


class LocalAgent:
    """A running agent subprocess: ``address``, ``token``, ``log_path``; ``stop()`` ends it."""

    def __init__(self, *, process: subprocess.Popen[bytes], address: str, token: str | None,
                 workdir: tempfile.TemporaryDirectory[str], log_path: Path) -> None:
        self.process = process
        self.address = address
        self.token = token
        self.log_path = log_path
        self._workdir = workdir

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.address.rsplit(":", 1)[1])

    def alive(self) -> bool:
        """Whether the subprocess still runs."""
        return self.process.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the agent's log (JSON lines)."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._workdir.cleanup()
        return self.process.returncode

    def __enter__(self) -> "LocalAgent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_agent(*, token: str | None = None, extra_args: Sequence[str] = (),
                      env: Mapping[str, str] | None = None, timeout: float = 60.0,
                      python: str | None = None, client_tls: Mapping[str, str] | None = None) -> LocalAgent:
    """Start an agent on 127.0.0.1 (free port) and wait until it is SERVING.

    extra_args: more ``serve`` flags (``--cache-dir``, ``--backend table --table ...``); without
    ``--cache-dir`` the agent uses a cache folder that is removed on ``stop()``. client_tls: the
    TLS options of the readiness probe's :class:`AgentClient` for an agent that serves TLS.
    Raises ``AgentUnavailable`` (with the agent's log tail) when it exits or is not ready in time.
    """
    from device_agent.rpc.client import AgentClient

    workdir = tempfile.TemporaryDirectory(prefix="hwnas-agent-")
    port_file = Path(workdir.name) / "port"
    log_path = Path(workdir.name) / "agent.log"
    args = [python or sys.executable, "-m", "device_agent", "serve", "--host", "127.0.0.1",
            "--port", "0", "--port-file", str(port_file)]
    if "--cache-dir" not in extra_args:
        args += ["--cache-dir", str(Path(workdir.name) / "cache")]
    args += list(extra_args)
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
    if token:
        full_env[TOKEN_ENV] = token
    else:
        full_env.pop(TOKEN_ENV, None)
    log_file = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL)
    finally:
        log_file.close()
    agent = LocalAgent(process=proc, address="", token=token, workdir=workdir, log_path=log_path)
    end = time.monotonic() + timeout
    try:
        while not port_file.exists():
            if proc.poll() is not None:
                raise AgentUnavailable(f"local agent exited with code {proc.returncode}:\n{agent.log_tail()}")
            if time.monotonic() > end:
                raise AgentUnavailable(f"local agent did not start in {timeout}s:\n{agent.log_tail()}")
            time.sleep(0.05)
        agent.address = f"127.0.0.1:{int(port_file.read_text().strip())}"
        with AgentClient(agent.address, token=token, timeout=5.0, **dict(client_tls or {})) as client:
            client.wait_ready(max(1.0, end - time.monotonic()))
    except BaseException:
        agent.stop(timeout=5.0)
        raise
    return agent
