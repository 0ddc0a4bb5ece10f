"""Local dataset sources: pickle batches, image trees and tars, the uint8 cache, the lazy test
split, subsets, one-line errors, and tensor augmentation."""
from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from search.training.data import DatasetError, load_dataset
from search.training import datasets as ds
from search.training.augment import AugmentSettings, augment_batch

from _shared import CIFAR10_TAR


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))


def _tree(root: Path, n: int = 6) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 2)):
        for k, (name, colour) in enumerate({"cat": (220, 30, 30), "dog": (30, 30, 220), "emu": (30, 220, 30)}.items()):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.{'png' if k else 'jpg'}")


def _pickles(folder: Path, which: str) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    n_cls = 10 if which == "cifar10" else 100
    key = "labels" if which == "cifar10" else "fine_labels"

    def batch(name: str, n: int) -> None:
        y = np.arange(n) % n_cls
        x = (rng.integers(0, 40, (n, 3072)) + 2 * y[:, None]).astype(np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": x, key: y.tolist()}))

    names = [f"c{i}" for i in range(n_cls)]
    if which == "cifar10":
        for i in range(1, 6):
            batch(f"data_batch_{i}", 20)
        batch("test_batch", 20)
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    else:
        batch("train", 300)
        batch("test", 100)
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_pickle_batches_folder_and_targz(tmp_path, which):
    folder = tmp_path / "src" / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    _pickles(folder, which)
    s = load_dataset(f"{which}:{tmp_path / 'src'}", val_fraction=0.2)
    n_cls = 10 if which == "cifar10" else 100
    assert s.task == type(s.task)(in_channels=3, image_size=32, num_classes=n_cls)
    assert s.classes[:2] == ["c0", "c1"] and len(s.classes) == n_cls
    assert len(s.train) + len(s.val) == (100 if which == "cifar10" else 300)
    assert s.test_reads == 0 and s.summary()["test"] == (20 if which == "cifar10" else 100)
    y = torch.tensor(s.train.targets)
    assert int(y.min()) >= 0 and int(y.max()) < n_cls
    tgz = tmp_path / "c.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    t = load_dataset(f"{which}:{tgz}", val_fraction=0.2)
    assert torch.equal(t.train.x, s.train.x) and torch.equal(t.val.y, s.val.y)
    assert "pickle batches" in t.source


def test_tree_and_tar_of_it_agree_and_test_split_is_lazy(tmp_path):
    _tree(tmp_path / "tree")
    s = load_dataset(f"imagefolder:{tmp_path / 'tree'}", val_fraction=0.5, seed=3)
    assert s.classes == ["cat", "dog", "emu"] and s.train.x.dtype == torch.uint8
    assert s.train.x.shape[1:] == (3, 32, 32) and len(s.train) + len(s.val) == 18
    assert set(s.val.targets) == {0, 1, 2}  # stratified
    assert s.test_reads == 0  # loading train/val never read the test split
    assert len(s.load_test()) == 6 and s.test_reads == 1
    tar = tmp_path / "tree.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(tmp_path / "tree", arcname="data")
    t = load_dataset(f"cifar10:{tar}", val_fraction=0.5, seed=3)
    assert torch.equal(t.train.x, s.train.x) and torch.equal(t.val.y, s.val.y)
    info = json.loads(t.info.to_json())
    assert info["classes"] == ["cat", "dog", "emu"] and len(info["mean"]) == 3
    # red class first: the red channel's mean is above the blue one's
    assert info["mean"][0] > 0.2 and all(0 < v < 1 for v in info["std"])


def test_seeded_split_reproducible_and_disjoint(tmp_path):
    _tree(tmp_path, n=10)
    a = load_dataset(f"imagefolder:{tmp_path}", seed=1, val_fraction=0.3)
    b = load_dataset(f"imagefolder:{tmp_path}", seed=1, val_fraction=0.3)
    c = load_dataset(f"imagefolder:{tmp_path}", seed=2, val_fraction=0.3)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    rows = lambda d: {bytes(r.numpy()) for r in d.x.flatten(1)}  # noqa: E731
    assert not rows(a.train) & rows(a.val)  # noise makes every image unique


def test_cache_hit_skips_decoding_and_corrupt_entry_is_rebuilt(tmp_path):
    _tree(tmp_path / "t")
    before = ds.DECODE_CALLS["count"]
    s = load_dataset(f"imagefolder:{tmp_path / 't'}")
    decoded = ds.DECODE_CALLS["count"] - before
    assert decoded >= 1 and s.cache_path.is_file()
    s2 = load_dataset(f"imagefolder:{tmp_path / 't'}")
    assert ds.DECODE_CALLS["count"] - before == decoded  # served from the cache
    assert torch.equal(s2.train.x, s.train.x)
    s.cache_path.write_bytes(b"not an npz")
    s3 = load_dataset(f"imagefolder:{tmp_path / 't'}")
    assert ds.DECODE_CALLS["count"] - before == 2 * decoded and torch.equal(s3.train.x, s.train.x)
    assert np.load(s.cache_path)["x_train"].dtype == np.uint8  # rebuilt entry is whole again
    # a changed file changes the key: no stale reuse
    (tmp_path / "t" / "train" / "cat" / "0.jpg").touch()
    load_dataset(f"imagefolder:{tmp_path / 't'}")
    assert ds.DECODE_CALLS["count"] - before == 3 * decoded


@pytest.mark.parametrize("spec, msg", [
    ("imagefolder:/no/such/dir", "does not exist"),
    ("cifar10:", "needs a path"),
    ("digits:/tmp", "takes no path"),
    ("svhn:/tmp", "unknown dataset"),
])
def test_one_line_errors(spec, msg):
    with pytest.raises(DatasetError, match=msg) as exc:
        load_dataset(spec)
    assert "\n" not in str(exc.value)


def test_empty_tree_and_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images") as exc:
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    assert "\n" not in str(exc.value)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a tar file " * 50)
    with pytest.raises(DatasetError, match="neither an image folder nor a readable tar"):
        load_dataset(f"cinic10:{junk}")
    bad = tmp_path / "bad" / "cifar-10-batches-py"
    _pickles(bad, "cifar10")
    (bad / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="data_batch_3 is not a CIFAR pickle batch"):
        load_dataset(f"cifar10:{tmp_path / 'bad'}")
    with pytest.raises(DatasetError, match="subset must be"):
        load_dataset(f"cifar10:{tmp_path / 'bad'}", subset=0)


@pytest.mark.skipif(not CIFAR10_TAR.exists(), reason=f"shared CIFAR-10 tar absent ({CIFAR10_TAR})")
def test_real_cifar10_tar_subset():
    s = load_dataset(f"cifar10:{CIFAR10_TAR}", subset=200, seed=0)
    assert s.task == type(s.task)(in_channels=3, image_size=32, num_classes=10)
    assert s.classes[0] == "airplane" and s.classes[-1] == "truck"
    assert len(s.train) + len(s.val) == 200 and s.summary()["test"] == 200 and s.test_reads == 0
    assert np.bincount(s.train.targets + s.val.targets).tolist() == [20] * 10  # stratified
    x, _ = s.train.get_batch(torch.arange(len(s.train)))
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2
    assert 0.35 < s.info.mean[0] < 0.65  # CIFAR-10's red mean is about 0.49


def test_augment_keeps_shape_dtype_and_is_seeded():
    x = torch.randn(8, 3, 16, 16)
    st = AugmentSettings(crop_padding=4, flip=True, cutout=6)
    a = augment_batch(x, st, generator=torch.Generator().manual_seed(0))
    b = augment_batch(x, st, generator=torch.Generator().manual_seed(0))
    c = augment_batch(x, st, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    # flip alone is exactly the mirror image or the input, per sample
    f = augment_batch(x, AugmentSettings(crop_padding=0, flip=True), generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1)) for i in range(8))
    # crop keeps every pixel from the input or the zero padding
    k = augment_batch(x, AugmentSettings(crop_padding=2, flip=False), generator=torch.Generator().manual_seed(0))
    vals = set(x.flatten().tolist()) | {0.0}
    assert set(k.flatten().tolist()) <= vals


