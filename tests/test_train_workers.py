"""Training in worker processes (the local executor) on real digits: processes with their own
pids and thread counts, per-epoch progress, a killed worker failing only its candidate, the
training device rules, determinism of a whole search, and the test split read only after it."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading

import pytest
import torch

from search import config as cfgmod
from search.loop.runner import SearchRunner
from search.loop.setup import make_space
from search.loop.store import Store
from search.reporting.results import collect
from search.training.devices import DeviceError, cpu_threads, resolve_device, worker_devices
from search.training.evaluator import EvalRequest
from search.training.workers import ProcessPoolTrainer

FAST = dataclasses.replace(
    cfgmod.SearchConfig(), budget=4, population_size=4, train_workers=2,
    space_options={"max_layers": 3, "max_filters": 16, "min_epochs": 1, "max_epochs": 2},
    train=cfgmod.TrainSettings(max_epochs=2, time_budget_s=0.0, patience=1),
    measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=10, min_duration_s=0.05, warmup_s=0.02),
)


def _request(cfg: cfgmod.SearchConfig, cid: int, seed: int = 0) -> EvalRequest:
    import random

    space = make_space(cfg)
    g = space.sample(random.Random(seed))
    return EvalRequest(candidate_id=cid, genome=g, arch_key=space.key(g))


def test_workers_are_processes_with_threads_set_and_report_epochs(tmp_path):
    records: list[tuple[int, dict]] = []
    trainer = ProcessPoolTrainer(config=FAST, run_dir=tmp_path, export=True, devices=["cpu", "cpu"], threads=1,
                                 on_progress=lambda cid, r: records.append((cid, r)))
    try:
        assert trainer.capacity == 2 and not trainer.inline
        results: dict[int, object] = {}
        threads = [threading.Thread(target=lambda c=c: results.__setitem__(c, trainer.evaluate(_request(FAST, c, c))))
                   for c in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        pids = {results[c].train["worker"]["pid"] for c in (1, 2)}
        assert os.getpid() not in pids
        for c in (1, 2):
            ev = results[c]
            assert ev.train["worker"]["torch_threads"] == 1 and ev.train["device"] == "cpu"
            assert 0.0 <= ev.train["accuracy"] <= 1.0 and ev.train["images_per_s"] > 0
            assert (tmp_path / "models" / f"{ev.model_sha256}.onnx").is_file()
            assert (tmp_path / "weights" / f"{c}.pt").is_file()
            assert "test_accuracy" not in ev.train or ev.train["test_accuracy"] is None
            epochs = [r["epoch"] for cid, r in records if cid == c]
            assert epochs == list(range(1, ev.train["epochs"] + 1))
    finally:
        trainer.close()


def test_a_killed_worker_fails_its_candidate_and_the_pool_goes_on(tmp_path):
    slow = dataclasses.replace(FAST, space_options={**FAST.space_options, "max_epochs": 6, "min_epochs": 6},
                               train=dataclasses.replace(FAST.train, max_epochs=6, patience=6))
    first_epoch = threading.Event()
    pids: list[int] = []

    def progress(cid: int, record: dict) -> None:
        pids.append(int(record["pid"]))
        first_epoch.set()

    trainer = ProcessPoolTrainer(config=slow, run_dir=tmp_path, export=False, devices=["cpu"], threads=1,
                                 on_progress=progress)
    try:
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, trainer.evaluate,
                                                                        _request(slow, 1)).value))
        t.start()
        assert first_epoch.wait(120)
        os.kill(pids[0], signal.SIGKILL)
        t.join(60)
        assert errors and "training worker process died" in str(errors[0])
        ev = trainer.evaluate(_request(slow, 2, seed=5))  # a fresh pool trains the next one
        assert ev.train["worker"]["pid"] != pids[0] and ev.train["epochs"] >= 1
    finally:
        trainer.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the absent-GPU error cannot occur")
def test_an_absent_gpu_is_an_error_not_a_cpu_fallback(tmp_path, capsys):
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for dev in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device(dev)
    with pytest.raises(DeviceError, match="unknown training device"):
        resolve_device("tpu")
    from search.cli import main as hwnas

    rc = hwnas(["search", "--out", str(tmp_path / "r"), "--train-device", "cuda", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "run.sqlite").exists() or not Store(tmp_path / "r").candidates()


def test_cpu_workers_share_the_cores():
    assert worker_devices("cpu", 3) == ["cpu"] * 3 and worker_devices("cuda:1", 4) == ["cuda:1"]
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(1) == cores and cpu_threads(cores * 2) == 1 and cpu_threads(2, torch_threads=3) == 3


def _fingerprint(run_dir) -> list[tuple]:
    out = []
    for r in collect(run_dir):
        hist = [{k: v for k, v in h.items() if k not in ("time_s", "images_per_s")} for h in r["train"]["history"]]
        out.append((r["id"], r["arch_key"], r["status"], r["train"]["accuracy"], hist, r["params"]))
    return out


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    """A search whose dataset records every read of its test split (and what state the search
    was in then)."""
    import search.loop.runner as runner_mod

    reads: list[dict] = []
    holder: dict[str, SearchRunner] = {}
    real = runner_mod.accuracy_source

    class Guarded:
        def __init__(self, splits):
            self._splits = splits

        def __getattr__(self, name):
            return getattr(self._splits, name)

        def load_test(self):
            r = holder["runner"]
            reads.append({"closed": r.closed_count, "open": len(r.tracker),
                          "finished": bool(r.store.events("search_finished"))})
            return self._splits.load_test()

        @property
        def test(self):
            return self.load_test()

    runner_mod.accuracy_source = lambda cfg: Guarded(real(cfg))
    try:
        out = tmp_path_factory.mktemp("guarded")
        cfg = dataclasses.replace(FAST, train_workers=1)
        holder["runner"] = SearchRunner(config=cfg, run_dir=out, progress=False)
        summary = holder["runner"].run()
    finally:
        runner_mod.accuracy_source = real
    return out, summary, reads


def test_test_split_is_read_only_after_the_search(guarded_run):
    run_dir, summary, reads = guarded_run
    results = collect(run_dir)
    assert all(r["status"] == "done" for r in results), [r["error"] for r in results]
    assert reads and all(r["finished"] and r["open"] == 0 and r["closed"] == 4 for r in reads)
    members = [r for r in results if r["pareto"]]
    assert members and summary["test"]["evaluated"] == len(members)
    for r in results:
        assert r["val_accuracy"] == r["objectives"]["accuracy"] == r["train"]["accuracy"]
        # test accuracy for the front only, measured once, after the search
        assert (r["test_accuracy"] is not None) == r["pareto"]
    assert len(Store(run_dir).events("test_evaluated")) == 1


def test_same_seed_same_search(guarded_run, tmp_path):
    run_dir, _, _ = guarded_run
    SearchRunner(config=dataclasses.replace(FAST, train_workers=1), run_dir=tmp_path / "again", progress=False).run()
    assert _fingerprint(tmp_path / "again") == _fingerprint(run_dir)


def test_status_results_and_report_show_throughput_device_and_test_accuracy(guarded_run, tmp_path, capsys):
    import json

    from search.cli import main as hwnas

    run_dir, _, _ = guarded_run
    assert hwnas(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "images/s over 4 trained candidates on cpu" in out
    assert hwnas(["results", str(run_dir)]) == 0
    assert "test_accuracy=" in capsys.readouterr().out
    assert hwnas(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    rows = json.loads((tmp_path / "rep" / "near_best.json").read_text())
    assert rows and all(r["accuracy_kind"] == "test accuracy" for r in rows)
    assert hwnas(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    man = json.loads(next((tmp_path / "exp").glob("*/manifest.json")).read_text())
    acc = man["accuracy"]
    assert acc["validation"]["value"] is not None and acc["test_after_search"]["value"] is not None


def test_train_final_retrains_the_front_and_keeps_the_search_figures(guarded_run, tmp_path, capsys):
    import json
    import shutil

    from search.cli import main as hwnas

    src, _, _ = guarded_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    before = {r["id"]: r for r in collect(run_dir)}
    assert hwnas(["train-final", str(run_dir), "--top", "1", "--epochs", "3"]) == 0
    assert "epoch 3/3" in capsys.readouterr().err
    after = collect(run_dir)
    (tuned,) = [r for r in after if r["final"]]
    f = tuned["final"]
    assert tuned["pareto"] and f["epochs"] == 3 and len(f["history"]) == 3
    assert 0.0 <= f["test_accuracy"] <= 1.0 and (run_dir / f["weights"]).is_file()
    assert (run_dir / f["onnx_path"]).is_file() and f["model_sha256"] != tuned["model_sha256"]
    # the search-time figures stay beside the final ones
    assert f["search"]["val_accuracy"] == before[tuned["id"]]["val_accuracy"] == tuned["val_accuracy"]
    assert tuned["test_accuracy"] == before[tuned["id"]]["test_accuracy"]
    assert hwnas(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    man = json.loads((tmp_path / "exp" / str(tuned["id"]) / "manifest.json").read_text())
    assert man["model"]["sha256"] == f["model_sha256"] and man["accuracy"]["final"]["epochs"] == 3
    assert hwnas(["train-final", str(run_dir), "--id", "999"]) == 2
    assert "no finished candidates with ids [999]" in capsys.readouterr().err


def test_train_final_early_bird_trains_the_pruned_ticket_and_export_says_its_costs_are_the_dense_ones(
        guarded_run, tmp_path, capsys):
    """--early-bird: the ticket is drawn (eps 1.0, window 1: at the second epoch), the network is
    pruned to it, the ticket trains for the epochs left; its weights, ONNX and parameter count are
    the ticket's, and the export labels the search's cost figures as the dense network's."""
    import json
    import shutil

    import onnx

    from search.cli import main as hwnas
    from search.loop.setup import stored_config
    from search.spaces.menndl import _net_class
    from search.training.final import FinalTrainingError, train_final

    src, _, _ = guarded_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    (rec,) = train_final(run_dir, top=1, epochs=4, early_bird=True, eb_eps=1.0, eb_window=1, subset=0,
                         prune_ratio=0.5)
    eb = rec["early_bird"]
    assert eb["drawn_at_epoch"] == 2 and eb["dense_epochs"] == 2 and len(eb["distances"]) == 1
    assert eb["ticket_params"] < eb["dense_params"] and rec["params"] == eb["ticket_params"]
    assert rec["epochs"] == 4 and len(rec["history"]) == 4 and [h.get("ticket", False) for h in rec["history"]] == [
        False, False, True, True]
    assert 0.0 <= rec["test_accuracy"] <= 1.0
    # the stored weights load into the ticket genome's network, and the ONNX is the ticket
    store = Store(run_dir)
    space = make_space(stored_config(store, token_given=True))
    store.close()
    from search.training.data import load_dataset

    net = _net_class()(space.from_json(eb["ticket_genome"]), load_dataset("digits", seed=0).task)
    net.load_state_dict(torch.load(run_dir / rec["weights"], weights_only=True))
    assert sum(p.numel() for p in net.parameters()) == eb["ticket_params"]
    graph = onnx.load(str(run_dir / rec["onnx_path"])).graph
    assert sum(int(torch.tensor(list(t.dims)).prod()) for t in graph.initializer) <= eb["ticket_params"]
    assert hwnas(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    cid = next(r["id"] for r in collect(run_dir) if r["final"])
    man = json.loads((tmp_path / "exp" / str(cid) / "manifest.json").read_text())
    assert man["model"]["sha256"] == rec["model_sha256"] and man["accuracy"]["final"]["early_bird"]["ticket_params"]
    costs = {c["metric"]: c["method"] for c in man["costs"]}
    assert costs and all("not of this exported Early-Bird ticket" in m for m in costs.values()), costs
    with pytest.raises(FinalTrainingError, match="--prune-ratio"):
        train_final(run_dir, top=1, early_bird=True, prune_ratio=1.5)
    with pytest.raises(FinalTrainingError, match="--subset"):
        train_final(run_dir, top=1, subset=-1)


def test_a_search_trains_on_real_cifar10_jpegs(tmp_path, monkeypatch):
    """A few hundred of the shared CIFAR-10 tar's JPEGs: decoded once into the cache by the
    server, loaded from it by the worker, trained with the genome's augmentation, test accuracy
    of the front after the search."""
    from _shared import CIFAR10_TAR

    if not CIFAR10_TAR.exists():
        pytest.skip(f"shared CIFAR-10 tar absent ({CIFAR10_TAR})")
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))  # the worker inherits it
    cfg = dataclasses.replace(FAST, budget=2, train_workers=1, dataset=f"cifar10:{CIFAR10_TAR}", subset=300,
                              space_options={**FAST.space_options, "max_epochs": 1})
    summary = SearchRunner(config=cfg, run_dir=tmp_path / "run", progress=False).run()
    results = collect(tmp_path / "run")
    assert summary["done"] == 2, [r["error"] for r in results]
    for r in results:
        assert "CIFAR" in r["train"]["source"] or "cifar10" in r["train"]["source"].lower()
        assert r["train"]["history"][0]["images_per_s"] > 0
    assert summary["test"]["test_images"] == 300 and summary["test"]["evaluated"] >= 1
