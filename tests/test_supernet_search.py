"""``hwnas supernet train`` then ``hwnas search --accuracy supernet:PATH``: sub-networks scored with
inherited weights (no training), exported and measured by a real local agent."""
from __future__ import annotations

import dataclasses
import json

import pytest

from search import config as cfgmod
from search.cli import main as hwnas
from search.loop.runner import SearchRunner
from search.loop.setup import SearchError
from search.reporting.results import collect

TINY = {"channels": [8, 16], "strides": [2, 2], "activations": ["relu", "hswish"], "min_depth": 1, "max_depth": 2,
        "kernels": [3, 5], "expands": [2, 3], "widths": [0.5, 1.0], "resolutions": [8, 12], "stem_channels": 8,
        "head_expand": 2}


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    path = tmp_path_factory.mktemp("sn") / "supernet.pt"
    rc = hwnas(["supernet", "train", "--space", "mobile", "--space-options", json.dumps(TINY), "--dataset", "digits",
                "--limit", "120", "--phase-epochs", "1,0,0,0,0", "--batch-size", "50", "--out", str(path)])
    assert rc == 0 and path.is_file()
    return path


def _cfg(path, **kw):
    return dataclasses.replace(
        cfgmod.SearchConfig(), space="mobile", space_options=dict(TINY), budget=3, population_size=3,
        accuracy=f"supernet:{path}", objectives=("accuracy", "latency_ms"),
        measure=dataclasses.replace(cfgmod.DEMO_MEASURE, min_iterations=5, min_duration_s=0.02, warmup_s=0.01), **kw)


def test_search_scores_subnetworks_by_inherited_weights(supernet, tmp_path):
    from search.spaces.base import get_space
    from search.training.supernet_train import SupernetAccuracy

    SearchRunner(config=_cfg(supernet), run_dir=tmp_path, progress=False).run()
    done = [r for r in collect(tmp_path) if r["status"] == "done"]
    assert len(done) == 3
    scorer = SupernetAccuracy(supernet)
    space = get_space("mobile", **TINY)
    for r in done:
        train = r["train"]
        assert train["fidelity"]["kind"] == "inherited weights" and "epochs" not in train
        assert "not trained" in train["source"]
        # the same score as the supernet's own scorer gives (fixed recalibration subset)
        assert train["accuracy"] == pytest.approx(scorer.score(space.from_json(r["genome"])))
        assert r["measurements"][0]["ok"]


def test_supernet_of_another_space_or_dataset_is_a_clear_error(supernet, tmp_path):
    wrong = dataclasses.replace(_cfg(supernet), space_options={**TINY, "widths": [1.0]})
    with pytest.raises(SearchError, match="covers the mobile space"):
        SearchRunner(config=wrong, run_dir=tmp_path / "a", progress=False).run()
    with pytest.raises(SearchError, match="trained on 'digits'"):
        SearchRunner(config=dataclasses.replace(_cfg(supernet), dataset="fashion-mnist"), run_dir=tmp_path / "b",
                     progress=False).run()
    assert hwnas(["search", "--accuracy", "supernet:/nonexistent.pt", "--space", "mobile", "--out",
                  str(tmp_path / "c"), "--no-progress"]) == 2
