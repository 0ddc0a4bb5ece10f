"""Every command in README.md's ```sh blocks runs as written, with small budgets.

The README is parsed here, so a command added to it without being run by this test fails
:func:`test_every_readme_command_is_covered`. Each command runs through ``bash`` in the project
root with these substitutions only: ``hwnas`` is this interpreter's ``python -m search.cli``,
``python``/``.venv/bin/python`` this interpreter, ``runs/...`` a temporary folder, ``--budget N``
at most :data:`SMALL_BUDGET`, the NB201 agent's port 50061 a free port, and the benches get
flags that shrink them further. Commands that cannot run on this machine (other hosts, a
network install, ``make`` itself) are parsed by the real argument parser (or ``make -n``) and
listed in :data:`NOT_HERE` with the reason, loudly. The NB201 commands read the shared table
(``$HWNAS_SHARED_DATA`` or ``../shared/data``) and skip with the reason when it is absent.
"""
from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _shared import NB201_TABLE
from device_agent.launcher import REPO_ROOT

README = REPO_ROOT / "README.md"
SMALL_BUDGET = 2
#: command prefix -> why it does not run here (it is parsed instead)
NOT_HERE = {
    "make demo": "runs the 5-minute demo; its three commands run below with a small budget (make -n checked)",
    "make test": "would run this test suite inside itself (make -n checked)",
    "ray start": "starts a Ray cluster node; tests/test_ray_executor.py starts a real local one on 127.0.0.1",
    "pip install": "installs from the network (the package index); not reachable from the tests",
    "python3 -m venv": "creates a virtual environment (part of the CPU-only install recipe)",
    ".venv/bin/pip install": "installs from the network (PyTorch's index / the package index)",
    "hwnas agent serve --host 0.0.0.0": "a device's agent with a token file in /etc (flags parsed)",
    "hwnas search --config my-search.toml": "needs the devices jetson-1 and gpu-3 (flags parsed)",
}


def readme_commands() -> list[list[str]]:
    """The ```sh blocks of the README, each a list of commands (continuation lines joined)."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        cmds = []
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(" ".join(line.split()))
        out.append(cmds)
    return out


def _not_here(cmd: str) -> str | None:
    return next((why for prefix, why in NOT_HERE.items() if cmd.startswith(prefix)), None)


def test_every_readme_command_is_covered():
    cmds = [c for block in readme_commands() for c in block]
    assert len(cmds) >= 12
    for c in cmds:
        assert _not_here(c) or c.startswith(("hwnas ", "python -m bench.")), f"README command not run by tests: {c}"


def test_commands_that_cannot_run_here_parse(capsys):
    from search.cli import build_parser

    parser = build_parser()
    seen = set()
    for c in (c for block in readme_commands() for c in block):
        why = _not_here(c)
        if why is None:
            continue
        seen.add(next(p for p in NOT_HERE if c.startswith(p)))
        print(f"README command NOT RUN here: {c!r}: {why}")
        argv = shlex.split(c.rstrip("& "))
        if argv[0] == "hwnas":
            parser.parse_args(argv[1:])  # exits (SystemExit) on a bad flag
        elif argv[0] == "make":
            proc = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO_ROOT, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
    assert seen == set(NOT_HERE), set(NOT_HERE) - seen  # no stale entry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(cmd: str, tmp: Path, port: int) -> str:
    py = shlex.quote(sys.executable)
    cmd = re.sub(r"^hwnas\b", f"{py} -m search.cli", cmd)
    cmd = re.sub(r"\| head\b", "| head", cmd)
    cmd = re.sub(r"(--budget )(\d+)", lambda m: m.group(1) + str(min(int(m.group(2)), SMALL_BUDGET)), cmd)
    cmd = re.sub(r"\bruns/", f"{tmp}/runs/", cmd)
    cmd = cmd.replace("50061", str(port))
    if cmd.startswith("python -m bench.nb201_search"):
        cmd = f"{py} -m bench.nb201_search --quick --seeds 1 --algorithms random nsga2 --budgets 100"
    elif cmd.startswith("python -m bench.fleet"):
        cmd = f"{py} -m bench.fleet --quick --agents 1 --budget 20 --no-warmup"
    return cmd


def _run_block(cmds: list[str], tmp_path: Path) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    background: list[subprocess.Popen] = []
    done = []
    try:
        for c in cmds:
            line = _prepare(c, tmp_path, port)
            if line.endswith("&"):
                background.append(subprocess.Popen(["bash", "-c", line.rstrip("& ")], cwd=REPO_ROOT,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
                _wait_port(port, background[-1])
                continue
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=300)
            ok = proc.returncode == 0 or ("| head" in line and proc.returncode == 141)
            assert ok, f"{c}\n-> {line}\nrc {proc.returncode}\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            done.append(proc)
    finally:
        for p in background:
            p.terminate()
            p.wait(20)
    return done


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


def _block(first: str) -> list[str]:
    return next(b for b in readme_commands() if b and b[0].startswith(first))


def test_config_example_block_runs(tmp_path):
    procs = _run_block(_block("hwnas search --config examples/digits.toml"), tmp_path)
    search, results, report, export = procs
    assert '"done": 2' in search.stdout
    assert results.stdout.startswith("[") and len(results.stdout.splitlines()) == 5
    page = (tmp_path / "runs" / "digits" / "report" / "index.html").read_text()
    assert "Deploy this on" in page
    assert "exported to" in export.stdout


def test_makefile_demo_commands_run(tmp_path):
    """``make demo``'s own three commands (read from the Makefile) with a small budget."""
    lines = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), flags=re.M).group(1)
    cmds = [ln.strip().lstrip("@") for ln in lines.splitlines()]
    hw = [c.replace("$(BIN)/hwnas", "hwnas").replace("$(OUT)", "runs/demo") for c in cmds if "$(BIN)/hwnas" in c]
    assert [c.split()[1] for c in hw] == ["search", "report", "export"]
    hw[0] += " --budget 1 --no-progress"  # the README block below runs the same search with 2
    _run_block(hw, tmp_path)
    assert "Deploy this on" in (tmp_path / "runs" / "demo" / "report" / "index.html").read_text()


@pytest.mark.skipif(not Path(NB201_TABLE).is_file(),
                    reason=f"SHARED DATA MISSING: {NB201_TABLE} (set HWNAS_SHARED_DATA); README's NB201 block not run")
def test_nb201_block_runs(tmp_path):
    _run_block(_block("hwnas agent serve --port 50061"), tmp_path)
    assert (tmp_path / "runs" / "nb201-raspi4" / "run.sqlite").is_file()


@pytest.mark.skipif(not Path(NB201_TABLE).is_file(),
                    reason=f"SHARED DATA MISSING: {NB201_TABLE} (set HWNAS_SHARED_DATA); README's bench block not run")
def test_bench_block_runs(tmp_path):
    nb201, fleet = _run_block(_block("python -m bench.nb201_search"), tmp_path)
    assert re.search(r"\[1/\d+\] .* s elapsed, about \d+ s left", nb201.stdout), nb201.stdout
    assert "expect about" in fleet.stdout
