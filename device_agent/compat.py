"""Shims that keep the agent on Python 3.10 (JetPack 6): ``tomllib`` and file hashing.

The agent's minimum Python is 3.10 (``tests/test_min_python.py`` checks it statically), while
``tomllib`` and ``hashlib.file_digest`` are 3.11+. Import them from here, never directly.
"""
from __future__ import annotations

import hashlib
import sys
from typing import BinaryIO

if sys.version_info >= (3, 11):
    import tomllib
else:  # the ``tomli`` package is the same parser (a conditional dependency in pyproject.toml)
    import tomli as tomllib

__all__ = ["tomllib", "sha256_stream"]

_CHUNK = 1 << 20


def sha256_stream(f: BinaryIO) -> str:
    """Hex sha256 of a binary file object read to its end (``hashlib.file_digest`` on 3.10)."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(_CHUNK), b""):
        h.update(block)
    return h.hexdigest()
