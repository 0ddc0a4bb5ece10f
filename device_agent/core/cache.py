"""Content-addressed on-disk store of models and built artifacts, with an LRU size limit.

Layout under ``root`` (the file format)::

    models/<sha[:2]>/<sha256>.onnx        a model, named by the sha256 of its bytes
    artifacts/<key[:2]>/<key>.bin         a built artifact (engine, optimized model)
    artifacts/<key[:2]>/<key>.json        its metadata (provenance, sha256, size)
    tmp/                                  partial writes (removed at start)

An artifact's key is the sha256 of the JSON of (model sha256, backend, runtime versions,
device key, build config): a rebuild with any of those changed misses the cache. Every write
goes to ``tmp/`` and is renamed into place (atomic), so a crash never leaves a half file under
its final name. A file's mtime is its last use; when the total size passes the limit the least
recently used entries go first, except entries pinned by a running job. The store survives a
restart: the index is rebuilt from the files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.errors import ChecksumMismatch, InvalidRequest

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value: str) -> bool:
    """True for a lowercase hex sha256."""
    return bool(SHA256_RE.match(value or ""))


def artifact_key(*, model_sha256: str, backend: str, versions: dict[str, Any],
                 build: dict[str, Any], device_key: str = "") -> str:
    """Cache key of a built artifact (see the module docstring)."""
    blob = json.dumps({"model": model_sha256, "backend": backend, "versions": versions,
                       "device": device_key, "build": build}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Entry:
    paths: tuple[Path, ...]
    size: int
    used_ns: int


class ModelWriter:
    """Streams a model into the store; ``commit()`` checks size and sha256, then renames it in."""

    def __init__(self, *, cache: "ContentCache", sha256: str, size: int) -> None:
        self._cache = cache
        self.sha256 = sha256
        self.expected_size = size
        self.received = 0
        self._hash = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=cache.root / "tmp", suffix=".part")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises ``InvalidRequest`` past the announced size."""
        self.received += len(chunk)
        if self.received > self.expected_size:
            raise InvalidRequest(f"received more than the announced {self.expected_size} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> Path:
        """Verify and store; raises ``InvalidRequest`` (size) or ``ChecksumMismatch`` (sha256)."""
        try:
            self._file.close()
            if self.received != self.expected_size:
                raise InvalidRequest(
                    f"received {self.received} bytes, header announced {self.expected_size}")
            digest = self._hash.hexdigest()
            if digest != self.sha256:
                raise ChecksumMismatch(
                    f"sha256 of received bytes is {digest}, header announced {self.sha256}")
            return self._cache._install_model(self._tmp, self.sha256, self.received)
        finally:
            self._done = True
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the partial file (idempotent)."""
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._file.close()
            self._tmp.unlink(missing_ok=True)


class ContentCache:
    """The store (thread-safe). ``max_bytes`` bounds the total size of models and artifacts."""

    def __init__(self, *, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._pins: dict[str, int] = {}
        for sub in ("models", "artifacts", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._scan()

    # ---- index
    def _scan(self) -> None:
        for part in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                part.unlink()
        for path in (self.root / "models").glob("*/*.onnx"):
            st = path.stat()
            self._entries["m:" + path.stem] = _Entry((path,), st.st_size, st.st_mtime_ns)
        for path in (self.root / "artifacts").glob("*/*.bin"):
            meta = path.with_suffix(".json")
            if not meta.exists():  # incomplete pair: drop it
                path.unlink(missing_ok=True)
                continue
            st = path.stat()
            self._entries["a:" + path.stem] = _Entry(
                (path, meta), st.st_size + meta.stat().st_size, st.st_mtime_ns)

    @property
    def total_bytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def _touch(self, key: str) -> None:
        entry = self._entries[key]
        now = time.time_ns()
        entry.used_ns = max(now, entry.used_ns + 1)
        with contextlib.suppress(OSError):
            os.utime(entry.paths[0], ns=(entry.used_ns, entry.used_ns))

    def _evict(self) -> None:
        total = sum(e.size for e in self._entries.values())
        for key, entry in sorted(self._entries.items(), key=lambda kv: kv[1].used_ns):
            if total <= self.max_bytes:
                break
            if self._pins.get(key):
                continue
            for p in entry.paths:
                p.unlink(missing_ok=True)
            del self._entries[key]
            total -= entry.size

    @contextlib.contextmanager
    def pin_model(self, sha256: str) -> Iterator[Path | None]:
        """Keep a model from eviction while in use; yields its path (None if not held)."""
        key = "m:" + sha256
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1
            path = self.model_path(sha256)
        try:
            yield path
        finally:
            with self._lock:
                self._pins[key] -= 1
                if not self._pins[key]:
                    del self._pins[key]

    # ---- models
    def _model_file(self, sha256: str) -> Path:
        return self.root / "models" / sha256[:2] / f"{sha256}.onnx"

    def model_size(self, sha256: str) -> int | None:
        """Size of a held model, or None."""
        with self._lock:
            entry = self._entries.get("m:" + sha256)
            return entry.size if entry else None

    def model_path(self, sha256: str) -> Path | None:
        """Path of a held model (marks it used), or None."""
        with self._lock:
            key = "m:" + sha256
            entry = self._entries.get(key)
            if entry is None or not entry.paths[0].exists():
                self._entries.pop(key, None)
                return None
            self._touch(key)
            return entry.paths[0]

    def discard_model(self, sha256: str) -> None:
        """Forget a held model and delete its file (a model that failed validation is never
        kept, even while a job that found it invalid still pins it)."""
        with self._lock:
            entry = self._entries.pop("m:" + sha256, None)
            path = entry.paths[0] if entry else self._model_file(sha256)
            path.unlink(missing_ok=True)

    def model_writer(self, sha256: str, size: int) -> ModelWriter:
        """A writer that streams a model of ``size`` bytes announced as ``sha256``."""
        if not is_sha256(sha256):
            raise InvalidRequest("model_sha256 must be 64 lowercase hex characters")
        return ModelWriter(cache=self, sha256=sha256, size=size)

    def put_model(self, data: bytes) -> tuple[str, Path]:
        """Store ``data``; returns (sha256, path)."""
        sha = hashlib.sha256(data).hexdigest()
        writer = self.model_writer(sha, len(data))
        try:
            writer.write(data)
            return sha, writer.commit()
        finally:
            writer.abort()

    def _install_model(self, tmp: Path, sha256: str, size: int) -> Path:
        final = self._model_file(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            os.replace(tmp, final)
            self._entries["m:" + sha256] = _Entry((final,), size, 0)
            self._touch("m:" + sha256)
            self._pins["m:" + sha256] = self._pins.get("m:" + sha256, 0) + 1
            try:
                self._evict()
            finally:
                self._pins["m:" + sha256] -= 1
                if not self._pins["m:" + sha256]:
                    del self._pins["m:" + sha256]
        return final

    # ---- artifacts
    def get_artifact(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """(bytes, metadata) of a cached artifact, or None."""
        with self._lock:
            entry = self._entries.get("a:" + key)
            if entry is None:
                return None
            try:
                data = entry.paths[0].read_bytes()
                meta = json.loads(entry.paths[1].read_text(encoding="utf-8"))
            except (OSError, ValueError):
                for p in entry.paths:
                    p.unlink(missing_ok=True)
                del self._entries["a:" + key]
                return None
            self._touch("a:" + key)
            return data, meta

    def put_artifact(self, key: str, data: bytes, meta: dict[str, Any]) -> None:
        """Store an artifact and its metadata under ``key`` (atomically, bytes before metadata)."""
        if not is_sha256(key):
            raise ValueError("artifact key must be a sha256")
        folder = self.root / "artifacts" / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        blob = json.dumps(meta, sort_keys=True, default=str).encode()
        tmps = []
        try:
            for content in (data, blob):
                fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", suffix=".part")
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                tmps.append(Path(tmp))
            with self._lock:
                os.replace(tmps[0], folder / f"{key}.bin")
                os.replace(tmps[1], folder / f"{key}.json")
                self._entries["a:" + key] = _Entry(
                    (folder / f"{key}.bin", folder / f"{key}.json"), len(data) + len(blob), 0)
                self._touch("a:" + key)
                self._evict()
        finally:
            for t in tmps:
                t.unlink(missing_ok=True)
