"""Device keys that name the device, read from sysfs-shaped trees written here (a Jetson's
device tree, nvpmodel status and L4T release; a plain CPU machine), and the agent's defaults
(``agent serve --backend/--precision``) in the key and for requests that name none."""
from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.config import BuildConfig
from device_agent.core.devicekey import (
    accelerator,
    describe_accelerator,
    device_key,
    jetson_model,
    l4t_release,
    power_mode,
    runtime_tag,
)
from device_agent.core.provenance import default_device_key

VERSIONS = {"onnxruntime": "1.20.1", "tensorrt": "10.3.0.30"}


def jetson_tree(root: Path, model: str, *, firmware_path: bool = False, pmode: int = 0) -> Path:
    rel = "sys/firmware/devicetree/base/model" if firmware_path else "proc/device-tree/model"
    (root / rel).parent.mkdir(parents=True)
    (root / rel).write_bytes(model.encode() + b"\x00")  # the device tree's strings end in NUL
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text(f"pmode:{pmode:04d}\n")
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n")
    return root


def test_jetson_modules_in_one_power_mode_get_different_keys(tmp_path):
    agx = jetson_tree(tmp_path / "agx", "NVIDIA Jetson AGX Orin Developer Kit")
    nano = jetson_tree(tmp_path / "nano", "NVIDIA Jetson Orin Nano Developer Kit", firmware_path=True)
    trt16 = BuildConfig(backend="tensorrt", precision="fp16")
    assert jetson_model(str(agx)) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert accelerator(str(nano)) == "NVIDIA Jetson Orin Nano Developer Kit"
    assert l4t_release(str(agx)) == "R36.3.0" and power_mode(str(agx)) == "mode0"
    keys = {default_device_key(trt16, root=str(r)) for r in (agx, nano)}
    # trt<version> is this machine's installed TensorRT ("trtunknown" where there is none)
    assert sorted(k.split("-trt")[0] for k in keys) == ["jetson-agx-orin-developer-kit",
                                                         "jetson-orin-nano-developer-kit"]
    assert all(k.endswith("-fp16-mode0") for k in keys)
    # the power mode and the precision are part of the key; nvpmodel's name wins over the id
    assert power_mode(str(agx), nvpmodel="MAXN") == "MAXN"
    k_fp32 = default_device_key(BuildConfig(backend="tensorrt"), root=str(agx))
    k_mode2 = default_device_key(trt16, root=str(jetson_tree(tmp_path / "agx2", "NVIDIA Jetson AGX Orin Developer Kit", pmode=2)))
    assert len({k_fp32, k_mode2, *keys}) == 4 and k_mode2.endswith("-fp16-mode2") and "-fp32-" in k_fp32
    assert describe_accelerator(str(agx)) == {"jetson_module": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "R36.3.0"}


def test_gpu_servers_with_the_same_cpu_differ_by_gpu():
    build = BuildConfig(execution_provider="cuda")
    a = device_key(cpu="Intel(R) Xeon(R) Gold 6240", accel="NVIDIA H100 80GB HBM3", build=build,
                   versions=VERSIONS, mode=None)
    b = device_key(cpu="Intel(R) Xeon(R) Gold 6240", accel="NVIDIA A100-SXM4-40GB", build=build,
                   versions=VERSIONS, mode=None)
    assert a == "h100-80gb-hbm3-ort1.20-cuda-fp32" and b == "a100-sxm4-40gb-ort1.20-cuda-fp32"
    assert runtime_tag(BuildConfig(backend="tensorrt"), VERSIONS) == "trt10.3"
    assert runtime_tag(BuildConfig(), {"onnxruntime-gpu": "1.19.2"}) == "ort1.19"


def test_cpu_only_key_is_unchanged(tmp_path):
    (tmp_path / "proc").mkdir()  # a tree without a device-tree model or nvpmodel status
    key = default_device_key(BuildConfig(precision="fp16"), root=str(tmp_path))
    assert key.startswith("cpu-") and key.endswith("-ort")
    assert device_key(cpu="Intel(R) Xeon(R) Gold 6240 CPU @ 2.60GHz", accel=None, build=BuildConfig(),
                      versions=VERSIONS, mode=None) == "cpu-intel-xeon-gold-6240-ort"


def test_serve_defaults_name_the_key_and_fill_requests(tmp_path):
    """``agent serve --precision fp16``: a request without a precision is built at fp16 (ONNX
    Runtime converts the model); one that asks fp32 gets fp32. Where the CPU provider has no fp16
    kernels (x86) it runs the fp16 graph in fp32, and the job fails saying so."""
    from _agent_util import FAST, running_agent, tiny_cnn_onnx
    from device_agent.rpc.client import AgentClient

    with running_agent(tmp_path, precision="fp16") as (server, address):
        with AgentClient(address) as client:
            r16 = client.measure(tiny_cnn_onnx(), build=None, measure=FAST)
            r32 = client.measure(tiny_cnn_onnx(), build={"precision": "fp32"}, measure=FAST)
    assert r16.build_config["precision"] == "fp16"
    assert (r16.ok and r16.provenance["precision_obtained"] == "fp16") or (
        r16.error_kind == "build" and "fp16 was not obtained: the build gave fp32" in r16.error), r16.error
    assert r32.ok and r32.provenance["precision_obtained"] == "fp32"
