"""Early-Bird tickets (You et al., ICLR 2020, "Drawing Early-Bird Tickets").

After every epoch a channel mask is drawn from the batch-norm scaling factors: global magnitude
pruning of |gamma| over all batch-norm layers at pruning ratio ``ratio`` (the ``ratio`` smallest
fraction of channels is pruned). The distance between two successive masks is their normalized
Hamming distance (fraction of channels whose keep/prune decision changed). The ticket is drawn
when the last ``window`` distances (a FIFO, 5 in the paper) are all below ``eps`` (0.1 in the
paper): the pruned structure has stopped moving, so training it alone is as good as training on.

Optionally (:func:`add_gamma_sparsity`) the gammas carry the L1 sparsity penalty of network
slimming, whose channel pruning the paper adopts.

:func:`ticket_genome` turns the drawn mask into a physically smaller ``menndl`` genome (each
conv-with-batch-norm layer keeps its kept-channel count; at least one) and :func:`build_ticket`
builds it, copying the kept channels' weights (conv, batch norm, skip projections, first head
layer). :class:`EarlyBirdCallback` is the per-epoch hook for
:func:`search.training.train.train_candidate` (``callbacks=[...]``): it returns True (stop) once drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class EarlyBirdSettings:
    """Pruning ratio, distance threshold and FIFO length (the paper's defaults for eps/window)."""

    ratio: float = 0.5
    eps: float = 0.1
    window: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"early-bird ratio must be in (0, 1), got {self.ratio}")
        if self.eps <= 0.0 or self.window < 1:
            raise ValueError(f"early-bird needs eps > 0 and window >= 1, got {self.eps}, {self.window}")


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's 2-D batch-norm layers in module order (the mask's channel order)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def mask_from_gammas(gammas: list[torch.Tensor], ratio: float) -> torch.Tensor:
    """Global magnitude mask over the concatenated |gamma|: True = kept; ``ratio`` pruned."""
    if not gammas:
        raise ValueError("no batch-norm layers: an Early-Bird mask needs batch-norm scaling factors")
    flat = torch.cat([g.detach().abs().flatten().float().cpu() for g in gammas])
    n_prune = int(ratio * flat.numel())
    if n_prune == 0:
        return torch.ones_like(flat, dtype=torch.bool)
    threshold = torch.sort(flat).values[n_prune - 1]
    return flat > threshold


def channel_mask(model: nn.Module, ratio: float) -> torch.Tensor:
    """:func:`mask_from_gammas` over the model's batch-norm weights."""
    return mask_from_gammas([bn.weight for bn in bn_layers(model)], ratio)


def add_gamma_sparsity(model: nn.Module, strength: float = 1e-4) -> list[Any]:
    """L1 sparsity on batch-norm gammas as network slimming (Liu et al. 2017), which the paper's
    channel pruning follows, trains with: adds ``strength * sign(gamma)`` to each gamma's
    gradient through tensor hooks, so any training loop applies it. Returns the hook handles
    (``handle.remove()`` turns it off)."""
    handles = []
    for bn in bn_layers(model):
        weight = bn.weight
        handles.append(weight.register_hook(lambda grad, w=weight: grad + strength * torch.sign(w.detach())))
    return handles


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalized Hamming distance between two masks of the same length (0..1)."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a != b).float().mean())


@dataclass
class EarlyBirdDetector:
    """Feed it once per epoch; it says when the ticket is drawn and keeps the distance history."""

    settings: EarlyBirdSettings = EarlyBirdSettings()
    distances: list[float] = field(default_factory=list)
    mask: torch.Tensor | None = None
    drawn_at: int | None = None  # number of updates when the ticket was first drawn
    updates: int = 0

    def update_mask(self, mask: torch.Tensor) -> bool:
        """Record one epoch's mask; True once the last ``window`` distances are all < eps."""
        if self.mask is not None:
            self.distances.append(mask_distance(self.mask, mask))
        self.mask = mask.clone()
        self.updates += 1
        w = self.settings.window
        if self.drawn_at is None and len(self.distances) >= w and max(self.distances[-w:]) < self.settings.eps:
            self.drawn_at = self.updates
        return self.drawn_at is not None

    def update(self, model: nn.Module) -> bool:
        """:meth:`update_mask` with the model's current batch-norm mask."""
        return self.update_mask(channel_mask(model, self.settings.ratio))


@dataclass
class EarlyBirdCallback:
    """Per-epoch hook for ``train_candidate(..., callbacks=[cb])``: stop once the ticket is drawn."""

    detector: EarlyBirdDetector = field(default_factory=EarlyBirdDetector)
    stop: bool = True  # False: only record (e.g. to report when the ticket appeared)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> bool:
        """Update the detector; True asks the trainer to stop."""
        return self.detector.update(model) and self.stop


