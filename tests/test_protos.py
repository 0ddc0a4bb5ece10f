"""The generated wire code is current, imports as a package, and round-trips the domain objects."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.rpc import wire
from device_agent.config import BuildConfig, MeasureConfig
from device_agent.core.result import Energy, LatencyStats, MeasureResult, Metric

ROOT = Path(__file__).resolve().parents[1]


def _tool_versions(folder: Path) -> tuple[str, str]:
    pb2 = (folder / "agent_pb2.py").read_text()
    grpc_py = (folder / "agent_pb2_grpc.py").read_text()
    proto_v = re.search(r"Protobuf Python Version: (\S+)", pb2)
    grpc_v = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_py)
    return (proto_v.group(1) if proto_v else "?", grpc_v.group(1) if grpc_v else "?")


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    from protos.generate import PROTO_FILES, generate

    produced = generate(tmp_path)
    assert len(produced) == 3 * len(PROTO_FILES)
    versions = [_tool_versions(d / "protos/hwnas/agent/v1") for d in (tmp_path, ROOT)]
    if versions[0] != versions[1]:
        pytest.skip(f"installed generator {versions[0]} differs from the one that made the committed "
                    f"code {versions[1]}: output text differs by version")
    for path in produced:  # every generated file of every proto
        rel = path.relative_to(tmp_path)
        assert path.read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run `python -m protos.generate`"


def test_grpc_module_imports_its_sibling_by_package_path():
    text = (ROOT / "protos/hwnas/agent/v1/agent_pb2_grpc.py").read_text()
    assert "from protos.hwnas.agent.v1 import agent_pb2" in text
    assert "\nimport agent_pb2" not in text


def test_generated_modules_import_from_an_installed_like_path(tmp_path):
    """Copy the package to a site-packages-like folder and import it from elsewhere."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "protos", site / "protos", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from protos.hwnas.agent.v1 import agent_pb2, agent_pb2_grpc;"
        "assert agent_pb2.__file__.startswith(sys.argv[1]), agent_pb2.__file__;"
        "assert agent_pb2_grpc.protos_dot_hwnas_dot_agent_dot_v1_dot_agent__pb2 is agent_pb2;"
        "s = agent_pb2.DESCRIPTOR.services_by_name['Agent'];"
        "print(s.full_name, sorted(m.name for m in s.methods))")
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 1)[0] == "hwnas.agent.v1.Agent"
    for m in ("Describe", "HasModel", "UploadModel", "Measure", "BuildEngine"):
        assert m in out.stdout


def test_configs_round_trip_and_defaults_fill_absent_fields():
    b = BuildConfig(backend="tensorrt", execution_provider="cuda", precision="fp16", intra_op_threads=0,
                    workspace_mb=2048)
    m = MeasureConfig(warmup_s=0.5, min_iterations=7, check_outputs=False, seed=3, energy=False)
    assert wire.build_from_pb(wire.build_to_pb(b)) == b
    assert wire.measure_from_pb(wire.measure_to_pb(m)) == m
    from protos.hwnas.agent.v1 import agent_pb2 as pb

    partial = pb.MeasureConfig(min_iterations=0)  # explicit zero is kept, absent fields default
    got = wire.measure_from_pb(partial)
    assert got.min_iterations == 0 and got.timeout_s == MeasureConfig().timeout_s


def test_result_round_trip():
    r = MeasureResult(
        job_id="j", device_key="dev", backend="onnxruntime", model_sha256="a" * 64,
        latency_ms=LatencyStats(median=1.5, mean=1.6, min=1.0, max=3.0, p90=2.0, p95=2.5, p99=2.9,
                                std=0.2, cv=0.1, count=100, ci_low=1.4, ci_high=1.7, method="host clock"),
        peak_memory_mb=Metric(12.5, "measured", "ru_maxrss", "MB"),
        energy=Energy(status="unavailable", method="no sensor"), flags=["unstable"],
        output_check={"ok": True, "max_abs_diff": 0.0}, layers=[{"name": "conv", "mean_ms": 0.1}],
        build_config=BuildConfig().to_dict(), measure_config=MeasureConfig().to_dict(),
        provenance={"cpu": "x", "n": math.pi})
    back = wire.result_from_pb(wire.result_to_pb(r))
    assert back == r
    failed = MeasureResult.failure(job_id="k", device_key="d", backend="onnxruntime", model_sha256="b" * 64,
                                   error="build: boom", error_kind="build")
    back = wire.result_from_pb(wire.result_to_pb(failed))
    assert back == failed and back.latency_ms is None and back.energy is None and not back.ok
    e = Energy(status="measured", method="nvml counter", value_mj=3.0, net_value_mj=1.0, avg_power_w=50.0,
               idle_power_w=30.0, window_s=5.0, iterations=100, rails={"VDD_IN": 5.0})
    r2 = MeasureResult(job_id="e", device_key="d", backend="tensorrt", model_sha256="c" * 64, energy=e)
    assert wire.result_from_pb(wire.result_to_pb(r2)).energy == e
