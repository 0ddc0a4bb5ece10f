"""Datasets the search trains candidates on.

``load_dataset(name)`` returns :class:`DatasetSplits`: ``train``, ``val`` (the held-out split the
search uses for fitness), a test split behind :meth:`DatasetSplits.load_test` (read only when
asked, so the search can be shown never to touch it), the :class:`~search.spaces.base.TaskSpec`
networks are built for, a ``source`` string and a :class:`DatasetInfo` (class names, per-channel
mean/std of the training split) to keep with the run.

Names:

- ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 grey digits; ships inside the
  wheel, no download). The embedded default.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` idx files under
  ``/usr/share/datasets/fashion-mnist/`` when present, else torchvision's ``FashionMNIST`` under
  ``root`` (``download=True`` fetches it).
- ``cifar10:PATH`` / ``cifar100:PATH`` / ``cinic10:PATH`` / ``imagefolder:PATH``: local copies,
  never downloaded: torchvision's python-pickle batches (folder or ``.tar.gz``), an ImageFolder
  tree (``train/`` + optional ``val/``/``valid/`` + optional ``test/``, or a single folder of
  class folders split by ``seed``) or a tar of one. Decoded once into a uint8 cache keyed by the
  source's content (:mod:`search.training.datasets`). Bare ``cifar10``/``cifar100`` look for
  torchvision's pickle folder under ``root``.

Sets are held in memory as uint8 tensors (:class:`ArrayDataset`) and normalised per batch,
so training on them needs no ``DataLoader``.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from search.spaces.base import TaskSpec
from search.training.datasets import IN_MEMORY_LIMIT_BYTES, SourceError, read_source  # noqa: F401

#: Debian's ``dataset-fashion-mnist`` install folder.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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


@dataclass(frozen=True)
class DatasetInfo:
    """What a trained model needs to know about its data; stored with the run as JSON."""

    name: str
    source: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    in_channels: int
    image_size: int

    def to_json(self) -> str:
        """This record as a JSON object string."""
        return json.dumps(asdict(self))


@dataclass
class DatasetSplits:
    """Train / validation (fitness) splits, a lazily read test split, and what networks are built for.

    The test split is read only by :meth:`load_test` (the ``test`` property calls it);
    ``test_reads`` counts those reads.
    """

    name: str
    train: Dataset
    val: Dataset
    task: TaskSpec
    source: str
    test_loader: Callable[[], Dataset | None] | None = None
    test_size: int = 0
    classes: list[str] | None = None
    info: DatasetInfo | None = None
    cache_path: Path | None = None
    test_reads: int = 0
    _test: Dataset | None = field(default=None, repr=False)

    def load_test(self) -> Dataset | None:
        """The test split (``None`` when the source has none); reads it on the first call."""
        if self.test_loader is None:
            return None
        self.test_reads += 1
        if self._test is None:
            self._test = self.test_loader()
        return self._test

    @property
    def test(self) -> Dataset | None:
        """The test split, read on first access (see :meth:`load_test`)."""
        return self.load_test()

    def summary(self) -> dict[str, Any]:
        """Sizes and provenance, for logs and the run's record (does not read the test split)."""
        return {
            "name": self.name, "source": self.source,
            "train": len(self.train), "val": len(self.val),  # type: ignore[arg-type]
            "test": self.test_size if self.test_loader is not None else None,
            "task": {"in_channels": self.task.in_channels, "image_size": self.task.image_size,
                     "num_classes": self.task.num_classes},
            "info": None if self.info is None else asdict(self.info),
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


TestArrays = Callable[[], "tuple[np.ndarray, np.ndarray] | None"]


def _arrays_to_splits(name: str, source: str, x_train: np.ndarray, y_train: np.ndarray,
                      test: TestArrays | None, *, scale: float, seed: int, val_fraction: float,
                      limit: int | None, classes: list[str] | None = None,
                      val: tuple[np.ndarray, np.ndarray] | None = None,
                      num_classes: int | None = None, n_test: int = 0) -> DatasetSplits:
    """Carve a validation split out of the training arrays (unless ``val`` is given); stats from
    the train split only. ``test`` returns the test arrays when first asked for."""
    if val is None:
        tr, va = _stratified_split(y_train, val_fraction, seed)
        tr, va = _limit(tr, limit, seed), _limit(va, limit, seed + 1)
        x_val, y_val = x_train[va], y_train[va]
    else:
        tr = _limit(np.arange(len(y_train)), limit, seed)
        va = _limit(np.arange(len(val[1])), limit, seed + 1)
        x_val, y_val = val[0][va], val[1][va]
    mean, std = _channel_stats(x_train[tr], scale)

    def make(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(x=torch.from_numpy(np.ascontiguousarray(x)), y=torch.from_numpy(y.astype(np.int64)),
                            scale=scale, mean=mean, std=std)

    def load_test() -> ArrayDataset | None:
        arrays = test() if test is not None else None
        if arrays is None:
            return None
        te = _limit(np.arange(len(arrays[1])), limit, seed + 2)
        return make(arrays[0][te], arrays[1][te])

    n_classes = num_classes or int(y_train.max()) + 1
    task = TaskSpec(in_channels=int(x_train.shape[1]), image_size=int(x_train.shape[2]), num_classes=n_classes)
    info = DatasetInfo(name=name, source=source, classes=tuple(classes or [str(i) for i in range(n_classes)]),
                       mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), scale=scale,
                       in_channels=task.in_channels, image_size=task.image_size)
    return DatasetSplits(name=name, train=make(x_train[tr], y_train[tr]), val=make(x_val, y_val),
                         test_loader=None if test is None else load_test,
                         test_size=n_test if limit is None else min(n_test, limit), task=task,
                         source=source, classes=classes, info=info)


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
                             x[rest], y[rest], lambda: (x[te], y[te]), n_test=len(te), scale=16.0, seed=seed,
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
                                     xtr[:, None], ytr.astype(np.int64), lambda: (xte[:, None], yte.astype(np.int64)),
                                     n_test=len(yte),
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
                             tr.data.numpy()[:, None], tr.targets.numpy(),
                             lambda: (te.data.numpy()[:, None], te.targets.numpy()), n_test=len(te), scale=255.0, seed=seed, val_fraction=val_fraction,
                             limit=limit, classes=classes)


