"""The layer-wise cost model (issue 12): features from real ONNX graphs, profile mapping on a
real ONNX Runtime profile, recovery of known polynomial costs, file round trip, extrapolation."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from search.costmodel import (
    FEATURES,
    CostModel,
    CostModelError,
    Layer,
    Measurement,
    extract_layers,
    fit_from_measurements,
    map_profile,
    node_index,
    predict_onnx,
)
from search.costmodel.__main__ import main as cli_main

torch = pytest.importorskip("torch")
nn = torch.nn


def _export(model, shape, path) -> str:
    from search.training.exporting import export_onnx

    with open(path, "wb") as f:
        f.write(export_onnx(model, shape))
    return str(path)


class _Res(nn.Module):
    """conv-bn-relu, depthwise conv + relu6, 1x1 conv + residual add + relu, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU6())
        self.pw = nn.Conv2d(8, 8, 1)
        self.mp = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        y = self.dw(self.c1(x))
        y = torch.relu(self.pw(y) + y)
        return self.head(self.mp(y))


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return _export(_Res(), (1, 3, 16, 16), tmp_path_factory.mktemp("cm") / "res.onnx")


def test_features_match_hand_computed(small_onnx):
    layers = extract_layers(small_onnx)
    by_type = {}
    for layer in layers:
        by_type.setdefault(layer.type, []).append(layer)
    (c1,), (pw,) = by_type["Conv"], by_type["PWConv"]
    (dw,) = by_type["DWConv"]
    f = c1.features  # 3->8, 3x3, 16x16, stride 1, pad 1; BN folded by the exporter, Relu fused
    assert (f["cin"], f["cout"], f["k"], f["stride"], f["pad"], f["h"], f["oh"]) == (3, 8, 3, 1, 1, 16, 16)
    assert f["macs"] == 16 * 16 * 8 * 3 * 3 * 3 and f["params"] == 8 * 27 + 8 and f["has_act"] == 1
    f = dw.features  # depthwise 8 groups, stride 2 -> 8x8 output
    assert (f["groups"], f["cin"], f["cout"], f["stride"], f["oh"], f["ow"]) == (8, 8, 8, 2, 8, 8)
    assert f["macs"] == 8 * 8 * 8 * 1 * 3 * 3 and f["has_act"] == 1 and len(dw.nodes) == 2
    f = pw.features  # 1x1 with the residual Add and Relu fused
    assert (f["k"], f["macs"], f["has_add"], f["has_act"]) == (1, 8 * 8 * 8 * 8, 1, 1)
    assert len(pw.nodes) == 3
    (gemm,) = by_type["Gemm"]
    assert gemm.features["macs"] == 80 and gemm.features["params"] == 90
    (mp,) = by_type["MaxPool"]
    assert (mp.features["k"], mp.features["oh"], mp.features["macs"]) == (2, 4, 8 * 4 * 4 * 4)
    assert extract_layers(small_onnx, batch=4)[0].features["macs"] == 4 * c1.features["macs"]


def test_profile_names_map_onto_layers(small_onnx):
    """A real ORT profile (agent's settings and aggregation): every kernel maps except reorders."""
    import onnxruntime as ort

    from device_agent.backends.onnxruntime_backend import aggregate_profile, session_options
    from device_agent.config import BuildConfig

    so = session_options(BuildConfig(intra_op_threads=1), profile_prefix=os.path.join(
        os.path.dirname(small_onnx), "prof"))
    sess = ort.InferenceSession(small_onnx, sess_options=so, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 16, 16), np.float32)
    for _ in range(4):
        sess.run(None, {"input": x})
    with open(sess.end_profiling()) as f:
        profile = aggregate_profile(json.load(f), 3)
    layers = extract_layers(small_onnx)
    mapped, unmapped = map_profile(node_index(small_onnx, layers), profile)
    assert all(name.startswith("Reorder") for name in unmapped), unmapped
    convs = [i for i, layer in enumerate(layers) if layer.op_type == "Conv"]
    assert all(i in mapped for i in convs)  # the fused conv kernels, whatever ORT named them
    assert abs(sum(mapped.values()) + sum(unmapped.values())
               - sum(e["median_ms"] for e in profile)) < 1e-9


def _synthetic(rng: random.Random) -> Layer:
    cin, cout, hw = rng.choice([8, 16, 32, 64]), rng.choice([8, 16, 32, 64]), rng.choice([8, 16, 32])
    k = rng.choice([1, 3, 5])
    f = {name: 0.0 for name in FEATURES} | {
        "batch": 1, "cin": cin, "cout": cout, "h": hw, "w": hw, "oh": hw, "ow": hw, "k": k,
        "stride": 1, "groups": 1, "macs": hw * hw * cin * cout * k * k,
        "in_elems": cin * hw * hw, "out_elems": cout * hw * hw}
    return Layer(name="x", op_type="Conv", nodes=["x"], features=f)


