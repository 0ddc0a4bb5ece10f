"""device_agent.plugins.PluginRegistry: lazy module map, decorator, look-up, availability."""
from __future__ import annotations

import sys
import types

import pytest

from device_agent.backends import BACKENDS, Backend
from device_agent.plugins import PluginRegistry, PluginUnavailable, UnknownPlugin
from device_agent.sensors import SENSORS


class Base:
    """A base class for the registry under test."""


def test_register_get_names_and_lazy_import(tmp_path, monkeypatch):
    reg = PluginRegistry("widget", base=Base, modules={"lazy": "_hwnas_test_lazy_widget"})
    # a real module file that registers on import, found through sys.path
    monkeypatch.setitem(sys.modules, "_hwnas_test_registry", types.SimpleNamespace(reg=reg, Base=Base))
    (tmp_path / "_hwnas_test_lazy_widget.py").write_text(
        "import _hwnas_test_registry as r\n\n\n"
        "@r.reg.register('lazy')\n"
        "class Lazy(r.Base):\n"
        "    @classmethod\n"
        "    def availability(cls, *, root='/'):\n"
        "        return root == '/', f'root={root}'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "_hwnas_test_lazy_widget", raising=False)

    @reg.register("eager")
    class Eager(Base):
        pass

    assert Eager.name == "eager"
    assert reg.names() == ["eager", "lazy"] and "lazy" in reg and "nope" not in reg
    assert "_hwnas_test_lazy_widget" not in sys.modules  # names() imports nothing
    lazy = reg.get("lazy")
    assert lazy.name == "lazy" and issubclass(lazy, Base)
    assert reg.availability("lazy") == (True, "root=/")
    assert reg.availability("lazy", root="/x") == (False, "root=/x")
    assert reg.availability("eager") == (True, "available")  # no check: available
    assert set(reg.loaded()) == {"eager", "lazy"}
    with pytest.raises(UnknownPlugin, match="unknown widget 'nope'; known: eager, lazy"):
        reg.get("nope")
    assert isinstance(UnknownPlugin("x"), ValueError)
    with pytest.raises(TypeError, match="Base subclass"):
        reg.register("bad")(int)


def test_unimportable_module_is_unavailable_with_the_reason():
    reg = PluginRegistry("widget", modules={"gone": "_hwnas_no_such_module_xyz"})
    with pytest.raises(PluginUnavailable, match="widget 'gone' unavailable: cannot import"):
        reg.get("gone")
    ok, reason = reg.availability("gone")
    assert not ok and "_hwnas_no_such_module_xyz" in reason
    assert reg.list() == {"gone": (False, reason)} and reg.loaded() == {}
    assert isinstance(PluginUnavailable("x"), RuntimeError)


def test_a_broken_availability_check_is_reported_not_raised():
    reg = PluginRegistry("widget")

    @reg.register("broken")
    class Broken:
        @classmethod
        def availability(cls):
            raise OSError("device file vanished")

    assert reg.list() == {"broken": (False, "availability check failed: OSError: device file vanished")}


def test_agent_registries_use_it():
    assert {"onnxruntime", "tensorrt"} <= set(BACKENDS.names())
    assert BACKENDS.get("onnxruntime").name == "onnxruntime" and issubclass(BACKENDS.get("onnxruntime"), Backend)
    assert set(SENSORS.names()) >= {"nvml", "jetson", "rapl", "none"}
    assert SENSORS.availability("none")[0] is True
