"""Readers for local image datasets, decoded once into a content-keyed uint8 cache.

Sources (no download, ever):

- torchvision's python-pickle batches of CIFAR-10 (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``) or CIFAR-100 (``train``, ``test``, ``meta``), as a folder (or the folder
  above ``cifar-10-batches-py`` / ``cifar-100-python``) or as the ``.tar.gz`` they ship in;
- an ImageFolder tree (``[split/]class/image``, splits ``train``, ``val``/``valid``, ``test``),
  as a folder or as a tar of one (e.g. ``CIFAR-10-images.tar``).

:func:`read_source` returns :class:`SourceArrays`: uint8 NHWC arrays per split, labels and class
names. Decoded arrays are written to ``$HWNAS_CACHE`` (default ``~/.cache/hwnas/datasets``) as
``<key>.npz``, where the key is a sha256 over the source's content (a file or tar: its bytes,
streamed; a directory tree: the relative paths, sizes and mtimes of its files, so a touched file
invalidates the entry without re-reading every image) plus what shapes the decode (kind, image
size, subset, seed, format version). Writes are atomic; an unreadable entry is rebuilt. The test
arrays of a cached entry are read only when :meth:`SourceArrays.load_test` is called.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Bumped when the decoded layout changes, so old cache entries are not reused.
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "test": "test"}
#: Processes decoding images (the development machines have 2 shared cores).
DECODE_WORKERS = 2
#: Decoded images must fit under this many bytes (uint8) in memory; beyond it ask for a subset.
IN_MEMORY_LIMIT_BYTES = 1 << 30
#: Counts decodes in this process, so tests can see that a cache hit decoded nothing.
DECODE_CALLS = {"count": 0}


class SourceError(ValueError):
    """A dataset source that cannot be read (missing, empty, malformed)."""


@dataclass
class SourceArrays:
    """Decoded splits: ``x_*`` uint8 ``(N, H, W, C)``, ``y_*`` int64; ``val`` may be absent.

    The test split is behind :meth:`load_test` so a caller can prove it was never read.
    """

    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    n_test: int
    layout: str
    cache_path: Path | None
    _test_fn: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    test_reads: int = 0

    def load_test(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The test split ``(x, y)`` read now (``None`` when the source has none)."""
        if self._test_fn is None or self.n_test == 0:
            return None
        self.test_reads += 1
        try:
            return self._test_fn()
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise SourceError(f"test split of {self.cache_path} is unreadable ({exc}); delete the "
                              "file to rebuild it") from None


# ---------------------------------------------------------------- cache

def cache_dir() -> Path:
    """Where decoded datasets live: ``$HWNAS_CACHE`` or ``~/.cache/hwnas/datasets``."""
    return Path(os.environ.get("HWNAS_CACHE") or Path.home() / ".cache" / "hwnas" / "datasets")


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes (streamed), or of a tree's relative paths, sizes and mtimes."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: a reader sees the old entry or the whole new one


