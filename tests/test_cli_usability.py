"""The ``hwnas`` command for a person: a version, help on every flag, the objective names in the
help, errors in the user's words (no Python signature, no traceback), a quiet broken pipe and an
interrupt message that names the real run directory."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from device_agent.launcher import REPO_ROOT
from search.cli import build_parser
from search.metrics import CATALOGUE


def hwnas(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _parsers(p: argparse.ArgumentParser, path: str = "hwnas"):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_version():
    proc = hwnas("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("hwnas ")


def test_every_flag_has_help():
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, p in _parsers(build_parser())
               for a in p._actions if not isinstance(a, argparse._SubParsersAction)
               and a.help in (None, "") and a.dest not in ("help",)]
    assert not missing, missing


def test_objective_help_lists_every_metric():
    search = dict(_parsers(build_parser()))["hwnas search"]
    text = search.format_help().replace("\n", " ")
    text = " ".join(text.split())
    for name in CATALOGUE:
        assert name in text, name


@pytest.mark.parametrize("args, words", [
    (["search", "--objective", "acuracy", "--budget", "1"], "unknown metric 'acuracy'"),
    (["search", "--config", "no/such.toml"], "config file no/such.toml does not exist"),
    (["search", "--budget", "0"], "budget must be >= 1, got 0"),
])
def test_errors_in_the_users_words(args, words, tmp_path):
    proc = hwnas(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr and "__init__()" not in proc.stderr


def test_bad_value_type_in_a_config_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[search]\nbudget = "ten"\n')
    proc = hwnas("search", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "budget" in proc.stderr and "Traceback" not in proc.stderr and "instances of" not in proc.stderr


def test_broken_pipe_ends_quietly(tmp_path):
    from search.loop.store import Store

    st = Store(tmp_path / "run", create=True)
    for i in range(300):  # enough JSON to outlast the pipe's buffer
        st.add_candidate(id=i, arch_key=f"net-{i}-" + "x" * 200, genome={"layers": [i] * 20})
    st.close()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "results", str(tmp_path / "run"), "--json"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(100)
    proc.stdout.close()  # what `| head` does
    err = proc.stderr.read().decode()
    proc.wait(30)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_interrupt_names_the_real_directory(tmp_path):
    out = tmp_path / "my-run"
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "--out", str(out), "--budget", "50",
                             "--no-progress"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (out / "run.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert f"hwnas search --resume {out}" in err and "--resume DIR" not in err
    assert os.path.exists(out / "run.sqlite")
