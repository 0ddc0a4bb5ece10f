"""Standard image augmentation on batched tensors, on whatever device the batch is on.

Random crop with zero padding, horizontal flip and optional cutout, applied per batch to
normalised ``(N, C, H, W)`` images (zero after normalisation is the training mean). Random draws
come from a CPU ``torch.Generator`` so a seed gives the same result on CPU and CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """crop_padding: pixels of zero padding before a random crop back to size (0: no crop);
    flip: random horizontal flip with probability 1/2; cutout: side of a zeroed square (0: none)."""

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0


def augment_batch(x: torch.Tensor, settings: AugmentSettings, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """An augmented copy of ``x`` ``(N, C, H, W)``: same shape, dtype and device."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    dev = x.device

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator).to(dev)

    p = settings.crop_padding
    if p > 0:
        padded = F.pad(x, (p, p, p, p))
        rows = draw(2 * p + 1)[:, None] + torch.arange(h, device=dev)[None]   # (N, H)
        cols = draw(2 * p + 1)[:, None] + torch.arange(w, device=dev)[None]   # (N, W)
        batch = torch.arange(n, device=dev)[:, None, None]
        # advanced indexing gives (N, H, W, C); back to channels first
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if settings.flip:
        flip = draw(2).bool()[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    s = settings.cutout
    if s > 0:
        cy, cx = draw(h), draw(w)
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        inside = ((ys - cy[:, None, None]).abs() <= s // 2) & ((xs - cx[:, None, None]).abs() <= s // 2)
        x = x.masked_fill(inside[:, None], 0.0)
    return x.contiguous()
