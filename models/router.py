"""The adaptive router of DynamicDet (the reference's models/common.py): a per-image 'easy' score from pooled
backbone-1 features."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AdaptiveRouter(nn.Module):
    """Global-average-pool each input map, concatenate, 1×1 conv → ReLU → 1×1 conv → sigmoid.

    Input: list of maps (B, C_i, H_i, W_i) with Σ C_i = sum(channels). Output: (B, 1) scores in (0, 1);
    a high score means head 1 suffices (the image is 'easy').
    """

    def __init__(self, channels: Sequence[int], out_channels: int = 1, reduction: int = 4):
        super().__init__()
        c = int(sum(channels))
        self.channels = [int(ch) for ch in channels]
        self.layer1 = nn.Conv2d(c, c // reduction, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.layer2 = nn.Conv2d(c // reduction, out_channels, kernel_size=1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        dtype = self.layer1.weight.dtype  # fp32 when the backbones run in bfloat16 (--bf16)
        pooled = torch.cat([global_mean(x, dtype) for x in xs], 1)
        return self.layer2(self.relu(self.layer1(pooled))).flatten(1).sigmoid()


def global_mean(x: torch.Tensor, dtype: torch.dtype, chunk_elements: int = 1 << 19) -> torch.Tensor:
    """Mean over H and W as (B, C, 1, 1) in `dtype`, accumulated in `dtype`.

    Same dtype: `x.mean` (the reference's numbers). Wider dtype (bfloat16 maps, fp32 router): summed over row
    bands of about `chunk_elements`, because `mean(dtype=...)` first copies the whole map to `dtype`, which for
    the 320x320 map of Dy-YOLOv7 costs ~10 ms per image out of cache, against ~1 ms for bands that stay in cache.
    """
    if x.dtype == dtype:
        return x.mean((2, 3), keepdim=True)
    b, c, h, w = x.shape
    rows = max(1, chunk_elements // max(1, b * c * w))
    total = torch.zeros((b, c, 1, 1), dtype=dtype, device=x.device)
    for band in x.split(rows, 2):
        total += band.sum((2, 3), keepdim=True, dtype=dtype)
    return total / (h * w)
