"""Datasets the search trains candidates on.

``load_dataset(name)`` returns :class:`DatasetSplits`: ``train``, ``val`` (the held-out split the
search uses for fitness), optional ``test``, the :class:`~search.spaces.base.TaskSpec` networks
are built for, and a ``source`` string saying where the data came from.

Names:

- ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 grey digits; ships inside the
  wheel, no download). The embedded default.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` idx files under
  ``/usr/share/datasets/fashion-mnist/`` when present, else torchvision's ``FashionMNIST`` under
  ``root`` (``download=True`` fetches it).
- ``cifar10`` / ``cifar100``: torchvision under ``root`` (``download=True`` fetches it).
- ``imagefolder:PATH`` / ``cinic10:PATH``: a ``torchvision.datasets.ImageFolder`` tree, either
  ``train/`` + optional ``valid/`` or ``val/`` + optional ``test/`` (the CINIC-10 layout), or a
  single folder of class folders split by ``seed``.

Small sets are held in memory as uint8 tensors (:class:`ArrayDataset`) and normalised per batch,
so training on them needs no ``DataLoader``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from search.spaces.base import TaskSpec

#: Debian's ``dataset-fashion-mnist`` install folder.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Images decoded into memory when the split fits under this many bytes (uint8).
IN_MEMORY_LIMIT_BYTES = 1 << 30


class DatasetError(ValueError):
    """A dataset that cannot be loaded (unknown name, missing files, bad layout)."""


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 (or float) tensor ``(N, C, H, W)`` plus int64 labels.

    Items are normalised on access: ``(x / scale - mean) / std`` per channel.
    :meth:`get_batch` returns a whole batch at once, the fast path of the trainer.
    """

    def __init__(self, *, x: torch.Tensor, y: torch.Tensor, scale: float,
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"expected x (N,C,H,W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        self.x, self.y = x, y.long()
        self.scale = float(scale)
        self.mean = mean.reshape(1, -1, 1, 1).float()
        self.std = std.reshape(1, -1, 1, 1).float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch(torch.tensor([i]))
        return x[0], y[0]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images and labels at ``idx`` (a 1-D index tensor)."""
        x = self.x[idx].float().div_(self.scale)
        return (x - self.mean) / self.std, self.y[idx]

    def subset(self, idx: np.ndarray | torch.Tensor) -> "ArrayDataset":
        """A dataset of the items at ``idx`` sharing this one's normalisation."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ArrayDataset(x=self.x[idx], y=self.y[idx], scale=self.scale,
                            mean=self.mean.flatten(), std=self.std.flatten())

    @property
    def targets(self) -> list[int]:
        return self.y.tolist()


@dataclass
class DatasetSplits:
    """Train / validation (fitness) / optional test splits and what networks are built for."""

    name: str
    train: Dataset
    val: Dataset
    task: TaskSpec
    source: str
    test: Dataset | None = None
    classes: list[str] | None = None

    def summary(self) -> dict[str, Any]:
        """Sizes and provenance, for logs and the run's record."""
        return {
            "name": self.name, "source": self.source,
            "train": len(self.train), "val": len(self.val),  # type: ignore[arg-type]
            "test": None if self.test is None else len(self.test),  # type: ignore[arg-type]
            "task": {"in_channels": self.task.in_channels, "image_size": self.task.image_size,
                     "num_classes": self.task.num_classes},
        }


# ---------------------------------------------------------------- helpers