def _true_cost(layer: Layer) -> float:  # a known degree-2 polynomial in the features
    f = layer.features
    return 0.002 + 2e-6 * f["macs"] + 1e-5 * f["out_elems"] + 3e-6 * f["cin"] * f["cout"]


def test_recovers_polynomial_layer_cost():
    from search.costmodel.model import lasso_poly

    rng = random.Random(0)
    train = [_synthetic(rng) for _ in range(300)]
    test = [_synthetic(rng) for _ in range(100)]
    est = lasso_poly(300).fit(np.asarray([l.vector() for l in train]),
                              np.asarray([_true_cost(l) for l in train]))
    y = np.asarray([_true_cost(l) for l in test])
    p = est.predict(np.asarray([l.vector() for l in test]))
    rel = np.abs(p - y) / y
    assert rel.max() < 0.05 and rel.mean() < 0.01


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model fitted on synthetic 'measurements' of real exported graphs with known layer costs."""
    d = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    rng = random.Random(1)
    ms = []
    for i in range(16):
        c, hw = rng.choice([4, 8, 16]), rng.choice([8, 12, 16])
        net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
        path = _export(net, (1, 3, hw, hw), d / f"n{i}.onnx")
        layers = extract_layers(path)
        prof = [{"name": l.name, "median_ms": 1e-5 * l.features["macs"] + 0.001} for l in layers]
        ms.append(Measurement(onnx=path, latency_ms=0.05 + sum(p["median_ms"] for p in prof),
                              layers=tuple(prof)))
    return fit_from_measurements(ms, device_key="test-key"), d


def test_fit_predicts_and_round_trips(fitted, small_onnx):
    model, d = fitted
    assert model.metrics["heldout"]["mape_pct"] < 10
    assert set(model.choices) >= {"Conv", "Gemm", "GlobalAveragePool"}
    path = d / "model.hwnascm"
    model.save(path)
    again = CostModel.load(path)
    assert again.model_id == model.model_id and again.label.startswith("estimated:costmodel-")
    probe = d / "n0.onnx"
    a, b = model.predict_layers(extract_layers(probe)), predict_onnx(path, probe)
    assert a["latency_ms"] == pytest.approx(b["latency_ms"]) and a["latency_ms"] > 0
    assert b["interval_ms"]["low"] <= b["latency_ms"] <= b["interval_ms"]["high"]
    assert not b["extrapolated"] and len(b["layers"]) == 5


def test_unseen_op_is_marked_or_refused(fitted, small_onnx, capsys):
    model, d = fitted
    path = d / "m.hwnascm"
    model.save(path)
    r = predict_onnx(path, small_onnx)  # MaxPool, depthwise conv and a fused Add never seen
    assert r["extrapolated"]
    assert any("unseen_op:MaxPool" in s for s in r["extrapolation"])
    assert any("unseen_op:DWConv" in f for row in r["layers"] for f in row["flags"])
    with pytest.raises(CostModelError, match="extrapolate"):
        predict_onnx(path, small_onnx, strict=True)
    assert cli_main(["predict", str(path), small_onnx, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["extrapolated"] is True
    assert cli_main(["predict", str(path), small_onnx, "--strict"]) == 2



def test_many_layers_of_a_type_never_predict_zero(fitted):
    """A type's network-stage term (time scale minus per-layer count) is floored at zero and
    flagged: hundreds of layers of one type once drove a torchvision network's prediction to
    0 ms."""
    import dataclasses

    model, d = fitted
    layers = extract_layers(d / "n0.onnx")
    k = len(model.net_types)
    # a per-layer count coefficient of -1 ms: every type's term is below zero
    steep = dataclasses.replace(model, net_coef=[0.01] + [1.0] * k + [-1.0] * k)
    r = steep.predict_layers(layers)
    assert r["latency_ms"] == pytest.approx(0.01)  # the constant alone, never below it
    assert r["extrapolated"] and any(s.startswith("network_stage_floor:") for s in r["extrapolation"])
    # a gentle count coefficient binds nowhere: the plain linear stage, unflagged
    mild = dataclasses.replace(model, net_coef=[0.01] + [1.0] * k + [-1e-9] * k)
    r = mild.predict_layers(layers)
    assert not r["extrapolated"]
    assert r["latency_ms"] == pytest.approx(0.01 + r["layer_sum_ms"] - 1e-9 * len(layers))

def test_bad_files_give_clear_errors(tmp_path, fitted):
    bad = tmp_path / "bad.hwnascm"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CostModelError, match="not a cost model file"):
        CostModel.load(bad)
    model, d = fitted
    with pytest.raises(Exception, match="cannot read ONNX"):
        predict_onnx(model, bad)
