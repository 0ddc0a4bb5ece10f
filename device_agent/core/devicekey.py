"""Device keys that name the device: accelerator, runtime and version, precision, power mode.

Two machines share a key only when their measurements are interchangeable, so the key names
what decides the numbers:

    <accelerator>-<runtime><version>-<precision>[-<power mode>]   e.g.
    jetson-agx-orin-developer-kit-trt10.3-fp16-maxn, nvidia-h100-80gb-hbm3-ort1.20-cuda-fp32

- accelerator: the Jetson module from the device tree (``/proc/device-tree/model`` or
  ``/sys/firmware/devicetree/base/model``, NUL-terminated), else the first GPU's name through
  NVML (``nvmlDeviceGetName``; ``nvidia-ml-py``, imported lazily);
- runtime: ``trt<major.minor>`` for the TensorRT backend, ``ort<major.minor>[-cuda|-trt]`` for
  ONNX Runtime and its execution provider;
- precision: the build's requested precision (the agent's default, ``agent serve --precision``);
- power mode: Jetson ``nvpmodel -q`` (else ``/var/lib/nvpmodel/status``, ``pmode:0002`` ->
  ``mode2``).

A machine without an accelerator keeps the CPU key: ``cpu-<cpu model>-ort[-<power mode>]``.
Every reader takes ``root`` so tests can point it at a sysfs-shaped tree.
"""
from __future__ import annotations

import os
import re
from typing import Any

from device_agent.config import BuildConfig

DEVICE_TREE_MODELS = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
NVPMODEL_STATUS = "var/lib/nvpmodel/status"
TEGRA_RELEASE = "etc/nv_tegra_release"


def slug(text: str) -> str:
    """Lower-case words joined by ``-`` (trademarks, "processor", clock suffix dropped)."""
    text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\d+-core", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def _read(root: str, rel: str) -> str | None:
    try:
        with open(os.path.join(root, rel), "rb") as f:
            return f.read().replace(b"\x00", b"").decode(errors="replace").strip() or None
    except OSError:
        return None


def jetson_model(root: str = "/") -> str | None:
    """The board/module name from the device tree (e.g. ``NVIDIA Jetson AGX Orin Developer Kit``)."""
    for rel in DEVICE_TREE_MODELS:
        model = _read(root, rel)
        if model:
            return model
    return None


def l4t_release(root: str = "/") -> str | None:
    """``/etc/nv_tegra_release`` -> ``R36.3.0`` (the L4T release under JetPack), or None."""
    text = _read(root, TEGRA_RELEASE)
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def nvml_gpu() -> dict[str, str] | None:
    """First GPU's name and driver version through NVML, or None (no NVML, no GPU)."""
    try:
        import pynvml  # nvidia-ml-py, lazily
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded / ...
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        driver = pynvml.nvmlSystemGetDriverVersion()
        as_text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731 - older bindings give bytes
        return {"name": as_text(name), "driver": as_text(driver)}
    except Exception:  # noqa: BLE001 - a GPU that NVML cannot read names nothing
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def accelerator(root: str = "/", *, gpu: dict[str, str] | None = None) -> str | None:
    """The accelerator's name: the Jetson module, else the NVML GPU (``gpu``: already read)."""
    model = jetson_model(root)
    if model:
        return model
    gpu = gpu if gpu is not None else (nvml_gpu() if root == "/" else None)
    return gpu["name"] if gpu else None


def power_mode(root: str = "/", *, nvpmodel: str | None = None) -> str | None:
    """Jetson power mode: ``nvpmodel -q``'s name when given, else the status file's id."""
    if nvpmodel:
        return nvpmodel
    m = re.search(r"pmode:0*(\d+)", _read(root, NVPMODEL_STATUS) or "")
    return f"mode{m.group(1)}" if m else None


def runtime_tag(build: BuildConfig, versions: dict[str, str]) -> str:
    """``trt10.3`` / ``ort1.20`` / ``ort1.20-cuda``: the runtime that times the model."""
    def short(v: str | None) -> str:
        return ".".join((v or "unknown").split(".")[:2])

    if build.backend == "tensorrt":
        return f"trt{short(versions.get('tensorrt'))}"
    ort = short(versions.get("onnxruntime-gpu") or versions.get("onnxruntime"))
    ep = {"cuda": "-cuda", "tensorrt": "-trt"}.get(build.execution_provider, "")
    return f"ort{ort}{ep}"


def device_key(*, cpu: str, accel: str | None, build: BuildConfig, versions: dict[str, str],
               mode: str | None) -> str:
    """The key (module docstring) from what was read."""
    suffix = f"-{slug(mode)}" if mode else ""
    if not accel:
        return f"cpu-{slug(cpu)}-ort{suffix}"  # the CPU key as before: one runtime, fp32
    return f"{slug(accel.removeprefix('NVIDIA '))}-{runtime_tag(build, versions)}-{build.precision}{suffix}"


def describe_accelerator(root: str = "/") -> dict[str, Any]:
    """Accelerator facts for the provenance: module/GPU name, driver, L4T release."""
    out: dict[str, Any] = {}
    model = jetson_model(root)
    if model:
        out["jetson_module"] = model
    rel = l4t_release(root)
    if rel:
        out["l4t"] = rel
    gpu = nvml_gpu() if root == "/" else None
    if gpu:
        out["gpu"], out["driver"] = gpu["name"], gpu["driver"]
    return out
