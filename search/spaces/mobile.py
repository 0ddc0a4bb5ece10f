"""A mobile block space in the spirit of Once-for-All, FBNet and timm's ``decode_arch_def``.

A fixed macro skeleton (after OFA's MobileNetV3 skeleton): a 3x3 stride-2 stem conv
(``16 * width`` channels, BN, hard-swish) and one depthwise-separable block, then stages of
inverted residual blocks with fixed base channels, strides and activations (default: channels
24/40/80/112/160, strides 2/2/2/1/2, ReLU in the first two stages, hard-swish after), then a 1x1
conv to ``6 * channels`` (BN, hard-swish), global average pooling and a linear classifier.

The genome (:class:`MobileGenome`) chooses:

- ``resolution``: the input size. :meth:`MobileSpace.input_shape` returns it instead of the
  task's image size; the trainer resizes the task's images to ``input_shape`` (a latency or
  energy measured for a candidate is for that resolution);
- ``width``: a width multiplier applied to every channel count (rounded to a multiple of 8,
  as timm/MobileNet's ``make_divisible`` does);
- per stage, a list of blocks (depth ``min_depth..max_depth``), each with its own depthwise
  kernel (3/5/7), expansion ratio (3/4/6) and squeeze-and-excitation on/off (ratio 0.25 of
  the expanded channels, hard-sigmoid gate, as in MobileNetV3).

Inverted residual block: 1x1 expand (BN, act) -> kxk depthwise with the stage's stride on the
first block (BN, act) -> [SE] -> 1x1 project (BN); a residual add when stride is 1 and the
input and output channels match.

Text form, per stage, is timm's block notation: consecutive identical blocks are merged into
one string ``ir_r{repeat}_k{kernel}_s{stride}_e{expand}_c{channels}[_se0.25]`` (the stride
applies to the first repeat only; ``c`` is the base channel count before ``width``). JSON::

    {"resolution": 64, "width": 0.75,
     "stages": [["ir_r2_k5_s2_e3_c24"], ["ir_r1_k3_s2_e6_c40_se0.25", "ir_r2_k7_s1_e4_c40"], ...]}

and ``key`` is ``r64_w0.75:ir_r2_k5_s2_e3_c24/ir_r1_k3_s2_e6_c40_se0.25,ir_r2_k7_s1_e4_c40/...``.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace
from typing import Any

from search.spaces.base import SearchSpace, TaskSpec, register_space

ACTS = ("relu", "hswish")


@dataclass(frozen=True)
class MobileBlock:
    """One inverted residual block's choices."""

    kernel: int = 3
    expand: int = 6
    se: bool = False


