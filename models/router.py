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
        dtype = self.layer1.weight.dtype  # fp32 when the backbones run in bfloat16 (--bf16): routes stay exact
        pooled = torch.cat([x.mean((2, 3), keepdim=True, dtype=dtype) for x in xs], 1)
        return self.layer2(self.relu(self.layer1(pooled))).flatten(1).sigmoid()
