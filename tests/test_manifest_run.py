"""``hwnas run MANIFEST IMAGE...`` classifies real CIFAR-10 JPEGs (from the shared tar) with an
exported ONNX using only its manifest, exactly as the training pipeline would have seen them:
the runner's preprocessing (Pillow decode, RGB, bilinear resize, /scale, mean/std, NCHW) is
compared with the dataset code's own decode and normalisation on the same files."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from _shared import CIFAR10_TAR
from deploy.check import cpu_session, run_batches
from deploy.manifest import build_manifest, write_manifest
from device_agent.launcher import REPO_ROOT
from search.training import datasets as ds
from search.training.data import load_dataset
from search.training.exporting import export_onnx

pytestmark = pytest.mark.skipif(not CIFAR10_TAR.exists(), reason=f"shared CIFAR-10 tar absent ({CIFAR10_TAR})")


def _jpegs(dest, n_per_class: int = 1) -> list:
    """The first ``n_per_class`` test JPEGs of each class, extracted from the shared tar."""
    out, seen = [], {}
    with tarfile.open(CIFAR10_TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == "test" and parts[2].endswith(".jpg"):
                if seen.get(parts[1], 0) < n_per_class:
                    seen[parts[1]] = seen.get(parts[1], 0) + 1
                    path = dest / f"{parts[1]}-{parts[2]}"
                    path.write_bytes(tar.extractfile(member).read())
                    out.append(path)
            if len(seen) == 10 and all(v >= n_per_class for v in seen.values()):
                break
    return out


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("manifest")
    with pytest.MonkeyPatch.context() as mp:  # a per-test decode cache, not the user's
        mp.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
        splits = load_dataset(f"cifar10:{CIFAR10_TAR}", subset=100, seed=0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 10)).eval()
    model = export_onnx(net, (1, 3, 32, 32), metadata={"hwnas.space": "test"})
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model)
    cand = {"id": 1, "genome": {}, "objectives": {}, "train": {"accuracy": 0.1}}
    write_manifest(folder / "manifest.json", build_manifest(cand, model_bytes=model, dataset=splits.info))
    return folder, splits.info


def test_run_classifies_cifar_jpegs_from_the_manifest_alone(export_dir, tmp_path):
    folder, info = export_dir
    images = _jpegs(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(folder / "manifest.json"),
                           *map(str, images), "--json", "--top", "3"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [g["image"] for g in got] == list(map(str, images))
    # the training pipeline's view of the same files: decode, then ArrayDataset's normalisation
    raw = ds._decode_chunk(([str(p) for p in images], 32, None)).astype(np.float32)
    x = (raw.transpose(0, 3, 1, 2) / info.scale - np.reshape(info.mean, (1, 3, 1, 1))) / np.reshape(info.std, (1, 3, 1, 1))
    z = run_batches(cpu_session(str(folder / "model.onnx")), x.astype(np.float32))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for g, row in zip(got, p):
        assert len(g["top"]) == 3
        assert g["top"][0]["class"] == info.classes[int(row.argmax())]
        assert g["top"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-5)
        assert g["top"][0]["class"] in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                        "frog", "horse", "ship", "truck")


def test_run_refuses_a_tampered_model_in_one_line(export_dir, tmp_path, capsys):
    import shutil

    from deploy.run import main

    folder = tmp_path / "copy"
    shutil.copytree(export_dir[0], folder)
    image = _jpegs(tmp_path)[0]
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"x")
    assert main([str(folder / "manifest.json"), str(image)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and len(err.strip().splitlines()) == 1