def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` with ``fraction`` of every class held out."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"split fraction must be in (0, 1), got {fraction}")
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and len(labels) * fraction >= len(counts[counts > 0]) else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)


def _limit(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=limit, replace=False))


def _channel_stats(x: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``x`` (N,C,H,W) after dividing by ``scale``.

    Accumulated in float64 over chunks so a large uint8 set is never copied whole as floats.
    """
    c = x.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), 4096):
        chunk = x[i:i + 4096].astype(np.float64) / scale
        s1 += chunk.sum(axis=(0, 2, 3))
        s2 += np.square(chunk).sum(axis=(0, 2, 3))
        n += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(np.maximum(std, 1e-6), dtype=torch.float32)


def _arrays_to_splits(name: str, source: str, x_train: np.ndarray, y_train: np.ndarray,
                      x_test: np.ndarray | None, y_test: np.ndarray | None, *, scale: float,
                      seed: int, val_fraction: float, limit: int | None,
                      classes: list[str] | None = None) -> DatasetSplits:
    """Carve a validation split out of the training arrays; stats from the train split only."""
    tr, va = _stratified_split(y_train, val_fraction, seed)
    tr, va = _limit(tr, limit, seed), _limit(va, limit, seed + 1)
    mean, std = _channel_stats(x_train[tr], scale)

    def make(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(x=torch.from_numpy(np.ascontiguousarray(x)), y=torch.from_numpy(y.astype(np.int64)),
                            scale=scale, mean=mean, std=std)

    test = None
    if x_test is not None and y_test is not None:
        te = _limit(np.arange(len(y_test)), limit, seed + 2)
        test = make(x_test[te], y_test[te])
    n_classes = int(max(y_train.max(), -1 if y_test is None else y_test.max())) + 1
    task = TaskSpec(in_channels=int(x_train.shape[1]), image_size=int(x_train.shape[2]), num_classes=n_classes)
    return DatasetSplits(name=name, train=make(x_train[tr], y_train[tr]), val=make(x_train[va], y_train[va]),
                         test=test, task=task, source=source, classes=classes)


def _default_root(root: str | None) -> Path:
    return Path(root or os.environ.get("HWNAS_DATA") or Path.home() / ".cache" / "hwnas" / "data")


# ---------------------------------------------------------------- loaders

def _load_digits(root: str | None, seed: int, val_fraction: float, limit: int | None, **_: Any) -> DatasetSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None, :, :]  # values 0..16
    y = d.target.astype(np.int64)
    # A fixed 20 % test split (stratified, seeded), then validation out of the rest.
    rest, te = _stratified_split(y, 0.2, seed)
    return _arrays_to_splits("digits", "scikit-learn load_digits (UCI optical digits, 1,797 8x8 images)",
                             x[rest], y[rest], x[te], y[te], scale=16.0, seed=seed,
                             val_fraction=val_fraction, limit=limit,
                             classes=[str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        if data[:3] != b"\x00\x00\x08":
            raise ValueError("no idx uint8 header")
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable idx file ({exc}); reinstall or re-download it") from exc


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _load_fashion_mnist(root: str | None, seed: int, val_fraction: float, limit: int | None,
                        download: bool = False, **_: Any) -> DatasetSplits:
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    folders = [Path(root)] if root else []
    folders += [DEBIAN_FASHION_MNIST, _default_root(root) / "FashionMNIST" / "raw"]
    for folder in folders:
        stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        paths = [_find_idx(folder, s) for s in stems]
        if all(paths):
            xtr, ytr, xte, yte = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
            return _arrays_to_splits("fashion-mnist", f"Fashion-MNIST idx files in {folder}",
                                     xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64),
                                     scale=255.0, seed=seed, val_fraction=val_fraction, limit=limit,
                                     classes=classes)
    from torchvision.datasets import FashionMNIST

    tv_root = _default_root(root)
    try:
        tr = FashionMNIST(str(tv_root), train=True, download=download)
        te = FashionMNIST(str(tv_root), train=False, download=download)
    except RuntimeError as exc:
        raise DatasetError(
            f"Fashion-MNIST not found (looked in {', '.join(str(f) for f in folders)}): {exc}. "
            "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass "
            "download=True (needs internet)") from exc
    return _arrays_to_splits("fashion-mnist", f"torchvision FashionMNIST in {tv_root}",
                             tr.data.numpy()[:, None], tr.targets.numpy(), te.data.numpy()[:, None],
                             te.targets.numpy(), scale=255.0, seed=seed, val_fraction=val_fraction,
                             limit=limit, classes=classes)


def _load_cifar(which: str, root: str | None, seed: int, val_fraction: float, limit: int | None,
                download: bool = False, **_: Any) -> DatasetSplits:
    from torchvision import datasets

    cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
    tv_root = _default_root(root)
    try:
        tr = cls(str(tv_root), train=True, download=download)
        te = cls(str(tv_root), train=False, download=download)
    except RuntimeError as exc:
        hint = (" The CIFAR-10 images also exist as an ImageFolder tar: extract it and use "
                "'imagefolder:PATH'." if which == "cifar10" else "")
        raise DatasetError(
            f"{which} not found under {tv_root} ({exc}). Pass root= pointing at a folder holding "
            f"torchvision's {cls.__name__} files, or download=True (needs internet).{hint}") from exc
    to_nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    return _arrays_to_splits(which, f"torchvision {cls.__name__} in {tv_root}", to_nchw(tr.data),
                             np.asarray(tr.targets), to_nchw(te.data), np.asarray(te.targets),
                             scale=255.0, seed=seed, val_fraction=val_fraction, limit=limit,
                             classes=list(tr.classes))


def _imagefolder(path: Path, image_size: int) -> Any:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.PILToTensor()])
    try:
        return datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, OSError) as exc:
        raise DatasetError(f"cannot read image folder {path}: {exc}") from exc


def _decode(ds: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode the images at ``idx`` of an ImageFolder into uint8 (N,C,H,W) and labels."""
    xs = [ds[int(i)][0].numpy() for i in idx]
    ys = [ds.targets[int(i)] for i in idx]
    return np.stack(xs).astype(np.uint8), np.asarray(ys, dtype=np.int64)


def _load_imagefolder(kind: str, path_s: str, root: str | None, seed: int, val_fraction: float,
                      limit: int | None, image_size: int | None = None, **_: Any) -> DatasetSplits:
    if not path_s:
        raise DatasetError(f"'{kind}:' needs a path, e.g. '{kind}:/data/cinic10'")
    path = Path(path_s).expanduser()
    if not path.is_dir():
        raise DatasetError(f"image folder {path} does not exist; for CIFAR-10 extract "
                           "CIFAR-10-images.tar there, for CINIC-10 unpack CINIC-10.tar.gz")
    size = int(image_size or 32)
    sub = {p.name.lower(): p for p in path.iterdir() if p.is_dir()}
    if "train" in sub:
        train_ds = _imagefolder(sub["train"], size)
        val_dir = sub.get("valid") or sub.get("val")
        val_ds = _imagefolder(val_dir, size) if val_dir else None
        test_ds = _imagefolder(sub["test"], size) if "test" in sub else None
        for other in (val_ds, test_ds):
            if other is not None and other.classes != train_ds.classes:
                raise DatasetError(f"class folders differ between splits of {path}: "
                                   f"{train_ds.classes} vs {other.classes}")
        layout = "train/" + ("+" + val_dir.name + "/" if val_dir else "") + ("+test/" if test_ds else "")
    else:
        train_ds, val_ds, test_ds = _imagefolder(path, size), None, None
        layout = "single folder split by seed"
    y_all = np.asarray(train_ds.targets, dtype=np.int64)
    if val_ds is None:
        tr, va = _stratified_split(y_all, val_fraction, seed)
    else:
        tr, va = np.arange(len(y_all)), None
    tr = _limit(tr, limit, seed)
    va_idx = _limit(va, limit, seed + 1) if va is not None else _limit(np.arange(len(val_ds)), limit, seed + 1)
    te_idx = None if test_ds is None else _limit(np.arange(len(test_ds)), limit, seed + 2)
    n_images = len(tr) + len(va_idx) + (0 if te_idx is None else len(te_idx))
    n_bytes = n_images * 3 * size * size
    if n_bytes > IN_MEMORY_LIMIT_BYTES:
        raise DatasetError(f"{path}: {n_images} images at {size}px need {n_bytes / 2**30:.1f} GiB in "
                           "memory; pass limit= or a smaller image_size")
    xtr, ytr = _decode(train_ds, tr)
    scale = 255.0
    mean, std = _channel_stats(xtr, scale)

    def make(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(x=torch.from_numpy(x), y=torch.from_numpy(y), scale=scale, mean=mean, std=std)

    xva, yva = _decode(train_ds if va is not None else val_ds, va_idx)
    test = None if test_ds is None else make(*_decode(test_ds, te_idx))
    task = TaskSpec(in_channels=int(xtr.shape[1]), image_size=size, num_classes=len(train_ds.classes))
    return DatasetSplits(name=f"{kind}:{path}", train=make(xtr, ytr), val=make(xva, yva), test=test,
                         task=task, source=f"ImageFolder {path} ({layout}), resized to {size}px",
                         classes=list(train_ds.classes))


_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": lambda **kw: _load_cifar("cifar10", **kw),
    "cifar100": lambda **kw: _load_cifar("cifar100", **kw),
}
_PATH_KINDS = ("imagefolder", "cinic10")


def known_datasets() -> list[str]:
    """Names ``load_dataset`` accepts (``KIND:PATH`` for folder datasets)."""
    return sorted(_LOADERS) + [f"{k}:PATH" for k in _PATH_KINDS]


def load_dataset(name: str, *, root: str | None = None, seed: int = 0, val_fraction: float = 0.2,
                 limit: int | None = None, download: bool = False,
                 image_size: int | None = None) -> DatasetSplits:
    """Load dataset ``name`` as train / val / optional test splits.

    root: folder of torchvision's files (default ``$HWNAS_DATA`` or ``~/.cache/hwnas/data``).
    seed: seeds every split and subset. val_fraction: share of the training data held out for
    validation when the dataset has no validation split. limit: at most this many examples per
    split (a seeded random subset), for quick runs. download: let torchvision download (needs
    internet). image_size: resize folder datasets to this square size (default 32).
    Raises :class:`DatasetError` (a ``ValueError``) for unknown names and missing files.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    kind, sep, path = name.partition(":")
    kw = dict(root=root, seed=seed, val_fraction=val_fraction, limit=limit)
    if sep and kind.lower() in _PATH_KINDS:
        return _load_imagefolder(kind.lower(), path, image_size=image_size, **kw)
    loader = _LOADERS.get(name.lower())
    if loader is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    return loader(download=download, **kw)
