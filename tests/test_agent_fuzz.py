"""Fuzz: >= 1,000 seeded mutants of a small valid ONNX model sent to a running agent.

Byte flips, truncations, moved/inserted bytes and structured field edits. Each mutant must get
a result (a value, possibly with ``error_kind``) or a clean status (never INTERNAL/UNKNOWN), and
the agent must still answer Describe and measure a good model afterwards. Most mutants fail the
agent's validation before any job starts, so the test stays fast; the valid ones run real jobs.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import random
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from device_agent import errors
from device_agent.rpc.status import status_of
from device_agent.rpc.client import AgentClient
from device_agent.config import MeasureConfig
from _agent_util import running_agent

pytestmark = pytest.mark.timeout(300)

N_MUTANTS = 1000
SEED = 20241125
ERROR_KINDS = {"invalid_model", "build", "run", "output_mismatch", "timeout", "oom", "crash",
               "cancelled", "unsupported"}
CLEAN_CODES = {"INVALID_ARGUMENT", "DATA_LOSS", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
FUZZ_MEASURE = MeasureConfig(warmup_s=0.0, min_iterations=2, min_duration_s=0.0, max_duration_s=0.2,
                             cv_threshold=10.0, check_outputs=False, energy=False, timeout_s=10.0,
                             memory_limit_mb=1024)


def base_model() -> onnx.ModelProto:
    """Conv(1x1) -> Relu -> MaxPool -> ReduceMean: tiny weights, so flips mostly hit structure."""
    w = nh.from_array(np.array([[[[0.5]]], [[[-1.0]]]], np.float32), "W")
    b = nh.from_array(np.array([0.1, 0.2], np.float32), "B")
    nodes = [h.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("ReduceMean", ["p"], ["y"], axes=[2, 3], keepdims=0)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 2])], [w, b])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


# ---- structured field edits (each returns a mutated copy)
def _edit(rng: random.Random, m: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto.FromString(m.SerializeToString())
    g = m.graph
    node = rng.choice(g.node)
    edits: list[Callable[[], None]] = [
        lambda: setattr(node, "op_type", rng.choice(["Conv2", "", "Relu", "Softmax", "MatMul", "Loop", "ÿ"])),
        lambda: node.input.__setitem__(0, rng.choice(["nope", "", "y", node.output[0]])),
        lambda: node.output.__setitem__(0, rng.choice(["x", "W", "c", "r", ""])),
        lambda: setattr(m.opset_import[0], "version", rng.choice([0, 1, 6, 99, 2**40])),
        lambda: setattr(m.opset_import[0], "domain", rng.choice(["com.evil", "ai.onnx.ml", "x"])),
        lambda: setattr(m, "ir_version", rng.choice([0, 1, 3, 99, -1])),
        lambda: g.input[0].type.tensor_type.shape.dim[rng.randrange(4)].__setattr__(
            "dim_value", rng.choice([0, -1, 3, 7, 2**31, 2**40])),
        lambda: g.input[0].type.tensor_type.__setattr__("elem_type", rng.choice([0, 2, 7, 11, 16, 99])),
        lambda: g.initializer[0].dims.__setitem__(0, rng.choice([0, 3, 2**20, 2**40])),
        lambda: setattr(g.initializer[rng.randrange(2)], "raw_data", rng.randbytes(rng.choice([0, 3, 4, 12]))),
        lambda: setattr(g.initializer[0], "data_type", rng.choice([0, 7, 10, 99])),
        lambda: _external(g.initializer[rng.randrange(2)], rng),
        lambda: node.attribute.add().CopyFrom(h.make_attribute(rng.choice(["kernel_shape", "pads", "zz"]),
                                                               rng.choice([[0, 0], [9, 9], [-1], 3]))),
        lambda: g.node.remove(node),
        lambda: g.node.append(onnx.NodeProto.FromString(node.SerializeToString())),
        lambda: g.ClearField("output"),
        lambda: g.ClearField("input"),
        lambda: g.node.reverse(),
        lambda: g.initializer.add().CopyFrom(nh.from_array(np.zeros(rng.choice([1, 5]), np.float32), "W")),
        lambda: setattr(g.initializer[0], "raw_data", np.array([[[[rng.uniform(-9, 9)]]],
                                                                [[[rng.uniform(-9, 9)]]]], np.float32).tobytes()),
    ]
    rng.choice(edits)()
    return m


def _external(t: onnx.TensorProto, rng: random.Random) -> None:
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    for k, v in (("location", rng.choice(["/etc/passwd", "../../w.bin", "w.bin"])), ("length", "8")):
        e = t.external_data.add()
        e.key, e.value = k, v


def mutants(n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` distinct seeded mutants of the base model, each with the kind of mutation."""
    rng = random.Random(seed)
    base = base_model()
    data = base.SerializeToString()
    seen = {hashlib.sha256(data).digest()}
    out: list[tuple[str, bytes]] = []
    while len(out) < n:
        k = rng.random()
        d = bytearray(data)
        if k < 0.40:
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(d))
                d[i] ^= rng.randint(1, 255)
            kind, blob = "flip", bytes(d)
        elif k < 0.60:
            kind, blob = "truncate", bytes(d[:rng.randrange(1, len(d))])
        elif k < 0.70:
            i = rng.randrange(len(d))
            if rng.random() < 0.5:
                kind, blob = "insert", bytes(d[:i] + rng.randbytes(rng.randint(1, 16)) + d[i:])
            else:
                j = rng.randrange(i, len(d) + 1)
                kind, blob = "move", bytes(d[:i] + d[j:] + d[i:j])
        else:
            kind, blob = "edit", _edit(rng, base).SerializeToString()
        digest = hashlib.sha256(blob).digest()
        if blob and digest not in seen:
            seen.add(digest)
            out.append((kind, blob))
    return out


