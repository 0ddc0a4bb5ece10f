"""One registry helper for every pluggable kind: search spaces, algorithms, backends, sensors.

A :class:`PluginRegistry` maps names to classes. Built-in entries are listed as a lazy module
map (``name -> module``) and imported on first use, so a package imports without the optional
libraries its plugins need (TensorRT, pynvml, Optuna). Third-party or test plugins register with
the :meth:`PluginRegistry.register` decorator. Every listing (CLI choices, ``Describe``, the
conformance suites) enumerates :meth:`PluginRegistry.names` and :meth:`PluginRegistry.availability`.

It lives in ``device_agent`` because the agent installs without the search side; the search
side imports it from here.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Mapping, TypeVar

T = TypeVar("T", bound=type)


class PluginUnavailable(RuntimeError):
    """A known plugin whose module cannot be imported here (a missing optional library)."""


class UnknownPlugin(ValueError):
    """A name that no module map or registration knows."""


class PluginRegistry(Generic[T]):
    """Named classes of one kind, registered by decorator or imported lazily by name.

    ``kind`` names the kind in messages (``"backend"``); ``base`` (optional) is the class every
    registered entry must subclass; ``modules`` maps built-in names to the modules that register
    them. A registered class gets its registry name as ``cls.name``.
    """

    def __init__(self, kind: str, *, base: type | None = None,
                 modules: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._base = base
        self._modules: dict[str, str] = dict(modules or {})
        self._classes: dict[str, T] = {}
        self._import_errors: dict[str, str] = {}

    # ------------------------------------------------------------------------- registration
    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register ``cls`` under ``name``."""

        def deco(cls: T) -> T:
            if self._base is not None and not (isinstance(cls, type) and issubclass(cls, self._base)):
                raise TypeError(f"register {self.kind} {name!r}: expected a {self._base.__name__} subclass")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return deco

    # ------------------------------------------------------------------------------ look-up
    def _load(self, name: str) -> str | None:
        """Import the module of ``name`` if needed; the failure reason, or None."""
        if name in self._classes:
            return None
        if name in self._import_errors:
            return self._import_errors[name]
        module = self._modules.get(name)
        if module is None:
            return None
        try:
            importlib.import_module(module)
        except ImportError as exc:  # the optional library is absent
            reason = f"cannot import {module}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken install shows as unavailable
            reason = f"error importing {module}: {type(exc).__name__}: {exc}"
        else:
            reason = None if name in self._classes else f"module {module} registered nothing"
        if reason is not None:
            self._import_errors[name] = reason
        return reason

    def names(self) -> list[str]:
        """Every known name (built-in module map and registrations), sorted; imports nothing."""
        return sorted(set(self._modules) | set(self._classes))

    def get(self, name: str) -> T:
        """The class registered as ``name``, importing its module on first use.

        Raises :class:`UnknownPlugin` (a ``ValueError``) for a name nobody knows and
        :class:`PluginUnavailable` when its module cannot be imported here.
        """
        if name not in self._modules and name not in self._classes:
            raise UnknownPlugin(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        reason = self._load(name)
        if name not in self._classes:
            raise PluginUnavailable(f"{self.kind} {name!r} unavailable: {reason}")
        return self._classes[name]

    def loaded(self) -> dict[str, T]:
        """Every class that can be imported here, by name (imports the built-in modules)."""
        out: dict[str, T] = {}
        for name in self.names():
            if self._load(name) is None and name in self._classes:
                out[name] = self._classes[name]
        return out

    def availability(self, name: str, **options) -> tuple[bool, str]:
        """``(available, reason)`` for ``name``; never raises.

        Imports the module, then asks the class's own ``availability(**options)`` classmethod
        when it has one (a backend's runtime library, a sensor's device file).
        """
        try:
            cls = self.get(name)
        except (UnknownPlugin, PluginUnavailable) as exc:
            return False, str(exc)
        check = getattr(cls, "availability", None)
        if check is None:
            return True, "available"
        try:
            ok, reason = check(**options)
        except Exception as exc:  # noqa: BLE001 - a broken check must not stop a listing
            return False, f"availability check failed: {type(exc).__name__}: {exc}"
        return bool(ok), str(reason)

    def list(self, **options) -> dict[str, tuple[bool, str]]:
        """Every known name -> ``(available, reason)``; never raises."""
        return {name: self.availability(name, **options) for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._modules or name in self._classes
