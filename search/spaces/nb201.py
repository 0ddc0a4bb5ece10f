"""The NAS-Bench-201 (NATS-Bench topology) cell space, built exactly as NAS-Bench-201 builds it.

A genome is the operation on each of the cell's six edges, in NAS-Bench-201's edge order
``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``; its text form is the benchmark's architecture string::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

(``op~j`` is the edge from node ``j``; ``+`` separates the nodes 1, 2 and 3). JSON form:
``{"arch": "<that string>"}``.

The network follows ``xautodl/models/cell_infers/tiny_network.py`` (``TinyNetwork``),
``cells.py`` (``InferCell``) and ``cell_operations.py`` of D-X-Y/AutoDL-Projects: a 3x3 stem
conv (no bias) + BN with ``C`` channels; three stages of ``N`` cells with ``C``, ``2C``, ``4C``
channels, separated by a stride-2 ``ResNetBasicblock`` (ReLU-conv3x3-BN twice; shortcut 2x2
average pool + 1x1 conv); then BN + ReLU, global average pooling and a linear classifier.
Edge operations: ``none`` (multiply by 0, kept in the graph as in the original),
``skip_connect`` (identity), ``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU-conv-BN),
``avg_pool_3x3`` (3x3 average pool, stride 1, padding 1, ``count_include_pad=False``).
With ``C=16, N=5``, 3 input channels and 10 classes the parameter counts are the published
CIFAR-10 ones. The stem takes ``task.in_channels`` instead of NAS-Bench-201's fixed 3.

The two stride-2 blocks need a resolution divisible by 4: :meth:`NB201Space.input_shape` rounds
the task's image size up to a multiple of 4 (the trainer resizes images to ``input_shape``).
"""
from __future__ import annotations

import functools
import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from search.spaces.base import SearchSpace, TaskSpec, register_space

#: NAS-Bench-201's operation list, in its own order (``NAS_BENCH_201`` in cell_operations.py).
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (to_node, from_node) of the six edges, in the order of the architecture string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_ARCHS = len(OPS) ** len(EDGES)  # 15,625

#: Where the shared NAS-Bench-201 table lives unless ``HWNAS_NB201_TABLE`` says otherwise.
DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nb201" / "nb201_tables.csv.gz"


