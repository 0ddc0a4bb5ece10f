"""Backends that compile and run a model on a device (registered, imported lazily)."""
from __future__ import annotations

from device_agent.backends.base import (
    BACKENDS,
    Backend,
    BackendError,
    BackendUnavailable,
    BuildError,
    Runner,
    TensorSpec,
    UnsupportedError,
    get_backend,
    list_backends,
    register_backend,
)

__all__ = [
    "BACKENDS", "Backend", "BackendError", "BackendUnavailable", "BuildError", "Runner",
    "TensorSpec", "UnsupportedError", "get_backend", "list_backends", "register_backend",
]