def test_mutants_are_generated_reproducibly():
    a, b = mutants(50, SEED), mutants(50, SEED)
    assert a == b and len({blob for _, blob in a}) == 50
    assert {kind for kind, _ in mutants(200, SEED)} == {"flip", "truncate", "insert", "move", "edit"}


def test_fuzzed_models_get_results_or_clean_errors(tmp_path):
    cases = mutants(N_MUTANTS, SEED)
    outcomes: collections.Counter[str] = collections.Counter()
    with running_agent(tmp_path, queue_size=16) as (server, addr), AgentClient(addr, timeout=30) as client:
        def send(case: tuple[str, bytes]) -> str:
            kind, blob = case
            try:
                r = client.measure(blob, job_id=f"fuzz-{kind}", measure=FUZZ_MEASURE, timeout=60)
            except errors.AgentError as exc:
                assert status_of(exc).name in CLEAN_CODES, f"{kind}: {exc}"
                return f"status:{status_of(exc).name}"
            assert r.model_sha256 == hashlib.sha256(blob).hexdigest()
            if r.ok:
                assert r.latency_ms is not None and r.latency_ms.count >= 1
                return "ok"
            assert r.error_kind in ERROR_KINDS and r.error, (kind, r.error_kind, r.error)
            return f"error:{r.error_kind}"

        with cf.ThreadPoolExecutor(4) as ex:
            for outcome in ex.map(send, cases):
                outcomes[outcome] += 1

        assert sum(outcomes.values()) == N_MUTANTS
        assert outcomes["error:invalid_model"] > N_MUTANTS // 2  # most stop at validation
        assert client.health() == "SERVING"
        info = client.describe()
        assert info["device_key"] and info["limits"]["queue_depth"] == 0
        good = client.measure(base_model().SerializeToString(), job_id="after-fuzz", measure=FUZZ_MEASURE)
        assert good.ok, good.error
    print("fuzz outcomes:", dict(outcomes))
