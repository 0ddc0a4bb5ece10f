"""Every registered search space through the same checks (timm/Optuna-style conformance suite).

For each space in ``list_spaces()``: seeded genomes from ``sample``, ``mutate`` and ``crossover``
are built in PyTorch, exported to ONNX (``onnx.checker``), run in ONNX Runtime and compared with
PyTorch; JSON round trip, key stability, determinism and bad-input handling are checked.
A space registered later is picked up automatically with the fallback settings below.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from search.spaces import TaskSpec, TrainHParams, get_space, list_spaces
from search.training.exporting import ExportError, count_params, export_onnx, read_metadata, sha256

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# Every genome (248 in all, seeded) is built and run in PyTorch, exported, checked and run in
# ONNX Runtime. HWNAS_CONFORMANCE_QUICK=1 exports only a seeded, evenly spread subset of
# EXPORTED per space (the legacy exporter costs ~0.1-0.2 s per model) for quick local runs.
CONFIGS: dict[str, tuple[dict, TaskSpec, int]] = {
    "menndl": ({}, TaskSpec(in_channels=1, image_size=8, num_classes=10), 200),
    "nb201": ({"C": 4, "N": 1}, TaskSpec(in_channels=3, image_size=8, num_classes=10), 24),
    "mobile": (
        {"channels": (8, 16), "strides": (2, 2), "activations": ("relu", "hswish"), "min_depth": 1,
         "max_depth": 3, "widths": (0.5, 1.0), "resolutions": (8, 16)},
        TaskSpec(in_channels=3, image_size=16, num_classes=10),
        24,
    ),
}
FALLBACK: tuple[dict, TaskSpec, int] = ({}, TaskSpec(in_channels=3, image_size=16, num_classes=10), 10)
EXPORTED = {"menndl": 90, "nb201": 18, "mobile": 16}
FULL = os.environ.get("HWNAS_CONFORMANCE_QUICK") != "1"


def _config(name: str) -> tuple[dict, TaskSpec, int]:
    return CONFIGS.get(name, FALLBACK)


def _genomes(space, n: int, seed: int) -> list[tuple[str, object]]:
    """A third sampled, the rest alternately mutated and crossed over from the pool."""
    rng = random.Random(seed)
    pool = [space.sample(rng) for _ in range(max(2, n // 3))]
    out = [("sample", g) for g in pool]
    while len(out) < n:
        if len(out) % 2:
            child = space.mutate(rng.choice(pool), rng)
            out.append(("mutate", child))
        else:
            child = space.crossover(rng.choice(pool), rng.choice(pool), rng)
            out.append(("crossover", child))
        pool.append(child)
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=list_spaces())
def case(request):
    name = request.param
    kwargs, task, n = _config(name)
    space = get_space(name, **kwargs)
    return name, space, task, _genomes(space, n, seed=1234)


def test_registry_has_the_three_spaces():
    assert {"menndl", "nb201", "mobile"} <= set(list_spaces())
    with pytest.raises(ValueError, match="unknown search space"):
        get_space("no-such-space")


def test_deterministic_for_a_seed(case):
    name, space, _, genomes = case
    kwargs, _, n = _config(name)
    again = _genomes(get_space(name, **kwargs), n, seed=1234)
    assert [g for _, g in again] == [g for _, g in genomes]
    other = _genomes(space, n, seed=99)
    assert [g for _, g in other] != [g for _, g in genomes]


def test_json_round_trip_and_key(case):
    _, space, _, genomes = case
    keys: dict[str, object] = {}
    for _, g in genomes:
        hash(g)
        data = json.loads(json.dumps(space.to_json(g)))
        back = space.from_json(data)
        assert back == g and hash(back) == hash(g)
        assert space.key(back) == space.key(g)
        assert isinstance(space.key(g), str) and space.key(g)
        # the key is canonical: distinct genomes never share one
        assert keys.setdefault(space.key(g), g) == g
    assert len(keys) > len(genomes) // 2, "sampling/mutation/crossover should produce varied genomes"


def test_from_json_rejects_bad_input(case):
    _, space, _, genomes = case
    good = space.to_json(genomes[0][1])
    for bad in ({}, {"nonsense": 1}, None, "text", []):
        with pytest.raises(ValueError):
            space.from_json(bad)
    for field in good:
        with pytest.raises(ValueError):
            space.from_json({k: v for k, v in good.items() if k != field})
        with pytest.raises(ValueError):
            space.from_json({**good, field: None})


def test_mutation_changes_the_genome(case):
    _, space, _, genomes = case
    rng = random.Random(7)
    changed = sum(space.mutate(g, rng) != g for _, g in genomes)
    assert changed >= 0.95 * len(genomes)


def test_hparams_are_train_hparams_or_none(case):
    _, space, _, genomes = case
    for _, g in genomes[:20]:
        hp = space.hparams(g)
        assert hp is None or isinstance(hp, TrainHParams)


def test_every_genome_builds_and_runs_in_pytorch(case):
    _, space, task, genomes = case
    params = []
    for origin, g in genomes:
        model = space.build(g, task).eval()
        params.append(count_params(model))
        shape = space.input_shape(g, task)
        assert shape[0] == 1 and shape[1] == task.in_channels
        with torch.no_grad():
            out = model(torch.zeros((2, *shape[1:])))
        assert out.shape == (2, task.num_classes), (origin, space.key(g))
        assert torch.isfinite(out).all()
    assert min(params) > 0
    if len(genomes) >= 20:
        assert max(params) > 2 * min(params), "sizes should vary across genomes"


def _export_subset(name: str, genomes: list) -> list:
    count = len(genomes) if FULL else min(len(genomes), EXPORTED.get(name, len(genomes)))
    idx = np.linspace(0, len(genomes) - 1, count).round().astype(int)
    return [genomes[i] for i in sorted(set(idx.tolist()))]


def test_build_export_and_onnxruntime_match_pytorch(case):
    name, space, task, genomes = case
    rng = np.random.default_rng(0)
    subset = _export_subset(name, genomes)
    assert {origin for origin, _ in subset} == {"sample", "mutate", "crossover"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    for origin, g in subset:
        model = space.build(g, task)
        shape = space.input_shape(g, task)
        blob = export_onnx(model, shape, metadata={"hwnas.space": name, "hwnas.arch_key": space.key(g)})
        proto = onnx.load_from_string(blob)
        onnx.checker.check_model(proto)
        assert [i.name for i in proto.graph.input] == ["input"]
        assert [o.name for o in proto.graph.output] == ["logits"]
        assert read_metadata(blob)["hwnas.arch_key"] == space.key(g)
        # batch 3 while exported with batch 1: the batch axis is dynamic
        x = rng.standard_normal((3, *shape[1:])).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"input": x})
        assert got.shape == (3, task.num_classes), (origin, space.key(g))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"{origin}: {space.key(g)}")


# -- exporting ---------------------------------------------------------------------------------

def test_export_sets_metadata_and_dynamic_batch():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    model.train()
    blob = export_onnx(model, (1, 1, 8, 8), metadata={"hwnas.space": "x", "hwnas.genome": "{}"})
    assert not model.training
    assert read_metadata(blob) == {"hwnas.space": "x", "hwnas.genome": "{}"}
    dim0 = onnx.load_from_string(blob).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    assert count_params(model) == 4 * 9 + 4 + 144 * 3 + 3
    assert sha256(blob) == sha256(bytes(blob)) and len(sha256(blob)) == 64


def test_export_errors_are_export_errors():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(ExportError, match="boom"):
        export_onnx(Broken(), (1, 1, 4, 4))
    with pytest.raises(ExportError, match="input shape"):
        export_onnx(torch.nn.Identity(), (1, 0, 4, 4))
    with pytest.raises(ExportError, match="metadata"):
        export_onnx(torch.nn.Flatten(), (1, 1, 2, 2), metadata={"k": 3})
