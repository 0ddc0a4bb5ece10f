"""NAS-Bench-201 space: architecture strings, the benchmark's own indices, published parameter
counts and the structure of the network (TinyNetwork / InferCell of D-X-Y/AutoDL-Projects)."""
from __future__ import annotations

import csv
import gzip
import random
from collections import Counter

import pytest

from search.spaces import TaskSpec, get_space
from search.spaces.nb201 import DEFAULT_TABLE, EDGES, NUM_ARCHS, OPS, NB201Genome, NB201Space, all_genomes, ordinal
from search.training.exporting import count_params

torch = pytest.importorskip("torch")

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ISSUE36 = "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def table_rows() -> list[dict[str, str]]:
    if not DEFAULT_TABLE.is_file():
        pytest.skip(f"shared NAS-Bench-201 table not found at {DEFAULT_TABLE}")
    with gzip.open(DEFAULT_TABLE, "rt", newline="") as f:
        return list(csv.DictReader(f))


def test_every_table_string_round_trips(table_rows):
    assert len(table_rows) == NUM_ARCHS == 15_625
    space = NB201Space(table_path=DEFAULT_TABLE)
    seen = set()
    for row in table_rows:
        g = space.parse(row["arch_str"])
        assert g.to_str() == row["arch_str"] == space.key(g)
        assert space.from_json(space.to_json(g)) == g
        seen.add(g)
    # the table and the enumeration are the same set of cells
    assert seen == set(all_genomes())


def test_index_matches_the_benchmark_columns(table_rows):
    space = NB201Space(table_path=DEFAULT_TABLE)
    for row in table_rows[:: 97]:
        g = space.parse(row["arch_str"])
        assert space.index(g) == int(row["arch_idx"])
        assert space.from_index(int(row["arch_idx"])) == g
    assert {int(r["arch_idx"]) for r in table_rows} == set(range(NUM_ARCHS))
    with pytest.raises(ValueError):
        space.from_index(NUM_ARCHS)


def test_index_without_table_is_a_lookup_error(tmp_path):
    space = NB201Space(table_path=tmp_path / "missing.csv.gz")
    with pytest.raises(LookupError, match="not found"):
        space.index(space.parse(ALL_CONV3))


def test_ordinal_enumerates_all_cells_once():
    genomes = list(all_genomes())
    assert len(genomes) == len(set(genomes)) == NUM_ARCHS
    assert [ordinal(g) for g in genomes[:50]] == list(range(50))
    assert ordinal(genomes[-1]) == NUM_ARCHS - 1


# Published parameter counts (MB = 1e6 parameters, counted like AutoDL's count_parameters_in_MB).
# - 0.802426 for ISSUE36 on CIFAR-10: NATS-Bench issue #36 (github.com/D-X-Y/NATS-Bench/issues/36),
#   `api.get_cost_info(idx, "cifar10", hp="12")` output quoted there.
# - Minimum / maximum over the 15,625 cells (all-`none` cell / all-`nor_conv_3x3` cell), read from
#   NAS-Bench-201-v1_1-096897: CIFAR-10 0.073306 / 1.531546, CIFAR-100 0.079156 / 1.537396,
#   ImageNet16-120 0.080456 / 1.538696 (quoted in public benchmark code, e.g. EvoXBench-based
#   `min_max_values` for nb201 and an HPOBench min/max script over the released json).
PUBLISHED = [
    (ISSUE36, 10, 0.802426),
    (ALL_CONV3, 10, 1.531546),
    (ALL_NONE, 10, 0.073306),
    (ALL_CONV3, 100, 1.537396),
    (ALL_NONE, 100, 0.079156),
    (ALL_CONV3, 120, 1.538696),
    (ALL_NONE, 120, 0.080456),
]


@pytest.mark.parametrize("arch,classes,mb", PUBLISHED)
def test_parameter_counts_match_published(arch, classes, mb):
    space = get_space("nb201")
    assert (space.C, space.N) == (16, 5)
    model = space.build(space.parse(arch), TaskSpec(in_channels=3, image_size=32, num_classes=classes))
    assert count_params(model) == round(mb * 1e6)


def test_parameter_free_ops_cost_the_same():
    space = get_space("nb201")
    task = TaskSpec(3, 32, 10)
    counts = {count_params(space.build(NB201Genome((op,) * 6), task)) for op in ("none", "skip_connect", "avg_pool_3x3")}
    assert counts == {73_306}