@dataclass(frozen=True)
class MobileGenome:
    """Input resolution, width multiplier and the blocks of every stage."""

    resolution: int
    width: float
    stages: tuple[tuple[MobileBlock, ...], ...]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below 90% of ``v`` (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _format_stage(blocks: tuple[MobileBlock, ...], stride: int, channels: int) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(blocks):
        j = i
        while j + 1 < len(blocks) and blocks[j + 1] == blocks[i]:
            j += 1
        b = blocks[i]
        s = f"ir_r{j - i + 1}_k{b.kernel}_s{stride if i == 0 else 1}_e{b.expand}_c{channels}"
        out.append(s + ("_se0.25" if b.se else ""))
        i = j + 1
    return out


def _parse_block(text: str) -> tuple[int, MobileBlock, int, int]:
    """``ir_r2_k5_s2_e3_c24[_se0.25]`` -> (repeat, block, stride, channels)."""
    if not isinstance(text, str):
        raise ValueError(f"block string expected, got {text!r}")
    parts = text.split("_")
    if parts[0] != "ir":
        raise ValueError(f"only inverted residual blocks ('ir_...') are in this space, got {text!r}")
    opts: dict[str, str] = {}
    for p in parts[1:]:
        key = "se" if p.startswith("se") else p[:1]
        if key in opts or len(p) <= len(key):
            raise ValueError(f"malformed block string {text!r} at {p!r}")
        opts[key] = p[len(key):]
    if set(opts) - {"r", "k", "s", "e", "c", "se"} or not {"r", "k", "s", "e", "c"} <= set(opts):
        raise ValueError(f"block string {text!r} needs r, k, s, e, c (and optionally se0.25)")
    if opts.get("se", "0.25") != "0.25":
        raise ValueError(f"only se0.25 is supported, got {text!r}")
    try:
        r, k, s, e, c = (int(opts[x]) for x in "rksec")
    except ValueError:
        raise ValueError(f"non-integer option in block string {text!r}") from None
    if r < 1:
        raise ValueError(f"repeat must be >= 1 in {text!r}")
    return r, MobileBlock(kernel=k, expand=e, se="se" in opts), s, c


@register_space("mobile")
class MobileSpace(SearchSpace):
    """Inverted-residual networks; see the module docstring for the skeleton and the genome.

    Keyword arguments: ``channels``, ``strides``, ``activations`` (one per stage; the
    skeleton), ``min_depth``/``max_depth`` blocks per stage, ``kernels``, ``expands``,
    ``widths`` and ``resolutions`` (the choices), ``stem_channels``, ``head_expand``.
    """

    def __init__(
        self,
        *,
        channels: tuple[int, ...] = (24, 40, 80, 112, 160),
        strides: tuple[int, ...] = (2, 2, 2, 1, 2),
        activations: tuple[str, ...] = ("relu", "relu", "hswish", "hswish", "hswish"),
        min_depth: int = 2,
        max_depth: int = 4,
        kernels: tuple[int, ...] = (3, 5, 7),
        expands: tuple[int, ...] = (3, 4, 6),
        widths: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0, 1.25),
        resolutions: tuple[int, ...] = (32, 48, 64, 96, 128),
        stem_channels: int = 16,
        head_expand: int = 6,
    ) -> None:
        if not (len(channels) == len(strides) == len(activations) >= 1):
            raise ValueError("channels, strides and activations need one entry per stage")
        if any(s not in (1, 2) for s in strides) or any(a not in ACTS for a in activations):
            raise ValueError(f"strides must be 1 or 2 and activations in {ACTS}")
        if not 1 <= min_depth <= max_depth:
            raise ValueError("need 1 <= min_depth <= max_depth")
        if any(k % 2 == 0 or k < 1 for k in kernels) or any(e < 1 for e in expands):
            raise ValueError("kernels must be odd and positive, expansions >= 1")
        if not widths or not resolutions or any(w <= 0 for w in widths) or any(r < 1 for r in resolutions):
            raise ValueError("widths and resolutions must be non-empty and positive")
        self.channels, self.strides, self.activations = tuple(channels), tuple(strides), tuple(activations)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.kernels, self.expands = tuple(kernels), tuple(expands)
        self.widths, self.resolutions = tuple(float(w) for w in widths), tuple(resolutions)
        self.stem_channels, self.head_expand = stem_channels, head_expand

    # -- validity -----------------------------------------------------------------------------
    def validate(self, genome: Any) -> MobileGenome:
        """Raise ``ValueError`` unless ``genome`` lies in this space; return it."""
        if not isinstance(genome, MobileGenome):
            raise ValueError(f"not a MobileGenome: {type(genome).__name__}")
        if genome.resolution not in self.resolutions:
            raise ValueError(f"resolution {genome.resolution} not in {self.resolutions}")
        if genome.width not in self.widths:
            raise ValueError(f"width {genome.width} not in {self.widths}")
        if len(genome.stages) != len(self.channels):
            raise ValueError(f"{len(genome.stages)} stages, this space has {len(self.channels)}")
        for i, blocks in enumerate(genome.stages):
            if not self.min_depth <= len(blocks) <= self.max_depth:
                raise ValueError(f"stage {i}: depth {len(blocks)} outside {self.min_depth}..{self.max_depth}")
            for b in blocks:
                ok = isinstance(b, MobileBlock) and b.kernel in self.kernels and b.expand in self.expands
                if not ok or not isinstance(b.se, bool):
                    raise ValueError(
                        f"stage {i}: invalid block {b!r} (kernels {self.kernels}, expansions {self.expands})"
                    )
        return genome

    # -- variation ----------------------------------------------------------------------------
    def _block(self, rng: random.Random) -> MobileBlock:
        return MobileBlock(kernel=rng.choice(self.kernels), expand=rng.choice(self.expands), se=rng.random() < 0.5)

    def sample(self, rng: random.Random) -> MobileGenome:
        """Uniform choices for every gene."""
        stages = tuple(
            tuple(self._block(rng) for _ in range(rng.randint(self.min_depth, self.max_depth)))
            for _ in self.channels
        )
        return MobileGenome(rng.choice(self.resolutions), rng.choice(self.widths), stages)

    @staticmethod
    def _neighbour(choices: tuple, value: Any, rng: random.Random) -> Any:
        i = choices.index(value)
        options = [choices[j] for j in (i - 1, i + 1) if 0 <= j < len(choices)]
        return rng.choice(options) if options else value

    def _mutate_once(self, g: MobileGenome, rng: random.Random) -> MobileGenome:
        op = rng.choice(("resolution", "width", "block", "block", "block", "depth", "depth"))
        if op == "resolution":
            return replace(g, resolution=self._neighbour(self.resolutions, g.resolution, rng))
        if op == "width":
            return replace(g, width=self._neighbour(self.widths, g.width, rng))
        stages = [list(s) for s in g.stages]
        si = rng.randrange(len(stages))
        blocks = stages[si]
        if op == "depth":
            grow = len(blocks) < self.max_depth and (len(blocks) == self.min_depth or rng.random() < 0.5)
            if grow:
                blocks.insert(rng.randint(0, len(blocks)), self._block(rng))
            elif len(blocks) > self.min_depth:
                blocks.pop(rng.randrange(len(blocks)))
        else:
            bi = rng.randrange(len(blocks))
            b = blocks[bi]
            field = rng.choice(("kernel", "expand", "se"))
            if field == "kernel" and len(self.kernels) > 1:
                b = replace(b, kernel=rng.choice([k for k in self.kernels if k != b.kernel]))
            elif field == "expand" and len(self.expands) > 1:
                b = replace(b, expand=rng.choice([e for e in self.expands if e != b.expand]))
            else:
                b = replace(b, se=not b.se)
            blocks[bi] = b
        return replace(g, stages=tuple(tuple(s) for s in stages))

    def mutate(self, genome: MobileGenome, rng: random.Random) -> MobileGenome:
        """Change resolution or width to a neighbouring choice, edit one block, or add/remove a block."""
        return self._mutate_until_changed(genome, self._mutate_once, rng)

    def crossover(self, a: MobileGenome, b: MobileGenome, rng: random.Random) -> MobileGenome:
        """Each stage, the resolution and the width come from either parent (uniform)."""
        self.validate(a), self.validate(b)
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        return MobileGenome(
            pick(a.resolution, b.resolution),
            pick(a.width, b.width),
            tuple(pick(sa, sb) for sa, sb in zip(a.stages, b.stages)),
        )

    # -- serialisation ------------------------------------------------------------------------
    def stage_strings(self, genome: MobileGenome) -> list[list[str]]:
        """timm-style block strings, one list per stage."""
        return [_format_stage(blocks, s, c) for blocks, s, c in zip(genome.stages, self.strides, self.channels)]

    def to_json(self, genome: MobileGenome) -> dict[str, Any]:
        self.validate(genome)
        return {"resolution": genome.resolution, "width": genome.width, "stages": self.stage_strings(genome)}

    def from_json(self, data: dict[str, Any]) -> MobileGenome:
        try:
            resolution, width, stage_data = data["resolution"], data["width"], data["stages"]
        except (KeyError, TypeError):
            raise ValueError(f"mobile genome JSON needs resolution, width and stages, got {data!r}") from None
        if isinstance(resolution, bool) or not isinstance(resolution, int):
            raise ValueError(f"resolution must be an integer, got {resolution!r}")
        if isinstance(width, bool) or not isinstance(width, (int, float)):
            raise ValueError(f"width must be a number, got {width!r}")
        if not isinstance(stage_data, list) or len(stage_data) != len(self.channels):
            raise ValueError(f"stages must be a list of {len(self.channels)} lists of block strings")
        stages = []
        for i, strings in enumerate(stage_data):
            if not isinstance(strings, list) or not strings:
                raise ValueError(f"stage {i} must be a non-empty list of block strings")
            blocks: list[MobileBlock] = []
            for text in strings:
                r, block, stride, c = _parse_block(text)
                want = self.strides[i] if not blocks else 1
                if stride != want or c != self.channels[i]:
                    raise ValueError(f"stage {i}: {text!r} must have s{want} and c{self.channels[i]}")
                blocks.extend([block] * r)
            stages.append(tuple(blocks))
        return self.validate(MobileGenome(resolution, float(width), tuple(stages)))

    def key(self, genome: MobileGenome) -> str:
        """``r{resolution}_w{width}:`` then the stages' block strings (``,`` within, ``/`` between)."""
        body = "/".join(",".join(stage) for stage in self.stage_strings(self.validate(genome)))
        return f"r{genome.resolution}_w{genome.width:g}:{body}"

    # -- building -----------------------------------------------------------------------------
    def input_shape(self, genome: MobileGenome, task: TaskSpec) -> tuple[int, int, int, int]:
        """``(1, C, resolution, resolution)``: the genome's resolution, not the task's image size."""
        return (1, task.in_channels, genome.resolution, genome.resolution)

    def build(self, genome: MobileGenome, task: TaskSpec) -> Any:
        """A ``torch.nn.Module`` for ``input_shape(genome, task)`` inputs."""
        self.validate(genome)
        return _mobile_net_class()(self, genome, task)