@dataclass(frozen=True)
class NB201Genome:
    """The operation on each of the six edges (see :data:`EDGES` for their order)."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.ops, tuple) or len(self.ops) != len(EDGES):
            raise ValueError(f"a NAS-Bench-201 genome has {len(EDGES)} edge operations, got {self.ops!r}")
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown NAS-Bench-201 operation {op!r}; known: {', '.join(OPS)}")

    def to_str(self) -> str:
        """The NAS-Bench-201 architecture string."""
        nodes: list[list[str]] = [[], [], []]
        for (to, frm), op in zip(EDGES, self.ops):
            nodes[to - 1].append(f"{op}~{frm}")
        return "+".join("|" + "|".join(node) + "|" for node in nodes)

    @classmethod
    def from_str(cls, arch: str) -> "NB201Genome":
        """Parse a NAS-Bench-201 architecture string; raises ``ValueError`` if malformed."""
        if not isinstance(arch, str):
            raise ValueError(f"NAS-Bench-201 architecture must be a string, got {type(arch).__name__}")
        node_strs = arch.strip().split("+")
        if len(node_strs) != 3:
            raise ValueError(f"expected 3 nodes separated by '+', got {len(node_strs)} in {arch!r}")
        found: dict[tuple[int, int], str] = {}
        for to, node_str in enumerate(node_strs, start=1):
            if not (node_str.startswith("|") and node_str.endswith("|")):
                raise ValueError(f"node {to} of {arch!r} must be written |op~j|...|")
            for item in filter(None, node_str.split("|")):
                op, sep, frm = item.partition("~")
                if not sep or not frm.isdigit():
                    raise ValueError(f"malformed edge {item!r} in {arch!r} (expected op~j)")
                edge = (to, int(frm))
                if edge not in EDGES:
                    raise ValueError(f"node {to} has no input {frm} in NAS-Bench-201 ({arch!r})")
                if edge in found:
                    raise ValueError(f"edge {frm}->{to} given twice in {arch!r}")
                found[edge] = op
        missing = [e for e in EDGES if e not in found]
        if missing:
            raise ValueError(f"edges {missing} missing in {arch!r}")
        return cls(tuple(found[e] for e in EDGES))


def ordinal(genome: NB201Genome) -> int:
    """Position of ``genome`` in the lexicographic enumeration of :func:`all_genomes`
    (base-5 number of the edge ops in :data:`OPS` order; not NAS-Bench-201's index)."""
    n = 0
    for op in genome.ops:
        n = n * len(OPS) + OPS.index(op)
    return n


def all_genomes() -> Iterator[NB201Genome]:
    """All 15,625 cells, in :func:`ordinal` order."""
    for ops in itertools.product(OPS, repeat=len(EDGES)):
        yield NB201Genome(ops)


@functools.lru_cache(maxsize=4)
def _load_index(path: str) -> dict[str, int]:
    import csv
    import gzip

    with gzip.open(path, "rt", newline="") as f:
        table = {row["arch_str"]: int(row["arch_idx"]) for row in csv.DictReader(f)}
    if len(table) != NUM_ARCHS:
        raise ValueError(f"{path} lists {len(table)} architectures, expected {NUM_ARCHS}")
    return table


@register_space("nb201")
class NB201Space(SearchSpace):
    """NAS-Bench-201 cells; ``C`` and ``N`` default to the published 16 and 5 (smaller for tests).

    ``table_path`` locates the shared table that maps architecture strings to NAS-Bench-201's
    own indices (default: ``$HWNAS_NB201_TABLE`` or ``../shared/data/nb201/nb201_tables.csv.gz``
    next to the project).
    """

    def __init__(self, *, C: int = 16, N: int = 5, table_path: str | os.PathLike[str] | None = None) -> None:
        if C < 1 or N < 1:
            raise ValueError("C and N must be >= 1")
        self.C, self.N = int(C), int(N)
        self.table_path = Path(table_path or os.environ.get("HWNAS_NB201_TABLE") or DEFAULT_TABLE)

    # -- variation ----------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> NB201Genome:
        """Uniform over the 15,625 cells."""
        return NB201Genome(tuple(rng.choice(OPS) for _ in EDGES))

    def mutate(self, genome: NB201Genome, rng: random.Random) -> NB201Genome:
        """Change the operation of one edge (always a different genome)."""
        ops = list(self._check(genome).ops)
        i = rng.randrange(len(ops))
        ops[i] = rng.choice([op for op in OPS if op != ops[i]])
        return NB201Genome(tuple(ops))

    def crossover(self, a: NB201Genome, b: NB201Genome, rng: random.Random) -> NB201Genome:
        """Per-edge uniform crossover."""
        self._check(a), self._check(b)
        return NB201Genome(tuple(x if rng.random() < 0.5 else y for x, y in zip(a.ops, b.ops)))

    # -- identity -----------------------------------------------------------------------------
    def to_json(self, genome: NB201Genome) -> dict[str, Any]:
        return {"arch": self._check(genome).to_str()}

    def from_json(self, data: dict[str, Any]) -> NB201Genome:
        if not isinstance(data, dict) or "arch" not in data:
            raise ValueError(f"NAS-Bench-201 genome JSON must be {{'arch': '<string>'}}, got {data!r}")
        return NB201Genome.from_str(data["arch"])

    def key(self, genome: NB201Genome) -> str:
        """The NAS-Bench-201 architecture string."""
        return self._check(genome).to_str()

    def parse(self, arch: str) -> NB201Genome:
        """Genome of a NAS-Bench-201 architecture string."""
        return NB201Genome.from_str(arch)

    def index(self, genome: NB201Genome) -> int:
        """NAS-Bench-201's own architecture index (``arch_idx``), looked up in the shared table.

        The benchmark's indices follow the order of its released file, not a formula, so the
        table is needed; raises ``LookupError`` when it is absent.
        """
        return self._index_table()[self.key(genome)]

    def from_index(self, idx: int) -> NB201Genome:
        """Inverse of :meth:`index`."""
        table = self._index_table()
        inverse = {v: k for k, v in table.items()}
        if idx not in inverse:
            raise ValueError(f"NAS-Bench-201 index must be in 0..{NUM_ARCHS - 1}, got {idx!r}")
        return NB201Genome.from_str(inverse[idx])

    def _index_table(self) -> dict[str, int]:
        if not self.table_path.is_file():
            raise LookupError(f"NAS-Bench-201 table not found at {self.table_path} (set HWNAS_NB201_TABLE)")
        return _load_index(str(self.table_path))

    @staticmethod
    def _check(genome: Any) -> NB201Genome:
        if not isinstance(genome, NB201Genome):
            raise ValueError(f"not an NB201Genome: {type(genome).__name__}")
        return genome

    # -- building -----------------------------------------------------------------------------
    def input_shape(self, genome: NB201Genome, task: TaskSpec) -> tuple[int, int, int, int]:
        """The task's size rounded up to a multiple of 4 (two stride-2 reductions with 2x2 pools)."""
        size = max(4, -(-task.image_size // 4) * 4)
        return (1, task.in_channels, size, size)

    def build(self, genome: NB201Genome, task: TaskSpec) -> Any:
        """``TinyNetwork(C, N, genotype, num_classes)`` returning logits only."""
        return _tiny_network_class()(self._check(genome), self.C, self.N, task.in_channels, task.num_classes)


@functools.cache
def _tiny_network_class() -> type:
    import torch
    from torch import nn

    class ReLUConvBN(nn.Module):
        def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
            super().__init__()
            self.op = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                nn.BatchNorm2d(c_out),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(x)

    class Zero(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul(0.0)

    def make_op(name: str, c: int) -> nn.Module:
        if name == "none":
            return Zero()
        if name == "skip_connect":
            return nn.Identity()
        if name == "nor_conv_1x1":
            return ReLUConvBN(c, c, 1, 1, 0)
        if name == "nor_conv_3x3":
            return ReLUConvBN(c, c, 3, 1, 1)
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    class InferCell(nn.Module):
        """Node ``i`` is the sum of its incoming edges' ops applied to earlier nodes."""

        def __init__(self, genome: NB201Genome, c: int) -> None:
            super().__init__()
            self.edges = tuple(EDGES)
            self.layers = nn.ModuleList(make_op(op, c) for op in genome.ops)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            nodes = [x]
            for to in (1, 2, 3):
                terms = [layer(nodes[frm]) for (t, frm), layer in zip(self.edges, self.layers) if t == to]
                out = terms[0]
                for term in terms[1:]:
                    out = out + term
                nodes.append(out)
            return nodes[-1]

    class ResNetBasicblock(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
            self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, padding=0, bias=False),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.downsample(x) + self.conv_b(self.conv_a(x))

    class TinyNetwork(nn.Module):
        """NAS-Bench-201's macro skeleton around ``genome``'s cell."""

        def __init__(self, genome: NB201Genome, C: int, N: int, in_channels: int, num_classes: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False),
                                      nn.BatchNorm2d(C))
            channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
            reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
            c_prev = C
            self.cells = nn.ModuleList()
            for c_curr, reduction in zip(channels, reductions):
                self.cells.append(ResNetBasicblock(c_prev, c_curr) if reduction else InferCell(genome, c_curr))
                c_prev = c_curr
            self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(c_prev, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feature = self.stem(x)
            for cell in self.cells:
                feature = cell(feature)
            out = self.global_pooling(self.lastact(feature))
            return self.classifier(out.flatten(1))

    return TinyNetwork
