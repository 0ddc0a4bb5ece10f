"""Issue 12, parts 1, 3, 4: profiles stored with measurements, per-key cost models fitted from the
run, screening in the loop. A real search on digits with a real local agent (ONNX Runtime with
its profiler), real training, a real SQLite store; the evaluator counts its calls."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from search import config as cfgmod
from search.cli import main as hwnas
from search.loop.runner import SearchRunner
from search.loop.setup import accuracy_source, make_space
from search.loop.store import Store
from search.reporting.results import collect
from search.training.evaluator import InProcessTrainer

# every prediction of a latency above 1 us violates the constraint: once the first model is
# fitted, every new candidate without an unseen op is ruled out (audit_share 0.5: every second
# is measured anyway)
CFG = dataclasses.replace(
    cfgmod.SearchConfig(space_options=dict(cfgmod.DEMO_SPACE_OPTIONS)),
    budget=22, population_size=6, constraints=("latency_ms <= 0.001",),
    train=cfgmod.TrainSettings(max_epochs=1, time_budget_s=2.0, patience=1),
    measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=10, min_duration_s=0.03, warmup_s=0.01),
    predictor=cfgmod.PredictorConfig(enabled=True, min_networks=10, refit_every=100, min_heldout=2,
                                     max_heldout_mape_pct=1e9, audit_share=0.5),
).validate()


class CountingTrainer(InProcessTrainer):
    """The real trainer, counting which candidates it was asked to train."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def evaluate(self, request):
        with self._lock:
            self.calls.append(request.candidate_id)
        return super().evaluate(request)


@pytest.fixture(scope="module")
def screened_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("screen")
    ev = CountingTrainer(splits=accuracy_source(CFG), config=CFG, space=make_space(CFG),
                         model_path=lambda d: out / "models" / f"{d}.onnx", export=True)

    class _Runner(SearchRunner):
        def _propose(self):  # once the first fit runs, wait for it, so that the test does
            # not depend on how fast this host fits
            if self.models.fits == 0:
                self.models.wait_fitted(1, 300)
            super()._propose()

    summary = _Runner(config=CFG, run_dir=out, progress=False, evaluator=ev).run()
    return out, ev, summary


def test_profiles_are_stored_with_shapes_and_timed_latency(screened_run):
    out, _, _ = screened_run
    st = Store(out)
    key = st.measurements(ok_only=True)[0]["device_key"]
    profs = st.profiles(key)
    assert len(profs) >= 10
    p = profs[0]
    assert p["latency_ms"] > 0 and p["layers"]
    conv = next(r for r in p["layers"] if r["op_type"] in ("Conv", "FusedConv"))
    assert conv["input_type_shape"] and conv["output_type_shape"] and conv["median_ms"] >= 0
    # the rows live in their own column and are put back into the result when read
    m = next(m for m in st.measurements(ok_only=True) if m["layers"])
    assert m["result"]["layers"] == m["layers"]["layers"]
    st.close()
    raw = sqlite3.connect(out / "run.sqlite").execute("SELECT result FROM measurements WHERE layers IS NOT NULL").fetchone()
    assert "layers" not in json.loads(raw[0])


def test_screened_candidates_are_neither_trained_nor_measured(screened_run):
    out, ev, summary = screened_run
    st = Store(out)
    cands = st.candidates()
    screened = [c for c in cands if c["status"] == "screened"]
    assert summary["screened"] == len(screened) >= 2, summary
    assert len(ev.calls) == len(cands) - len(screened)
    for c in screened:
        assert c["id"] not in ev.calls
        assert c["train"] is None and c["model_sha256"] is None and c["objectives"] is None
        assert not st.jobs(candidate_id=c["id"]) and not st.measurements(c["id"])
        p = c["prediction"]
        (lat,) = p["latency_ms"].values()
        assert lat["label"].startswith("estimated:costmodel-") and lat["value"] > 0
        assert "violates" in c["error"] and p["audit"] is False
    # the audited share: ruled out, but trained and measured, and its error logged
    audited = [c for c in cands if (c["prediction"] or {}).get("audit")]
    assert audited and all(c["id"] in ev.calls and st.jobs(candidate_id=c["id"]) for c in audited)
    checked = st.events("prediction_checked")
    assert {e["candidate_id"] for e in checked} >= {c["id"] for c in audited}
    assert all(e["detail"]["label"].startswith("estimated:") for e in checked)
    fitted = st.events("predictor_fitted")
    assert fitted and fitted[0]["detail"]["n_networks"] >= 10
    st.close()


def test_front_holds_only_measured_candidates(screened_run):
    out, _, _ = screened_run
    results = collect(out)
    for r in results:
        if r["pareto"]:
            assert r["status"] == "done" and any(m["ok"] for m in r["measurements"])
        if r["status"] == "screened":
            assert not r["pareto"] and not r["measurements"] and not r["objectives"]