def test_train_candidate_applies_augmentation(tmp_path):
    from torch import nn

    from search.spaces.base import TrainHParams
    from search.training.train import train_candidate

    _tree(tmp_path, n=10)
    s = load_dataset(f"imagefolder:{tmp_path}", val_fraction=0.3)

    def run(augment):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        r = train_candidate(model, s, TrainHParams(epochs=2, batch_size=8), seed=0, augment=augment)
        return r, model

    plain, m1 = run(None)
    aug, m2 = run(AugmentSettings(crop_padding=4, flip=True, cutout=8))
    again, m3 = run(AugmentSettings(crop_padding=4, flip=True, cutout=8))
    assert aug.epochs == 2 and 0.0 <= aug.val_accuracy <= 1.0
    w = lambda m: m[0].weight.detach()  # noqa: E731
    assert not torch.equal(w(m1), w(m2)) and torch.equal(w(m2), w(m3))  # applied, and seeded
    assert s.test_reads == 0  # training never read the test split


def test_oversized_source_asks_for_a_subset(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.setattr(ds, "IN_MEMORY_LIMIT_BYTES", 10 * 32 * 32 * 3)
    with pytest.raises(DatasetError, match="24 images at 32px need .* pass a subset"):
        load_dataset(f"imagefolder:{tmp_path}")
    s = load_dataset(f"imagefolder:{tmp_path}", subset=4)  # 4 train + 4 test fit
    assert len(s.train) + len(s.val) == 4 and s.summary()["test"] == 4
