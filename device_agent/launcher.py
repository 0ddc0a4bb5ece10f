"""Start a device agent as a subprocess on a free loopback port (used when no ``--agent`` is given).

``start_local_agent()`` runs ``python -m device_agent serve --host 127.0.0.1 --port 0
--port-file F --parent-fd R ...``, reads the bound port from ``F`` and waits until health is
SERVING. The token travels in the environment (``HWNAS_AGENT_TOKEN``), not on the command line.

The agent dies with its parent, however the parent ends (``kill -9`` included): ``R`` is the
read end of a pipe whose only write end the parent holds; the kernel closes it when the parent
exits, and the agent (:func:`watch_parent`) sees end-of-file and shuts down. A pipe, not
``PR_SET_PDEATHSIG``: that signal follows the thread that started the child, not the process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from device_agent.settings import TOKEN_ENV
from device_agent.errors import AgentUnavailable

REPO_ROOT = Path(__file__).resolve().parent.parent


class LocalAgent:
    """A running agent subprocess: ``address``, ``token``, ``log_path``; ``stop()`` ends it."""

    def __init__(self, *, process: subprocess.Popen[bytes], address: str, token: str | None,
                 workdir: tempfile.TemporaryDirectory[str], log_path: Path, lifeline: int | None = None) -> None:
        self.process = process
        self.address = address
        self.token = token
        self.log_path = log_path
        self._workdir = workdir
        #: the write end of the pipe the agent watches (closing it ends the agent)
        self._lifeline = lifeline

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
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
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
    read_end, write_end = os.pipe()  # both not inheritable: only pass_fds hands the read end on
    args += ["--parent-fd", str(read_end)]
    log_file = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL, pass_fds=(read_end,))
    except BaseException:
        os.close(write_end)
        raise
    finally:
        log_file.close()
        os.close(read_end)
    agent = LocalAgent(process=proc, address="", token=token, workdir=workdir, log_path=log_path,
                       lifeline=write_end)
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


def watch_parent(fd: int, *, grace_s: float = 10.0) -> threading.Thread:
    """In the agent: a daemon thread that waits for end-of-file on pipe ``fd`` (the parent's
    end closed: it exited or was killed), then SIGTERMs this process (a graceful drain) and,
    if it is still there after ``grace_s``, ends it."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass  # the parent never writes; any bytes are ignored
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t
