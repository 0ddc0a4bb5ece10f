"""The Ray executor against a real local Ray cluster (``ray start --head`` on 127.0.0.1 in a
temporary folder): trainings as Ray tasks, a worker killed mid-training retried, a candidate
failing with Ray's reason once its retries are spent, and a whole search with files written into
the run folder. Skipped where Ray is not installed; the install hint is tested everywhere."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from search import config as cfgmod
from search.training.evaluator import EvalRequest

ROOT = Path(__file__).resolve().parents[1]
CFG = dataclasses.replace(
    cfgmod.SearchConfig(), budget=2, population_size=2,
    space_options={"max_layers": 2, "max_filters": 8, "min_epochs": 4, "max_epochs": 4},
    train=cfgmod.TrainSettings(max_epochs=4, time_budget_s=0.0, patience=4, executor="ray"),
    measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=10, min_duration_s=0.05, warmup_s=0.02),
)


def test_ray_executor_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    import search.training.ray_executor as rx
    from search.cli import main as hwnas

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: import ray fails
    monkeypatch.setattr(rx, "ray_available", lambda: False)
    rc = hwnas(["search", "--out", str(tmp_path / "r"), "--train-executor", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'hwnas[ray]'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ImportError, match="hwnas\\[ray\\]"):
        rx.RayTrainer(config=CFG, splits=None, run_dir=tmp_path, export=False)


ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hwnas[ray]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_procs(temp_dir: str) -> list[psutil.Process]:
    """This cluster's processes: those started with its temp dir and their descendants (the
    workers retitle themselves ``ray::...``, losing the temp dir from their command line)."""
    me = psutil.Process().username()
    roots = []
    for p in psutil.process_iter(["cmdline", "username"]):
        try:
            if p.info["username"] == me and any(temp_dir in a for a in p.info["cmdline"] or ()):
                roots.append(p)
        except (psutil.Error, TypeError):
            continue
    out = {p.pid: p for p in roots}
    for p in roots:
        try:
            out.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    return list(out.values())


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="hr", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    # a loopback test cluster without token auth, whether or not ~/.ray/auth_token exists (a
    # local ray.init() writes one); the driver (this process) gets the same setting
    auth = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    try:
        subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        import ray

        if ray.is_initialized():  # a test that failed before its close(): leave no driver
            ray.shutdown()        # connected to a cluster about to be killed (its atexit may hang)
        procs = _session_procs(temp_dir)  # only this cluster's processes, by pid
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kill_running_training(temp_dir: str, timeout: float = 60.0) -> int:
    """SIGKILL the worker process that runs a training task; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in _session_procs(temp_dir):
            try:
                if "hwnas-train" in " ".join(p.cmdline()):
                    time.sleep(0.5)  # well inside the task
                    os.kill(p.pid, signal.SIGKILL)
                    return p.pid
            except (psutil.Error, ProcessLookupError):
                continue
        time.sleep(0.1)
    raise AssertionError("no Ray worker ran a training task")


def _request(cid: int):
    import random

    from search.loop.setup import make_space

    space = make_space(CFG)
    g = space.sample(random.Random(cid))
    return EvalRequest(candidate_id=cid, genome=g, arch_key=space.key(g))


def test_killed_worker_is_retried_then_fails_with_the_reason(cluster, tmp_path):
    from search.training.data import load_dataset
    from search.training.ray_executor import RayTrainer

    address, temp_dir = cluster
    splits = load_dataset("digits", seed=0)
    for retries in (1, 0):
        cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, ray_address=address, ray_max_retries=retries))
        trainer = RayTrainer(config=cfg, splits=splits, run_dir=tmp_path, export=True)
        try:
            assert trainer.capacity == 2
            box: dict = {}

            def run():
                try:
                    box["ev"] = trainer.evaluate(_request(retries + 1))
                except RuntimeError as exc:
                    box["err"] = str(exc)

            t = threading.Thread(target=run)
            t.start()
            killed = _kill_running_training(temp_dir)
            t.join(90)
            if retries:
                ev = box["ev"]  # run again on another worker after the kill
                assert ev.train["executor"] == "ray" and ev.train["worker"]["pid"] != killed
                assert (tmp_path / "models" / f"{ev.model_sha256}.onnx").is_file()
                assert (tmp_path / "weights" / f"{retries + 1}.pt").is_file()
            else:
                assert "Ray training failed after up to 0 retries" in box["err"], box
        finally:
            trainer.close()


def test_a_search_on_the_cluster(cluster, tmp_path):
    from search.loop.runner import SearchRunner
    from search.reporting.results import collect

    address, _ = cluster
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, ray_address=address))
    summary = SearchRunner(config=cfg, run_dir=tmp_path, progress=False).run()
    assert summary["done"] == 2, collect(tmp_path)
    for r in collect(tmp_path):
        assert r["train"]["executor"] == "ray" and (tmp_path / r["onnx_path"]).is_file()
    assert summary["test"]["evaluated"] >= 1
