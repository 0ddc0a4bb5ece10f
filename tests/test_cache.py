"""The content-addressed cache: atomic writes, sha256 checks, LRU eviction, restart, pins."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from device_agent.core.cache import ContentCache, artifact_key
from device_agent.errors import ChecksumMismatch, InvalidRequest


def _blob(i: int, size: int = 1000) -> bytes:
    return bytes([i % 251]) * size


def test_put_get_and_restart(tmp_path):
    c = ContentCache(root=tmp_path, max_bytes=10_000)
    sha, path = c.put_model(_blob(1))
    assert sha == hashlib.sha256(_blob(1)).hexdigest() and path.read_bytes() == _blob(1)
    assert c.model_size(sha) == 1000 and c.total_bytes == 1000
    key = artifact_key(model_sha256=sha, backend="onnxruntime", versions={"onnxruntime": "1"}, build={"a": 1})
    c.put_artifact(key, b"engine", {"provenance": {"x": 1}})
    c2 = ContentCache(root=tmp_path, max_bytes=10_000)  # a restarted agent
    assert c2.model_path(sha) == path and c2.get_artifact(key) == (b"engine", {"provenance": {"x": 1}})
    assert c2.total_bytes == c.total_bytes


def test_artifact_key_changes_with_every_part():
    base = dict(model_sha256="a" * 64, backend="tensorrt", versions={"tensorrt": "10.3"},
                build={"precision": "fp16"}, device_key="orin")
    k = artifact_key(**base)
    for change in (dict(model_sha256="b" * 64), dict(backend="onnxruntime"), dict(versions={"tensorrt": "10.4"}),
                   dict(build={"precision": "fp32"}), dict(device_key="a100")):
        assert artifact_key(**{**base, **change}) != k
    assert artifact_key(**base) == k


def test_streamed_writes_are_checked_and_atomic(tmp_path):
    c = ContentCache(root=tmp_path, max_bytes=10_000)
    data = _blob(2)
    sha = hashlib.sha256(data).hexdigest()
    w = c.model_writer(sha, len(data))
    w.write(data[:500])
    assert c.model_size(sha) is None and not list((tmp_path / "models").rglob("*.onnx"))  # nothing visible
    w.write(data[500:])
    w.commit()
    assert c.model_path(sha).read_bytes() == data

    wrong = "0" * 64
    w = c.model_writer(wrong, len(data))
    w.write(data)
    with pytest.raises(ChecksumMismatch):
        w.commit()
    w = c.model_writer(sha, 10)
    with pytest.raises(InvalidRequest):
        w.write(data)
    w.abort()
    w = c.model_writer(hashlib.sha256(b"x" * 20).hexdigest(), 20)
    w.write(b"x" * 10)
    with pytest.raises(InvalidRequest):
        w.commit()  # short
    with pytest.raises(InvalidRequest):
        c.model_writer("not-a-sha", 1)
    assert c.model_size(wrong) is None and list((tmp_path / "tmp").iterdir()) == []


def test_partial_files_are_removed_at_start(tmp_path):
    c = ContentCache(root=tmp_path, max_bytes=10_000)
    w = c.model_writer(hashlib.sha256(_blob(3)).hexdigest(), 1000)
    w.write(_blob(3)[:100])  # "crash" here: the .part file stays behind
    assert list((tmp_path / "tmp").iterdir())
    ContentCache(root=tmp_path, max_bytes=10_000)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_lru_eviction_order_persists_and_pins_protect(tmp_path):
    c = ContentCache(root=tmp_path, max_bytes=3000)
    shas = [c.put_model(_blob(i))[0] for i in range(3)]
    c.model_path(shas[0])  # use the oldest: it becomes the most recent
    c.put_model(_blob(3))  # over the limit: the least recently used (shas[1]) goes
    assert c.model_size(shas[1]) is None
    assert all(c.model_size(s) for s in (shas[0], shas[2]))
    assert c.total_bytes <= 3000

    # the order survives a restart (mtime is the last use)
    time.sleep(0.01)
    c.model_path(shas[2])
    c2 = ContentCache(root=tmp_path, max_bytes=3000)
    c2.put_model(_blob(4))
    assert c2.model_size(shas[0]) is None and c2.model_size(shas[2]) == 1000

    # a pinned model is never evicted, even when it is the least recently used
    c3 = ContentCache(root=tmp_path, max_bytes=2000)
    oldest = min(c3._entries, key=lambda k: c3._entries[k].used_ns)[2:]
    with c3.pin_model(oldest) as path:
        assert path is not None
        c3.put_model(_blob(5))
        assert path.exists()
    assert c3.model_size(oldest) == 1000 and c3.model_size(shas[2]) is None and c3.total_bytes == 2000


def test_model_larger_than_the_cache_is_kept_until_the_next_insert(tmp_path):
    c = ContentCache(root=tmp_path, max_bytes=500)
    sha, path = c.put_model(_blob(6))
    assert path.exists()  # the job needs it now
    c.put_model(_blob(7, 100))
    assert c.model_size(sha) is None and c.total_bytes == 100


def test_corrupt_artifact_metadata_is_a_miss(tmp_path):
    c = ContentCache(root=tmp_path, max_bytes=10_000)
    key = "c" * 64
    c.put_artifact(key, b"plan", {"a": 1})
    meta = tmp_path / "artifacts" / key[:2] / f"{key}.json"
    meta.write_text("{not json")
    assert c.get_artifact(key) is None and not meta.exists()
    os.makedirs(tmp_path / "artifacts" / "dd", exist_ok=True)
    (tmp_path / "artifacts" / "dd" / ("d" * 64 + ".bin")).write_bytes(b"orphan")  # no metadata
    c2 = ContentCache(root=tmp_path, max_bytes=10_000)
    assert c2.get_artifact("d" * 64) is None
