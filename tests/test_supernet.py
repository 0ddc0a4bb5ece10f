"""Once-for-All supernet for the mobile space: weight sharing, extraction, ONNX, resume, BN recalibration."""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from search.training.data import load_dataset
from search.spaces.base import TaskSpec
from search.spaces.mobile import MobileBlock, MobileSpace
from search.training.supernet import MobileSupernet
from search.training.supernet_train import (SupernetAccuracy, SupernetTrainConfig, recalibrate_bn, resize,
                                            train_supernet)

TASK = TaskSpec(in_channels=1, image_size=8, num_classes=10)


def tiny_space() -> MobileSpace:
    return MobileSpace(channels=(8, 16, 16), strides=(2, 1, 2), activations=("relu", "hswish", "hswish"),
                       min_depth=1, max_depth=2, kernels=(3, 5, 7), expands=(2, 3), widths=(0.5, 1.0),
                       resolutions=(8, 12), stem_channels=8, head_expand=2)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: a loaded 2-core machine runs these tiny steps several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=160)


def _trained(space: MobileSpace) -> MobileSupernet:
    torch.manual_seed(0)
    net = MobileSupernet(space=space, task=TASK)
    # Non-trivial BN statistics and kernel transforms, so equality is not vacuous.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_extracted_subnetwork_equals_supernet_forward():
    space = tiny_space()
    net = _trained(space)
    rng = random.Random(1)
    for _ in range(4):
        g = space.sample(rng)
        x = torch.randn(5, 1, g.resolution, g.resolution)
        sub = net.extract(g)
        assert type(sub) is type(space.build(g, TASK))
        torch.testing.assert_close(net(x, g), sub(x), rtol=1e-5, atol=1e-5)
    # Different kernels give different outputs (the kernel is really elastic).
    g = space.sample(random.Random(2))
    k3 = replace(g, stages=tuple(tuple(replace(b, kernel=3) for b in s) for s in g.stages))
    k7 = replace(g, stages=tuple(tuple(replace(b, kernel=7) for b in s) for s in g.stages))
    x = torch.randn(2, 1, g.resolution, g.resolution)
    assert not torch.allclose(net(x, k3), net(x, k7))


def test_largest_subnetwork_is_the_full_supernet():
    space = tiny_space()
    net = _trained(space)
    full = net.largest()
    assert full.width == 1.0 and all(len(s) == 2 and all(b == MobileBlock(7, 3, True) for b in s)
                                     for s in full.stages)
    sub = net.extract(full)
    n_sub = sum(p.numel() for p in sub.parameters())
    # Every supernet weight but the kernel transformation matrices is used by the largest network.
    n_transforms = sum(p.numel() for n, p in net.named_parameters() if "transforms" in n)
    assert n_sub == sum(p.numel() for p in net.parameters()) - n_transforms
    x = torch.randn(3, 1, 12, 12)
    torch.testing.assert_close(net(x), sub(x), rtol=1e-5, atol=1e-5)


def test_extracted_network_exports_to_onnx_and_runs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    space = tiny_space()
    net = _trained(space)
    g = space.sample(random.Random(3))
    sub = net.extract(g)
    x = torch.randn(1, *space.input_shape(g, TASK)[1:])
    path = tmp_path / "sub.onnx"
    torch.onnx.export(sub, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, net(x, g).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_bn_recalibration_changes_running_stats(digits):
    space = tiny_space()
    net = _trained(space)
    g = space.sample(random.Random(4))
    sub = net.extract(g)
    before = sub.stem[1].running_mean.clone()
    seen = recalibrate_bn(sub, [resize(digits.train.get_batch(torch.arange(64))[0], g.resolution)])
    assert seen == 64 and not sub.training
    after = sub.stem[1].running_mean
    assert not torch.allclose(before, after)
    # Exactly the batch statistics of the stem's BN input.
    with torch.no_grad():
        z = sub.stem[0](resize(digits.train.get_batch(torch.arange(64))[0], g.resolution))
    torch.testing.assert_close(after, z.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_checkpoint_resumes_to_the_same_state(tmp_path):
    space = tiny_space()
    data = load_dataset("digits", limit=64)
    cfg = SupernetTrainConfig(phase_epochs=(1, 1, 1, 1, 1), batch_size=32, n_random=1, seed=3)
    whole = train_supernet(cfg, checkpoint=tmp_path / "a.pt", space=space, splits=data)
    assert whole.done and whole.steps == 5 * 2  # 5 phases x 64 / 32 batches
    part = train_supernet(cfg, checkpoint=tmp_path / "b.pt", space=space, splits=data, max_steps=3)
    assert not part.done and part.phase == "kernel"
    saved = torch.load(tmp_path / "b.pt", weights_only=False)
    assert (saved["phase"], saved["epoch"], saved["batch"]) == (1, 0, 1)
    rest = train_supernet(cfg, checkpoint=tmp_path / "b.pt", space=space, splits=data)
    assert rest.done and rest.steps == 7
    a = torch.load(tmp_path / "a.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="other settings"):
        train_supernet(replace(cfg, seed=4), checkpoint=tmp_path / "b.pt", space=space, splits=data)
    # Scoring with inherited weights works from the checkpoint, on the splits it was trained with only.
    acc = SupernetAccuracy(tmp_path / "b.pt", splits=data)
    g = space.sample(random.Random(5))
    score = acc.score(g)
    assert 0.0 <= score <= 1.0 and score == acc.score(g)
    with pytest.raises(ValueError, match="trained on"):
        SupernetAccuracy(tmp_path / "b.pt", splits=load_dataset("digits", limit=100))


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    for path in (bad, tmp_path / "missing.pt"):
        with pytest.raises(ValueError, match="cannot read supernet checkpoint"):
            SupernetAccuracy(path)