def test_predictor_cli_round_trip(screened_run, tmp_path, capsys):
    out, _, _ = screened_run
    st = Store(out)
    key = st.measurements(ok_only=True)[0]["device_key"]
    onnx = st.model_path(st.candidates("done")[0]["model_sha256"])
    st.close()
    model = tmp_path / "m.costmodel"
    assert hwnas(["predictor", "fit", str(out), "--device-key", key, "-o", str(model)]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["n_networks"] >= 10 and fit["model"].startswith("estimated:costmodel-")
    assert hwnas(["predict", str(model), str(onnx), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["label"] == fit["model"] and pred["latency_ms"] > 0 and pred["layers"]
    assert hwnas(["predict", str(model), str(onnx)]) == 0
    assert "network latency" in capsys.readouterr().out
    assert hwnas(["predictor", "fit", str(out), "--device-key", "no-such-key", "-o", str(model)]) == 2
    assert "no profiled measurements" in capsys.readouterr().err


def test_resume_keeps_screened_candidates(screened_run):
    out, _, _ = screened_run
    before = {c["id"]: c["status"] for c in Store(out).candidates()}
    cfg = dataclasses.replace(CFG, budget=CFG.budget)
    SearchRunner(config=cfg, run_dir=out, resume=True, progress=False).run()
    after = {c["id"]: c["status"] for c in Store(out).candidates()}
    assert after == before


def test_old_run_dir_opens(tmp_path):
    """A run store written before issue 12 (no ``prediction``/``layers`` columns) opens and reads."""
    db = sqlite3.connect(tmp_path / "run.sqlite")
    db.executescript("""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE candidates (id INTEGER PRIMARY KEY, arch_key TEXT NOT NULL, genome TEXT NOT NULL,
      parents TEXT NOT NULL DEFAULT '[]', origin TEXT NOT NULL DEFAULT 'sample',
      status TEXT NOT NULL DEFAULT 'pending', error TEXT, train TEXT, model_sha256 TEXT, params INTEGER,
      size_mb REAL, objectives TEXT, created REAL NOT NULL, updated REAL NOT NULL);
    CREATE TABLE jobs (id TEXT PRIMARY KEY, candidate_id INTEGER NOT NULL, device_key TEXT NOT NULL,
      state TEXT NOT NULL DEFAULT 'queued', agent TEXT, attempts INTEGER NOT NULL DEFAULT 0,
      crashes INTEGER NOT NULL DEFAULT 0, lease_deadline REAL, error TEXT, updated REAL NOT NULL,
      UNIQUE (candidate_id, device_key));
    CREATE TABLE measurements (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
      candidate_id INTEGER NOT NULL, device_key TEXT NOT NULL, agent TEXT, ok INTEGER NOT NULL,
      result TEXT NOT NULL, created REAL NOT NULL);
    INSERT INTO meta VALUES ('schema_version', '1');
    INSERT INTO candidates(id, arch_key, genome, status, objectives, created, updated)
      VALUES (0, 'k', '{}', 'done', '{"accuracy": 0.9}', 0, 0);
    INSERT INTO jobs(id, candidate_id, device_key, state, updated) VALUES ('c0-d', 0, 'd', 'done', 0);
    INSERT INTO measurements(job_id, candidate_id, device_key, ok, result, created)
      VALUES ('c0-d', 0, 'd', 1, '{"latency_ms": {"median": 1.0}, "layers": [{"name": "n"}]}', 0);
    """)
    db.commit()
    db.close()
    st = Store(tmp_path)
    (c,) = st.candidates()
    assert c["objectives"] == {"accuracy": 0.9} and c["prediction"] is None
    (m,) = st.measurements()
    assert m["result"]["layers"] == [{"name": "n"}] and m["layers"] is None
    assert st.profiles("d") == []
    st.close()


def test_report_shows_where_the_time_goes(screened_run, tmp_path):
    from search.objectives import Objective
    from search.reporting.report import write_report

    out, _, _ = screened_run
    assert hwnas(["report", str(out), "--out", str(tmp_path / "cli")]) == 0
    assert "Where the time goes" in (tmp_path / "cli" / "index.html").read_text()
    # the run's constraint leaves no feasible member: the front of its finished candidates
    # without the constraint (write_report computes it when no flag is set) has the profiles
    results = [dict(r, pareto=False, feasible=True) for r in collect(out)]
    key = next(m["device_key"] for r in results for m in r["measurements"] if m["ok"])
    objs = [Objective("accuracy", "max"), Objective(f"latency_ms@{key}", "min"), Objective("params", "min")]
    page = Path(write_report(results, str(tmp_path / "rep"), objectives=objs)).read_text()
    charts = list((tmp_path / "rep").glob("layers_*.png"))
    assert "Where the time goes" in page and "Energy-precision ratio" in page
    assert charts and all(f"<img src='{c.name}'" in page for c in charts)
    # no power sensor here: the ratio is unavailable, never invented
    assert "unavailable: no power sensor" in page or "unavailable:" in page


def test_energy_precision_ratio_needs_measured_energy():
    from search.reporting.layers import energy_precision_ratio

    cand = {"objectives": {"accuracy": 0.9}}
    m = {"energy": {"status": "measured", "value_mj": 4.0, "method": "nvml"}, "measure_config": {"batch_size": 2}}
    epr, how = energy_precision_ratio(cand, m, "accuracy")
    assert epr == pytest.approx(0.1 * 2.0) and "measured energy" in how
    epr, how = energy_precision_ratio(cand, {"energy": {"status": "unavailable", "value_mj": None,
                                                         "method": "no power sensor"}}, "accuracy")
    assert epr is None and "no power sensor" in how


def test_predictor_section_turns_profiles_on_and_old_configs_restore():
    cfg = cfgmod.from_dict({"predictor": {"enabled": True, "max_heldout_mape_pct": 12.0}})
    assert cfg.predictor.enabled and cfg.measure.profile_layers and cfg.predictor.max_heldout_mape_pct == 12.0
    assert not cfgmod.from_dict({}).measure.profile_layers  # off by default: demo and benches unchanged
    with pytest.raises(cfgmod.ConfigError, match="predictor"):
        cfgmod.from_dict({"predictor": {"min_networks": 3}})
    with pytest.raises(cfgmod.ConfigError, match="predictor"):
        cfgmod.from_dict({"predictor": {"no_such_key": 1}})
    stored = cfgmod.SearchConfig().to_stored()
    stored.pop("predictor")  # a run stored before issue 12
    assert cfgmod.restore(stored).predictor == cfgmod.PredictorConfig()


def test_screening_bench_builds_configs_a_new_run_accepts():
    """bench/screening.py's two configs pass the checks a new run makes first (the bench once
    stopped at start-up when the epoch genes had to end at [train].max_epochs)."""
    from bench.screening import configs, parser

    for argv in (["--bound", "0.05"], ["--bound", "0.05", "--epochs", "3", "--algorithm", "random"],
                 ["--bound", "0.05", "--dataset", "cifar10:c10.tar", "--subset", "2000", "--time-budget", "30"]):
        args = parser().parse_args(argv)
        base, screen, bound = configs(args)
        assert bound == 0.05 and base.constraints == ("latency_ms <= 0.05000",)
        assert screen.predictor.enabled and not base.predictor.enabled
        assert base.space_options["max_epochs"] == base.train.max_epochs == args.epochs
        assert base.dataset == args.dataset and base.subset == args.subset
    base, screen, _ = configs(parser().parse_args(["--bound", "1", "--space", "nb201", "--accuracy-table", "t.csv:c"]))
    assert base.space == screen.space == "nb201" and base.accuracy_table == "t.csv:c" and screen.predictor.enabled


def test_the_default_worker_process_trainer_screens_too(tmp_path):
    """The evaluator a plain ``hwnas search`` gets (training in worker processes) names its
    task, so the server screens before a candidate reaches a worker (it once did not: every
    trained search printed no screening at all, the bench said 0 screened)."""

    class _Runner(SearchRunner):
        def _propose(self):  # wait for the first fit, as in screened_run
            if self.models.fits == 0:
                self.models.wait_fitted(1, 300)
            super()._propose()

    cfg = dataclasses.replace(CFG, budget=18, space_options={**CFG.space_options, "min_epochs": 1, "max_epochs": 1})
    runner = _Runner(config=cfg, run_dir=tmp_path, progress=False)
    summary = runner.run()
    assert type(runner.evaluator).__name__ == "ProcessPoolTrainer" and runner.evaluator.task is not None
    st = Store(tmp_path)
    assert not st.events("screening_unavailable")
    screened = st.candidates("screened")
    assert summary["screened"] == len(screened) >= 1, summary
    for c in screened:
        assert c["train"] is None and not st.jobs(candidate_id=c["id"])
    st.close()


def test_screening_waits_for_enough_held_out_networks():
    """A model whose held-out MAPE rests on fewer than [predictor].min_heldout networks is not
    used to screen, however small that MAPE."""
    from search.costmodel.fleet import FittedModel
    from search.loop.screening import Screener
    from search.objectives import Constraint, Objective

    class Models:
        def __init__(self, fm):
            self.fm = fm

        def current(self, key):
            return self.fm

    def keys(n_heldout, min_heldout):
        fm = FittedModel(model=None, heldout_mape_pct=1.0, n_networks=50, n_heldout=n_heldout)
        return Screener(models=Models(fm), space=None, task=None, store=None, max_mape_pct=25.0, audit_share=0.2,
                        objectives=[Objective("accuracy", "max"), Objective("latency_ms@k", "min")],
                        constraints=[Constraint.parse("latency_ms@k <= 1")], min_heldout=min_heldout).keys()

    assert keys(2, 8) == [] and keys(8, 8) == ["k"] and keys(2, 2) == ["k"]
    with pytest.raises(cfgmod.ConfigError, match="min_heldout"):
        dataclasses.replace(CFG, predictor=dataclasses.replace(CFG.predictor, min_heldout=0)).validate()
