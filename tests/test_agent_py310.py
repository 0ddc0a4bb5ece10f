"""The agent installs and works on Python 3.10 (JetPack 6) with only its own dependencies.

A fresh ``python3.10`` virtualenv gets ``pip install <copy of this tree>`` with no extras (so no
torch); its ``hwnas-agent serve`` then serves on loopback and ``hwnas agent measure`` (the same
venv) measures a real ONNX model through it. The venv with the dependencies is built once into a
cache folder keyed by the sha256 of pyproject.toml (``$HWNAS_PY310_CACHE``, default
``~/.cache/hwnas-test``): the first run downloads from the registry (~1 minute); later runs
reinstall only this tree (``--no-deps``), so the agent code under test is always the current one.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests._agent_util import tiny_cnn_onnx

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "device_agent", "protos", "search", "deploy")
# the venv must see its own install, not this checkout (the test runner sets PYTHONPATH to it)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
NEUTRAL_CWD = tempfile.gettempdir()  # `python -c` puts the cwd first on sys.path
ENV310 = {**CLEAN_ENV, "PYENV_VERSION": "3.10.13"}


def _python310() -> str:
    exe = shutil.which("python3.10")
    if exe is None:
        pytest.skip("python3.10 is not on PATH (pyenv 3.10.13 expected)")
    probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], env=ENV310,
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "(3, 10)":
        pytest.skip(f"python3.10 does not run: {probe.stderr.strip()[-200:]}")
    return exe


def _copy_sources(dst: Path) -> Path:
    """The installable part of this tree, without build outputs or caches (pip builds in place)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    return dst


def _pip(venv: Path, *args: str, timeout: float) -> None:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                         capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV, cwd=NEUTRAL_CWD)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.fixture(scope="module")
def venv310(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.10 venv holding this tree installed without extras."""
    exe = _python310()
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("HWNAS_PY310_CACHE", Path.home() / ".cache" / "hwnas-test"))
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"agent-py310-{key}"
    src = _copy_sources(tmp_path_factory.mktemp("src"))
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same venv
        if not (venv / ".ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([exe, "-m", "venv", str(venv)], env=ENV310, check=True, timeout=120)
            _pip(venv, "setuptools>=68", "wheel", timeout=300)
            _pip(venv, str(src), timeout=900)  # `pip install .`: the core (agent) dependencies only
            (venv / ".ready").touch()
        else:
            _pip(venv, "--no-deps", "--no-build-isolation", "--force-reinstall", str(src), timeout=300)
    return venv


def test_agent_only_install_has_no_torch(venv310: Path) -> None:
    py = str(venv310 / "bin" / "python")
    code = ("import sys, importlib.util as u; import device_agent.rpc.server, deploy.manifest; "
            "print(device_agent.__file__.startswith(sys.prefix), sys.version_info[:2], u.find_spec('torch'), u.find_spec('sklearn'))")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60, env=CLEAN_ENV, cwd=NEUTRAL_CWD)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True (3, 10) None None"
    # the search commands say what is missing instead of a traceback
    search = subprocess.run([str(venv310 / "bin" / "hwnas"), "results", "nowhere"],
                            capture_output=True, text=True, timeout=60, env=CLEAN_ENV, cwd=NEUTRAL_CWD)
    assert search.returncode == 2
    assert "hwnas[search]" in search.stderr and "Traceback" not in search.stderr


@contextlib.contextmanager
def _serving(venv: Path, tmp_path: Path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([str(venv / "bin" / "hwnas-agent"), "serve", "--port", "0",
                             "--port-file", str(port_file), "--cache-dir", str(tmp_path / "cache")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd=NEUTRAL_CWD)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent did not start: {proc.stderr.read()[-2000:] if proc.poll() is not None else 'timeout'}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_py310_agent_serves_and_measures(venv310: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_cnn_onnx())
    with _serving(venv310, tmp_path) as address:
        out = subprocess.run([str(venv310 / "bin" / "hwnas"), "agent", "measure", str(model),
                              "--agent", address, "--json", "--iterations", "20", "--duration", "0.2"],
                             capture_output=True, text=True, timeout=120, env=CLEAN_ENV, cwd=NEUTRAL_CWD)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["error"] is None
    assert result["latency_ms"]["count"] >= 20 and result["latency_ms"]["median"] > 0
    assert result["provenance"]["python"].startswith("3.10"), result["provenance"]