def test_macro_structure():
    space = get_space("nb201")
    model = space.build(space.parse(ALL_CONV3), TaskSpec(3, 32, 10)).eval()
    stem_conv = model.stem[0]
    assert (stem_conv.kernel_size, stem_conv.out_channels, stem_conv.bias) == ((3, 3), 16, None)
    assert len(model.cells) == 3 * 5 + 2
    kinds = [type(c).__name__ for c in model.cells]
    assert [i for i, k in enumerate(kinds) if k == "ResNetBasicblock"] == [5, 11]
    sizes = []
    x = model.stem(torch.zeros(1, 3, 32, 32))
    for cell in model.cells:
        x = cell(x)
        sizes.append((x.shape[1], x.shape[2]))
    assert sizes[0] == (16, 32) and sizes[6] == (32, 16) and sizes[-1] == (64, 8)
    assert model.classifier.in_features == 64
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "arch,expect",
    [
        ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|", "4x"),
        ("|skip_connect~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|", "x"),
        ("|none~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|", "x"),
        ("|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|", "x"),
        ("|avg_pool_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|", "pool"),
        (ALL_NONE, "0"),
    ],
)
def test_cell_wiring(arch, expect):
    space = get_space("nb201", C=4, N=1)
    cell = space.build(space.parse(arch), TaskSpec(4, 8, 10)).cells[0].eval()
    x = torch.randn(2, 4, 8, 8)
    want = {
        "4x": 4 * x,
        "x": x,
        "pool": torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
        "0": torch.zeros_like(x),
    }[expect]
    torch.testing.assert_close(cell(x), want)


def test_all_none_network_ignores_its_input():
    space = get_space("nb201", C=4, N=1)
    model = space.build(space.parse(ALL_NONE), TaskSpec(3, 8, 10)).eval()
    with torch.no_grad():
        a, b = model(torch.randn(1, 3, 8, 8)), model(torch.randn(1, 3, 8, 8))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|",  # two nodes
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # missing edge
        "|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # unknown op
        "|none~0|+|none~0|none~0|+|none~0|none~1|none~2|",  # duplicate edge
        "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",  # node 1 has no input 1
        "|none-0|+|none~0|none~1|+|none~0|none~1|none~2|",  # no '~'
        "none~0+|none~0|none~1|+|none~0|none~1|none~2|",  # no bars
    ],
)
def test_malformed_strings_are_rejected(bad):
    with pytest.raises(ValueError):
        NB201Genome.from_str(bad)
    with pytest.raises(ValueError):
        get_space("nb201").from_json({"arch": bad})


def test_edges_in_a_node_may_come_in_any_order():
    g = NB201Genome.from_str("|none~0|+|avg_pool_3x3~1|nor_conv_1x1~0|+|skip_connect~2|none~0|nor_conv_3x3~1|")
    assert g.to_str() == "|none~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"


def test_variation_operators():
    space = get_space("nb201")
    rng = random.Random(3)
    counts = [Counter() for _ in EDGES]
    for _ in range(5000):
        g = space.sample(rng)
        for c, op in zip(counts, g.ops):
            c[op] += 1
    for c in counts:  # uniform over the five ops on every edge
        assert set(c) == set(OPS)
        assert all(800 < n < 1200 for n in c.values())
    for _ in range(300):
        a, b = space.sample(rng), space.sample(rng)
        m = space.mutate(a, rng)
        assert sum(x != y for x, y in zip(a.ops, m.ops)) == 1
        child = space.crossover(a, b, rng)
        assert all(op in (x, y) for op, x, y in zip(child.ops, a.ops, b.ops))


def test_input_shape_is_a_multiple_of_four():
    space = get_space("nb201")
    g = space.parse(ALL_CONV3)
    assert space.input_shape(g, TaskSpec(3, 32, 10)) == (1, 3, 32, 32)
    assert space.input_shape(g, TaskSpec(1, 8, 10)) == (1, 1, 8, 8)
    assert space.input_shape(g, TaskSpec(1, 30, 10)) == (1, 1, 32, 32)
    assert space.input_shape(g, TaskSpec(1, 1, 10)) == (1, 1, 4, 4)