@functools.cache
def _mobile_net_class() -> type:
    import torch
    from torch import nn

    def act(name: str) -> nn.Module:
        return nn.ReLU() if name == "relu" else nn.Hardswish()

    def conv_bn(c_in: int, c_out: int, k: int, s: int, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            mid = make_divisible(c * 0.25)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(c, mid, 1)
            self.relu = nn.ReLU()
            self.expand = nn.Conv2d(mid, c, 1)
            self.gate = nn.Hardsigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))

    class InvertedResidual(nn.Module):
        def __init__(self, c_in: int, c_out: int, block: MobileBlock, stride: int, activation: str) -> None:
            super().__init__()
            mid = make_divisible(c_in * block.expand)
            layers: list[nn.Module] = []
            if block.expand != 1:
                layers += conv_bn(c_in, mid, 1, 1) + [act(activation)]
            layers += conv_bn(mid, mid, block.kernel, stride, groups=mid) + [act(activation)]
            if block.se:
                layers.append(SqueezeExcite(mid))
            layers += conv_bn(mid, c_out, 1, 1)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.residual else y

    class MobileNet(nn.Module):
        """The skeleton of :class:`MobileSpace` filled with ``genome``'s blocks."""

        def __init__(self, space: MobileSpace, genome: MobileGenome, task: TaskSpec) -> None:
            super().__init__()
            w = genome.width
            c = make_divisible(space.stem_channels * w)
            self.stem = nn.Sequential(*conv_bn(task.in_channels, c, 3, 2), nn.Hardswish())
            # First block of MobileNetV3 / OFA: depthwise separable, residual.
            self.first = nn.Sequential(*conv_bn(c, c, 3, 1, groups=c), nn.ReLU(), *conv_bn(c, c, 1, 1))
            blocks: list[nn.Module] = []
            skeleton = zip(genome.stages, space.channels, space.strides, space.activations)
            for stage, c_base, stride, activation in skeleton:
                c_out = make_divisible(c_base * w)
                for i, block in enumerate(stage):
                    blocks.append(InvertedResidual(c, c_out, block, stride if i == 0 else 1, activation))
                    c = c_out
            self.blocks = nn.Sequential(*blocks)
            c_head = make_divisible(c * space.head_expand)
            self.head = nn.Sequential(*conv_bn(c, c_head, 1, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(c_head, task.num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = x + self.first(x)
            return self.classifier(self.head(self.blocks(x)))

    return MobileNet
