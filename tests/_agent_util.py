"""Helpers shared by the agent tests: a tiny real CNN as ONNX, fast settings, an agent on port 0."""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from device_agent.config import MeasureConfig
from device_agent.settings import DaemonSettings
from device_agent.rpc.server import AgentServer, create_server

#: A measurement config that keeps a job well under a second on a busy 2-core machine.
FAST = MeasureConfig(warmup_s=0.0, min_iterations=5, min_duration_s=0.0, max_duration_s=0.5,
                     cv_threshold=10.0, check_outputs=True, energy=False, timeout_s=30.0)


@functools.lru_cache(maxsize=None)
def tiny_cnn_onnx(channels: int = 4) -> bytes:
    """A small torch CNN exported to ONNX (opset 17, legacy exporter)."""
    import torch

    torch.manual_seed(channels)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 8, 8), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"])
    return buf.getvalue()


@contextlib.contextmanager
def running_agent(tmp_path: Path, **settings: Any) -> Iterator[tuple[AgentServer, str]]:
    """An agent server on 127.0.0.1:0 with a cache under ``tmp_path``; yields (server, address)."""
    settings.setdefault("cache_dir", str(tmp_path / "agent-cache"))
    settings.setdefault("drain_grace_s", 0.0)
    server, port = create_server("127.0.0.1:0", config=DaemonSettings(**settings))
    server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.shutdown(grace_s=0.0)


def external_data_onnx(location: str = "weights.bin") -> bytes:
    """The tiny CNN with its largest initializer moved to (unread) external data."""
    import onnx
    from onnx import TensorProto as T

    m = onnx.load_from_string(tiny_cnn_onnx())
    init = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    init.ClearField("raw_data")
    init.data_location = T.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "1024")):
        e = init.external_data.add()
        e.key, e.value = k, v
    return m.SerializeToString()


#: per-op cost of :func:`write_nb201_table`'s synthetic latency
NB201_COST = {"none": 0.0, "skip_connect": 0.01, "nor_conv_1x1": 0.3, "avg_pool_3x3": 0.12, "nor_conv_3x3": 1.1}


def write_nb201_table(path: Path, seed: int = 7) -> dict[str, tuple[float, float]]:
    """Write a NAS-Bench-201-shaped table (gzip CSV: ``arch_str``, ``acc`` in percent as
    NAS-Bench-201 reports it, ``lat_synth`` in ms from per-op costs) for all 15,625 cells, so
    that table-backed searches run without the shared data; return {arch_str: (acc, lat)}."""
    import csv
    import gzip
    import itertools

    import numpy as np

    from search.spaces.nb201 import OPS

    rng = np.random.default_rng(seed)
    rows: dict[str, tuple[float, float]] = {}
    for ops in itertools.product(OPS, repeat=6):
        cost = sum(NB201_COST[o] for o in ops)
        acc = 60.0 + 30.0 * (1 - np.exp(-cost)) + rng.normal(0, 1.5)  # slower cells tend to be better
        arch = f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"
        rows[arch] = (round(float(acc), 4), round(0.5 + 3 * cost + float(rng.uniform(0, 0.05)), 6))
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch_str", "acc", "lat_synth"])
        for a, (acc, lat) in rows.items():
            w.writerow([a, acc, lat])
    return rows
