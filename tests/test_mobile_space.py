"""Mobile block space: timm-style block strings, the skeleton, resolution and width."""
from __future__ import annotations

import random

import pytest

from search.spaces import TaskSpec, get_space
from search.spaces.mobile import MobileBlock, MobileGenome, make_divisible
from search.training.exporting import count_params

torch = pytest.importorskip("torch")

TINY = {"channels": (8, 16), "strides": (2, 1), "activations": ("relu", "hswish"), "min_depth": 1, "max_depth": 3,
        "widths": (0.5, 1.0), "resolutions": (8, 16)}


def test_block_strings_merge_runs_and_round_trip():
    space = get_space("mobile", **TINY)
    a, b = MobileBlock(5, 3, False), MobileBlock(3, 6, True)
    g = MobileGenome(16, 1.0, ((a, a, b), (b, b)))
    assert space.stage_strings(g) == [
        ["ir_r2_k5_s2_e3_c8", "ir_r1_k3_s1_e6_c8_se0.25"],
        ["ir_r2_k3_s1_e6_c16_se0.25"],
    ]
    assert space.key(g) == "r16_w1:ir_r2_k5_s2_e3_c8,ir_r1_k3_s1_e6_c8_se0.25/ir_r2_k3_s1_e6_c16_se0.25"
    assert space.from_json(space.to_json(g)) == g
    # unmerged spelling parses to the same genome
    spelled = {"resolution": 16, "width": 1.0, "stages": [
        ["ir_r1_k5_s2_e3_c8", "ir_r1_k5_s1_e3_c8", "ir_r1_k3_s1_e6_c8_se0.25"], ["ir_r2_k3_s1_e6_c16_se0.25"]]}
    assert space.from_json(spelled) == g


@pytest.mark.parametrize(
    "stage0",
    [
        ["ir_r1_k5_s1_e3_c8"],  # first block must carry the stage stride
        ["ir_r1_k5_s2_e3_c24"],  # wrong channels for the skeleton
        ["ir_r1_k4_s2_e3_c8"],  # even kernel
        ["ir_r1_k5_s2_e5_c8"],  # expansion not offered
        ["ir_r4_k5_s2_e3_c8"],  # too deep
        ["ds_r1_k3_s2_e1_c8"],  # not an inverted residual
        ["ir_r1_k5_s2_e3_c8_se0.5"],
        ["ir_r1_k5_s2_e3"],
        ["ir_rx_k5_s2_e3_c8"],
        [],
    ],
)
def test_bad_block_strings_are_rejected(stage0):
    space = get_space("mobile", **TINY)
    with pytest.raises(ValueError):
        space.from_json({"resolution": 16, "width": 1.0, "stages": [stage0, ["ir_r1_k3_s1_e3_c16"]]})


def test_resolution_and_width_shape_the_network():
    space = get_space("mobile", **TINY)
    task = TaskSpec(3, 32, 10)
    blocks = ((MobileBlock(3, 3, False),), (MobileBlock(3, 3, False),))
    small, wide = MobileGenome(8, 0.5, blocks), MobileGenome(16, 1.0, blocks)
    assert space.input_shape(small, task) == (1, 3, 8, 8)
    assert space.input_shape(wide, task) == (1, 3, 16, 16)
    assert count_params(space.build(wide, task)) > 2 * count_params(space.build(small, task))
    # stage 2 has stride 1 and equal channels on its later blocks: those are residual
    deeper = MobileGenome(16, 1.0, (blocks[0], blocks[1] * 2))
    model = space.build(deeper, task)
    assert [blk.residual for blk in model.blocks] == [False, False, True]


def test_default_skeleton_is_mobilenet_like():
    space = get_space("mobile")
    rng = random.Random(4)
    g = space.sample(rng)
    assert len(g.stages) == 5 and all(2 <= len(s) <= 4 for s in g.stages)
    model = space.build(g, TaskSpec(3, 32, 100)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *space.input_shape(g, TaskSpec(3, 32, 100))[1:]))
    assert out.shape == (1, 100)
    assert make_divisible(16 * 0.35) == 8 and make_divisible(24 * 1.25) == 32 and make_divisible(40 * 0.75) == 32