def _from_source(kind: str, path_s: str, root: str | None, seed: int, val_fraction: float,
                 limit: int | None, image_size: int | None = None, subset: int | None = None,
                 **_: Any) -> DatasetSplits:
    """``KIND:PATH``: pickle batches, an ImageFolder tree or a tar of one, via the uint8 cache."""
    if not path_s:
        raise DatasetError(f"'{kind}:' needs a path, e.g. '{kind}:/data/{kind}'")
    path = Path(path_s).expanduser()
    if not path.exists():
        raise DatasetError(f"{kind} source {path} does not exist (expected a folder of pickle batches, "
                           "an ImageFolder tree, or a tar of one)")
    size = int(image_size or 32)
    try:
        src = read_source(kind, path, image_size=size, subset=subset, seed=seed)
    except SourceError as exc:
        raise DatasetError(str(exc)) from None
    where = f"{path} ({src.layout}{', ' + str(size) + 'px' if 'pickle' not in src.layout else ''})"
    if subset:
        where += f", subset of {subset} per split (seed {seed})"
    nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731

    def test() -> tuple[np.ndarray, np.ndarray] | None:
        try:
            t = src.load_test()
        except SourceError as exc:
            raise DatasetError(str(exc)) from None
        return None if t is None else (nchw(t[0]), t[1])

    val = None if src.x_val is None else (nchw(src.x_val), src.y_val)
    splits = _arrays_to_splits(f"{kind}:{path}", where, nchw(src.x_train), src.y_train,
                               test if src.n_test else None, scale=255.0, seed=seed,
                               val_fraction=val_fraction, limit=limit, classes=src.classes,
                               val=val, num_classes=len(src.classes), n_test=src.n_test)
    splits.cache_path = src.cache_path
    return splits


def _load_cifar(which: str, root: str | None, **kw: Any) -> DatasetSplits:
    """Bare ``cifar10``/``cifar100``: torchvision's pickle folder under the data root."""
    base = _default_root(root)
    folder = base / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    if not folder.is_dir():
        raise DatasetError(f"{which} not found under {base}; pass --dataset {which}:PATH (a folder of "
                           "torchvision's pickle batches, their .tar.gz, an ImageFolder tree or a tar "
                           "of one such as CIFAR-10-images.tar) or set data_root in the search config")
    return _from_source(which, str(folder), root, **kw)


_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": lambda **kw: _load_cifar("cifar10", **kw),
    "cifar100": lambda **kw: _load_cifar("cifar100", **kw),
}
_PATH_KINDS = ("cifar10", "cifar100", "cinic10", "imagefolder")


def known_datasets() -> list[str]:
    """Names ``load_dataset`` accepts (``KIND:PATH`` for folder datasets)."""
    return sorted(_LOADERS) + [f"{k}:PATH" for k in _PATH_KINDS]


def load_dataset(name: str, *, root: str | None = None, seed: int = 0, val_fraction: float = 0.2,
                 limit: int | None = None, download: bool = False,
                 image_size: int | None = None, subset: int | None = None) -> DatasetSplits:
    """Load dataset ``name`` as train / val / optional test splits.

    root: folder of torchvision's files (default ``$HWNAS_DATA`` or ``~/.cache/hwnas/data``).
    seed: seeds every split and subset. val_fraction: share of the training data held out for
    validation when the dataset has no validation split. limit: at most this many examples per
    split (a seeded random subset), for quick runs. download: let torchvision download (needs
    internet). image_size: resize folder datasets to this square size (default 32).
    subset: for ``KIND:PATH`` sources, decode only a seeded stratified pick of at most this many
    images per split (a quick run that skips decoding the rest).
    Raises :class:`DatasetError` (a ``ValueError``) for unknown names and missing files.
    """
    if subset is not None and subset < 1:
        raise DatasetError(f"subset must be >= 1, got {subset}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    kind, sep, path = name.partition(":")
    kw = dict(root=root, seed=seed, val_fraction=val_fraction, limit=limit)
    if sep and kind.lower() in _PATH_KINDS:
        return _from_source(kind.lower(), path, image_size=image_size, subset=subset, **kw)
    loader = _LOADERS.get(name.lower())
    if sep and kind.lower() in _LOADERS:
        raise DatasetError(f"dataset {kind!r} takes no path; known: {', '.join(known_datasets())}")
    if loader is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    return loader(download=download, **kw)