def _open_cached(path: Path) -> SourceArrays | None:
    """The cache entry at ``path``, or ``None`` when absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        has_val = "x_val" in z.files
        arrays = SourceArrays(
            classes=list(meta["classes"]), x_train=z["x_train"], y_train=z["y_train"],
            x_val=z["x_val"] if has_val else None, y_val=z["y_val"] if has_val else None,
            n_test=int(meta["n_test"]), layout=str(meta["layout"]), cache_path=path,
            _test_fn=lambda: (z["x_test"], z["y_test"]))
        if len(arrays.x_train) != len(arrays.y_train) or arrays.x_train.dtype != np.uint8:
            raise ValueError("train arrays disagree")
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return None


def _store(path: Path, classes: list[str], splits: dict[str, tuple[np.ndarray, np.ndarray]],
           layout: str) -> SourceArrays:
    arrays: dict[str, np.ndarray] = {}
    for name, (x, y) in splits.items():
        arrays[f"x_{name}"], arrays[f"y_{name}"] = x, y
    n_test = len(splits["test"][1]) if "test" in splits else 0
    arrays["meta"] = np.array(json.dumps({"classes": classes, "n_test": n_test, "layout": layout}))
    try:
        _save(path, arrays)
    except OSError:
        pass  # a read-only cache still lets the run go on with the decoded arrays
    val = splits.get("val")
    test = splits.get("test")
    return SourceArrays(classes=classes, x_train=splits["train"][0], y_train=splits["train"][1],
                        x_val=None if val is None else val[0], y_val=None if val is None else val[1],
                        n_test=n_test, layout=layout, cache_path=path,
                        _test_fn=None if test is None else (lambda: test))


# ---------------------------------------------------------------- cifar pickle batches

def _unpickle(raw: bytes, name: str) -> dict[str, Any]:
    try:
        d = pickle.loads(raw, encoding="latin1")
        if not isinstance(d, dict):
            raise ValueError("not a dict")
        return d
    except Exception as exc:  # pickle raises many kinds on garbage
        raise SourceError(f"{name} is not a CIFAR pickle batch ({type(exc).__name__}: {exc})") from None


def _cifar_files(path: Path, which: str) -> dict[str, Callable[[], bytes]] | None:
    """Readers of the pickle files of ``which`` in a folder or tar, or ``None`` when not there."""
    want = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
            if which == "cifar10" else ["train", "test", "meta"])
    if path.is_dir():
        for folder in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
            if all((folder / w).is_file() for w in want):
                return {w: (folder / w).read_bytes for w in want}
        return None
    try:
        tf = tarfile.open(path)
    except tarfile.TarError:
        return None
    names = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
    if not all(w in names for w in want):
        return None
    return {w: (lambda m=names[w]: tf.extractfile(m).read()) for w in want}  # type: ignore[union-attr]


def _read_cifar(files: dict[str, Callable[[], bytes]], which: str
                ) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unpickle(files[name](), name)
        key = "labels" if which == "cifar10" else "fine_labels"
        try:
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(d[key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise SourceError(f"{name} is not a {which} batch (no {exc})") from None
        if len(x) != len(y):
            raise SourceError(f"{name}: {len(x)} images but {len(y)} labels")
        return np.ascontiguousarray(x), y

    meta = _unpickle(files["batches.meta" if which == "cifar10" else "meta"](), "meta")
    classes = list(meta.get("label_names") or meta.get("fine_label_names") or [])
    trains = [batch(f"data_batch_{i}") for i in range(1, 6)] if which == "cifar10" else [batch("train")]
    x_tr, y_tr = np.concatenate([t[0] for t in trains]), np.concatenate([t[1] for t in trains])
    return classes, {"train": (x_tr, y_tr), "test": batch("test_batch" if which == "cifar10" else "test")}


# ---------------------------------------------------------------- image folders and tars

def _classify(rel: str) -> tuple[str, str] | None:
    """``(split, class)`` of an image at relative path ``rel`` (split ``""`` when none)."""
    parts = [p for p in rel.split("/") if p]
    if len(parts) < 2 or not parts[-1].lower().endswith(IMAGE_EXTENSIONS) or parts[-1].startswith("."):
        return None
    split = next((SPLIT_NAMES[p.lower()] for p in parts[:-2] if p.lower() in SPLIT_NAMES), "")
    return split, parts[-2]


def _decode_chunk(args: tuple[list[Any], int, str | None]) -> np.ndarray:
    """Decode images (bytes or paths) to uint8 ``(N, size, size, 3)``; runs in a worker."""
    from PIL import Image

    items, size, tar = args
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    fh = open(tar, "rb") if tar else None
    for i, item in enumerate(items):
        if isinstance(item, tuple):  # (offset, size) of a member of an uncompressed tar
            fh.seek(item[0])  # type: ignore[union-attr]
            src: Any = io.BytesIO(fh.read(item[1]))  # type: ignore[union-attr]
        else:
            src = io.BytesIO(item) if isinstance(item, bytes) else item
        with Image.open(src) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(im)
    if fh:
        fh.close()
    return out


def _decode_all(items: list[Any], size: int, tar: str | None, workers: int) -> np.ndarray:
    DECODE_CALLS["count"] += 1
    if not items:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    n_chunks = max(1, min(len(items) // 256, 64))
    chunks = [(items[i::n_chunks], size, tar) for i in range(n_chunks)]
    if workers <= 1 or len(items) < 512:
        parts = [_decode_chunk(c) for c in chunks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            parts = list(ex.map(_decode_chunk, chunks))
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(parts):
        out[i::n_chunks] = p  # undo the interleaved chunking
    return out


def _pick(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A seeded subset of ``n`` indices taking about the same share of every class."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    k = int((counts > 0).sum())
    # stratify when both sides can hold every class (scikit-learn refuses otherwise)
    strat = labels if counts[counts > 0].min() >= 2 and min(n, len(labels) - n) >= k else None
    keep, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=strat)
    return np.sort(keep)


def _read_images(path: Path, size: int, subset: int | None, seed: int
                 ) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]], str]:
    tar: str | None = None
    if path.is_dir():
        entries = [(p.relative_to(path).as_posix(), str(p)) for p in sorted(path.rglob("*")) if p.is_file()]
    else:
        try:
            with tarfile.open(path) as tf:
                plain = tf.fileobj is not None and type(tf.fileobj).__name__ == "BufferedReader"
                # members of a plain tar are read in the workers by offset (no per-name lookup);
                # a compressed tar cannot seek, so its bytes are read here
                entries = sorted((m.name, (m.offset_data, m.size) if plain else
                                  (tf.extractfile(m).read() if _classify(m.name) else b""))  # type: ignore[union-attr]
                                 for m in tf.getmembers() if m.isfile())
        except (tarfile.TarError, OSError) as exc:
            raise SourceError(f"{path} is neither an image folder nor a readable tar ({exc})") from None
        tar = str(path) if plain else None
    by_split: dict[str, dict[str, list[Any]]] = {}
    for rel, item in entries:
        sc = _classify(rel)
        if sc:
            by_split.setdefault(sc[0], {}).setdefault(sc[1], []).append(item)
    if not by_split:
        raise SourceError(f"{path} holds no images in class folders ({', '.join(IMAGE_EXTENSIONS)})")
    if "" in by_split and len(by_split) > 1:
        by_split.pop("")  # loose class folders beside train/ are not part of the layout
    if "" in by_split:
        by_split = {"train": by_split.pop("")}
    if "train" not in by_split:
        raise SourceError(f"{path} has {'/'.join(sorted(by_split))}/ but no train/ split")
    classes = sorted(by_split["train"])
    for split, cl in by_split.items():
        if sorted(cl) != classes:
            raise SourceError(f"class folders differ between splits of {path}: {classes} vs {sorted(cl)}")
    per_split = [sum(len(v) for v in cl.values()) for cl in by_split.values()]
    n_images = sum(min(subset or n, n) for n in per_split)
    if n_images * size * size * 3 > IN_MEMORY_LIMIT_BYTES:
        raise SourceError(f"{path}: {n_images} images at {size}px need "
                          f"{n_images * size * size * 3 / 2**30:.1f} GiB in memory; pass a subset or a smaller image size")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, cl in sorted(by_split.items()):
        items = [it for c in classes for it in cl[c]]
        labels = np.concatenate([np.full(len(cl[c]), k, dtype=np.int64) for k, c in enumerate(classes)])
        keep = _pick(labels, subset, seed)
        out[split] = (_decode_all([items[i] for i in keep], size, tar, DECODE_WORKERS), labels[keep])
    layout = "/+".join(sorted(by_split)) + "/"
    return classes, out, layout


# ---------------------------------------------------------------- entry point

def read_source(kind: str, path: Path, *, image_size: int = 32, subset: int | None = None,
                seed: int = 0, use_cache: bool = True) -> SourceArrays:
    """Decode (or load from the cache) ``path`` as dataset ``kind``.

    kind: ``cifar10``/``cifar100`` (pickle batches or an image tree/tar) or ``imagefolder``/
    ``cinic10`` (an image tree/tar). subset: at most this many images per split, a seeded
    stratified pick made before decoding, so quick runs decode little.
    """
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    # the key names the requested kind, so a cache hit needs no look inside the source
    decode_key = {"v": CACHE_VERSION, "kind": kind, "size": image_size, "subset": subset,
                  "seed": seed if subset else None}
    key = hashlib.sha256((content_hash(path) + json.dumps(decode_key, sort_keys=True)).encode()).hexdigest()
    entry = cache_dir() / f"{key}.npz"
    cached = _open_cached(entry) if use_cache else None
    if cached is not None:
        return cached
    pickles = _cifar_files(path, kind) if kind in ("cifar10", "cifar100") else None
    if pickles is not None:
        classes, splits = _read_cifar(pickles, kind)
        splits = {s: (x[k], y[k]) for s, (x, y) in splits.items() for k in [_pick(y, subset, seed)]}
        layout = f"torchvision {kind} pickle batches"
    else:
        classes, splits, layout = _read_images(path, image_size, subset, seed)
    return _store(entry, classes, splits, layout)