def _kept_per_layer(genome: Any, model: nn.Module, mask: torch.Tensor) -> list[torch.Tensor | None]:
    """Kept channel indices per gene (None: all channels, i.e. pools and convs without BN)."""
    from search.spaces.menndl import ConvGene

    kept: list[torch.Tensor | None] = []
    offset = 0
    for layer, block in zip(genome.layers, model.blocks):
        if isinstance(layer, ConvGene) and layer.batch_norm:
            n = block["main"][1].num_features
            m = mask[offset:offset + n]
            offset += n
            idx = torch.nonzero(m).flatten()
            if idx.numel() == 0:  # keep the strongest channel so the layer still exists
                idx = block["main"][1].weight.detach().abs().argmax().reshape(1)
            kept.append(idx)
        else:
            kept.append(None)
    if offset != mask.numel():
        raise ValueError(f"mask has {mask.numel()} channels, the network's batch norms {offset}")
    return kept


def ticket_genome(genome: Any, model: nn.Module, mask: torch.Tensor) -> Any:
    """The ``menndl`` genome whose conv widths are the mask's kept counts (built from ``model``)."""
    from search.spaces.menndl import ConvGene

    layers = []
    for layer, idx in zip(genome.layers, _kept_per_layer(genome, model, mask)):
        if isinstance(layer, ConvGene) and idx is not None:
            layer = replace(layer, filters=int(idx.numel()))
        layers.append(layer)
    return replace(genome, layers=tuple(layers))


@torch.no_grad()
def build_ticket(genome: Any, model: nn.Module, mask: torch.Tensor, task: Any, *,
                 copy_weights: bool = True) -> tuple[Any, nn.Module]:
    """``(ticket genome, ticket network)``; widths may fall below the space's ``min_filters``,
    so the network is built without the space's bounds check. With ``copy_weights`` the kept
    channels' weights come from ``model``; otherwise the ticket starts from a fresh init."""
    from search.spaces.menndl import ConvGene, _net_class

    small_genome = ticket_genome(genome, model, mask)
    net = _net_class()(small_genome, task)
    if not copy_weights:
        return small_genome, net
    kept = _kept_per_layer(genome, model, mask)
    points: list[torch.Tensor] = [torch.arange(task.in_channels)]  # kept source channels per point
    for i, layer in enumerate(genome.layers):
        if not isinstance(layer, ConvGene):
            points.append(points[-1])
            continue
        old, new = model.blocks[i]["main"], net.blocks[i]["main"]
        out_idx = kept[i] if kept[i] is not None else torch.arange(layer.filters)
        new[0].weight.copy_(old[0].weight[out_idx][:, points[-1]])
        if old[0].bias is not None:
            new[0].bias.copy_(old[0].bias[out_idx])
        if layer.batch_norm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new[1], name).copy_(getattr(old[1], name)[out_idx])
        if layer.skip_from is not None:
            src_idx, old_p, new_p = points[layer.skip_from], model.projections[i], net.projections[i]
            if isinstance(old_p, nn.Conv2d) and isinstance(new_p, nn.Conv2d):
                new_p.weight.copy_(old_p.weight[out_idx][:, src_idx])
            elif isinstance(new_p, nn.Conv2d):  # identity skip became a projection: select channels
                new_p.weight.zero_()
                for o, ch in enumerate(out_idx.tolist()):
                    hit = (src_idx == ch).nonzero().flatten()
                    if hit.numel():
                        new_p.weight[o, int(hit[0]), 0, 0] = 1.0
        points.append(out_idx)
    first = next((m for m in net.head if isinstance(m, nn.Linear)), None)
    old_first = next((m for m in model.head if isinstance(m, nn.Linear)), None)
    if first is not None and old_first is not None:
        cells = old_first.in_features // _channels_at_end(genome, task)  # grid x grid per channel
        cols = torch.tensor([c * cells + k for c in points[-1].tolist() for k in range(cells)], dtype=torch.long)
        first.weight.copy_(old_first.weight[:, cols])
        first.bias.copy_(old_first.bias)
        later_new = [m for m in net.head if isinstance(m, nn.Linear)][1:]
        later_old = [m for m in model.head if isinstance(m, nn.Linear)][1:]
        for a, b in zip(later_new, later_old):
            a.load_state_dict(b.state_dict())
    return small_genome, net


def _channels_at_end(genome: Any, task: Any) -> int:
    from search.spaces.menndl import ConvGene

    convs = [layer.filters for layer in genome.layers if isinstance(layer, ConvGene)]
    return convs[-1] if convs else task.in_channels
