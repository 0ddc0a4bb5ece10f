"""A Once-for-All weight-sharing network for the ``mobile`` space.

:class:`MobileSupernet` holds, for every layer of :class:`~search.spaces.mobile.MobileSpace`'s
skeleton, one weight tensor at the largest size any genome of the space needs (the maximum over
its widths and expansions, ``max_depth`` blocks per stage, the largest kernel). A genome's
sub-network takes from those banks:

- **width / expand** (elastic channels): the first ``c`` output and input channels of every
  conv, BN and linear layer (``make_divisible`` rounding exactly as the space's build does).
  :meth:`MobileSupernet.reorganize_channels` sorts each block's expanded channels by importance
  (L1 norm of the projection weights, as Once-for-All does) so the first ones matter most;
- **kernel** (elastic depthwise kernel): the centre of the largest kernel, passed through a
  learned per-layer ``k*k x k*k`` transformation for each step down (7 -> 5 -> 3), identity at
  the start (Once-for-All's kernel transformation matrices);
- **depth**: the first ``d`` blocks of each stage;
- **squeeze-and-excitation**: per block on or off, the SE weights sliced like the rest;
- **resolution**: the input is resized to the genome's resolution by the caller.

Weight sharing never copies the space's network code: the sub-network *is* the space's own
``build(genome, task)``, built on the ``meta`` device as a template and run with the sliced
tensors through ``torch.func.functional_call``. :meth:`MobileSupernet.extract` loads the same
tensors into a real ``build``, so an extracted network exports to ONNX exactly like any other
candidate and computes what the supernet computes for that genome (eval mode).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import torch
from torch import nn
from torch.func import functional_call

from search.spaces.base import TaskSpec
from search.spaces.mobile import MobileBlock, MobileGenome, MobileSpace, make_divisible

#: templates (meta-device builds) kept per genome
_TEMPLATE_CACHE = 512


def _bn(bn: nn.BatchNorm2d, c: int) -> dict[str, torch.Tensor]:
    """The first ``c`` channels of ``bn`` (views: training updates the bank's running stats)."""
    return {"weight": bn.weight[:c], "bias": bn.bias[:c], "running_mean": bn.running_mean[:c],
            "running_var": bn.running_var[:c], "num_batches_tracked": bn.num_batches_tracked}


class _BlockBank(nn.Module):
    """The shared weights of one inverted-residual block position (stage, index)."""

    def __init__(self, *, c_in: int, mid: int, c_out: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.kernels = tuple(sorted(kernels, reverse=True))
        k = self.kernels[0]
        se_mid = make_divisible(mid * 0.25)
        self.expand = nn.Conv2d(c_in, mid, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, k, groups=mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(mid)
        # One k'^2 x k'^2 matrix per step down the kernel list, identity at the start.
        self.transforms = nn.ParameterDict({
            f"{a}to{b}": nn.Parameter(torch.eye(b * b)) for a, b in zip(self.kernels, self.kernels[1:])})
        self.se_reduce = nn.Conv2d(mid, se_mid, 1)
        self.se_expand = nn.Conv2d(se_mid, mid, 1)
        self.project = nn.Conv2d(mid, c_out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(c_out)

    def kernel(self, k: int, mid: int) -> torch.Tensor:
        """Depthwise weights ``(mid, 1, k, k)``: centre crops, each through its transformation."""
        w, cur = self.dw.weight[:mid], self.kernels[0]
        for nxt in self.kernels[1:]:
            if cur == k:
                break
            lo = (cur - nxt) // 2
            crop = w[:, :, lo:lo + nxt, lo:lo + nxt].reshape(mid, nxt * nxt)
            w = torch.nn.functional.linear(crop, self.transforms[f"{cur}to{nxt}"]).reshape(mid, 1, nxt, nxt)
            cur = nxt
        if cur != k:
            raise ValueError(f"kernel {k} is not one of this supernet's kernels {self.kernels}")
        return w

    def sources(self, c_in: int, c_out: int, block: MobileBlock) -> Iterator[dict[str, torch.Tensor]]:
        """Tensors for the space's block layers, in the order its build creates them."""
        mid = make_divisible(c_in * block.expand)
        if block.expand != 1:
            yield {"weight": self.expand.weight[:mid, :c_in]}
            yield _bn(self.expand_bn, mid)
        yield {"weight": self.kernel(block.kernel, mid)}
        yield _bn(self.dw_bn, mid)
        if block.se:
            s = make_divisible(mid * 0.25)
            yield {"weight": self.se_reduce.weight[:s, :mid], "bias": self.se_reduce.bias[:s]}
            yield {"weight": self.se_expand.weight[:mid, :s], "bias": self.se_expand.bias[:mid]}
        yield {"weight": self.project.weight[:c_out, :mid]}
        yield _bn(self.project_bn, c_out)

    @torch.no_grad()
    def reorganize(self) -> None:
        """Sort expanded (and SE) channels by importance, most important first."""
        order = self.project.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
        for p in (self.expand.weight, self.dw.weight, self.se_expand.weight, self.se_expand.bias):
            p.copy_(p[order])
        for t in (self.expand_bn.weight, self.expand_bn.bias, self.expand_bn.running_mean,
                  self.expand_bn.running_var, self.dw_bn.weight, self.dw_bn.bias,
                  self.dw_bn.running_mean, self.dw_bn.running_var):
            t.copy_(t[order])
        for p in (self.se_reduce.weight, self.project.weight):
            p.copy_(p[:, order])
        se_order = self.se_expand.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
        for p in (self.se_reduce.weight, self.se_reduce.bias):
            p.copy_(p[se_order])
        self.se_expand.weight.copy_(self.se_expand.weight[:, se_order])


def channel_plan(space: MobileSpace, width: float) -> tuple[int, list[int], int]:
    """``(stem, stage outputs, head)`` channel counts of ``space``'s build at ``width``."""
    stem = make_divisible(space.stem_channels * width)
    outs = [make_divisible(c * width) for c in space.channels]
    return stem, outs, make_divisible(outs[-1] * space.head_expand)


class MobileSupernet(nn.Module):
    """Weight-sharing network over every genome of ``space`` for ``task`` (see module doc)."""

    def __init__(self, *, space: MobileSpace, task: TaskSpec) -> None:
        super().__init__()
        self.space, self.task = space, task
        plans = [channel_plan(space, w) for w in space.widths]
        stem = max(p[0] for p in plans)
        outs = [max(p[1][i] for p in plans) for i in range(len(space.channels))]
        head = max(p[2] for p in plans)
        e_max = max(space.expands)
        self.stem = nn.Conv2d(task.in_channels, stem, 3, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem)
        self.first_dw = nn.Conv2d(stem, stem, 3, groups=stem, bias=False)
        self.first_dw_bn = nn.BatchNorm2d(stem)
        self.first_pw = nn.Conv2d(stem, stem, 1, bias=False)
        self.first_pw_bn = nn.BatchNorm2d(stem)
        banks: list[nn.Module] = []
        c_in = stem
        for c_out in outs:
            stage = nn.ModuleList()
            for _ in range(space.max_depth):
                # make_divisible is monotone: the widest input times the largest expansion.
                stage.append(_BlockBank(c_in=c_in, mid=make_divisible(c_in * e_max), c_out=c_out,
                                        kernels=space.kernels))
                c_in = c_out
            banks.append(stage)
        self.stages = nn.ModuleList(banks)
        self.head = nn.Conv2d(c_in, head, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(head)
        self.classifier = nn.Linear(head, task.num_classes)
        self._templates: OrderedDict[MobileGenome, nn.Module] = OrderedDict()

    # -- genomes at the ends of the space ---------------------------------------------------
    def largest(self, resolution: int | None = None) -> MobileGenome:
        """Every choice at its largest (SE on): the full supernet."""
        s = self.space
        block = MobileBlock(kernel=max(s.kernels), expand=max(s.expands), se=True)
        return MobileGenome(resolution or max(s.resolutions), max(s.widths),
                            tuple((block,) * s.max_depth for _ in s.channels))

    # -- the weights of one sub-network -----------------------------------------------------
    def _sources(self, genome: MobileGenome) -> Iterator[dict[str, torch.Tensor]]:
        """Tensors for the build's Conv2d/BatchNorm2d/Linear layers, in creation order."""
        stem, outs, head = channel_plan(self.space, genome.width)
        yield {"weight": self.stem.weight[:stem]}
        yield _bn(self.stem_bn, stem)
        yield {"weight": self.first_dw.weight[:stem]}
        yield _bn(self.first_dw_bn, stem)
        yield {"weight": self.first_pw.weight[:stem, :stem]}
        yield _bn(self.first_pw_bn, stem)
        c = stem
        for banks, blocks, c_out in zip(self.stages, genome.stages, outs):
            for bank, block in zip(banks, blocks):
                yield from bank.sources(c, c_out, block)
                c = c_out
        yield {"weight": self.head.weight[:head, :c]}
        yield _bn(self.head_bn, head)
        yield {"weight": self.classifier.weight[:, :head], "bias": self.classifier.bias}

    def sub_state(self, genome: MobileGenome, template: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """``genome``'s build state (names as in ``space.build``) as slices of the banks."""
        template = template if template is not None else self._template(genome)
        layers = [(n, m) for n, m in template.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
        sources = list(self._sources(genome))
        if len(layers) != len(sources):
            raise RuntimeError(f"supernet/space mismatch: {len(sources)} weight sets for {len(layers)} layers")
        state: dict[str, torch.Tensor] = {}
        for (name, module), tensors in zip(layers, sources):
            own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
            if set(own) != set(tensors):
                raise RuntimeError(f"supernet/space mismatch at {name}: {sorted(own)} vs {sorted(tensors)}")
            for key, t in tensors.items():
                if own[key].shape != t.shape:
                    raise RuntimeError(f"supernet/space mismatch at {name}.{key}: "
                                       f"{tuple(own[key].shape)} vs {tuple(t.shape)}")
                state[f"{name}.{key}"] = t
        return state

    def _template(self, genome: MobileGenome) -> nn.Module:
        t = self._templates.get(genome)
        if t is None:
            with torch.device("meta"):
                t = self.space.build(genome, self.task)
            self._templates[genome] = t
            if len(self._templates) > _TEMPLATE_CACHE:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(genome)
        return t

    def forward(self, x: torch.Tensor, genome: MobileGenome | None = None) -> torch.Tensor:
        """Logits of ``genome``'s sub-network (default: the largest) for ``x`` at its resolution."""
        genome = self.space.validate(genome) if genome is not None else self.largest()
        template = self._template(genome)
        template.train(self.training)
        return functional_call(template, self.sub_state(genome, template), (x,), strict=True)

    @torch.no_grad()
    def extract(self, genome: MobileGenome) -> nn.Module:
        """``space.build(genome, task)`` holding the inherited weights (copies; eval mode)."""
        net = self.space.build(self.space.validate(genome), self.task)
        net.load_state_dict({k: v.detach().clone() for k, v in self.sub_state(genome).items()})
        return net.to(self.stem.weight.device).eval()

    def reorganize_channels(self) -> None:
        """Sort every block's expanded channels by importance (before elastic expansion)."""
        for stage in self.stages:
            for bank in stage:
                bank.reorganize()


def space_settings(space: MobileSpace) -> dict[str, Any]:
    """The keyword arguments that rebuild ``space`` (stored with a checkpoint)."""
    keys = ("channels", "strides", "activations", "min_depth", "max_depth", "kernels", "expands",
            "widths", "resolutions", "stem_channels", "head_expand")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ((k, getattr(space, k)) for k in keys)}
