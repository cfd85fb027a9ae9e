"""IDetect: the YOLOv7 detection layer with implicit knowledge (the reference's models/common.py), raw maps and box
decoding."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class _Implicit(nn.Module):
    """A learned per-channel tensor of shape (1, C, 1, 1), initialised from N(mean, std²)."""

    def __init__(self, channel: int, mean: float, std: float):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)


class ImplicitA(_Implicit):
    """Learned additive per-channel offset."""

    def __init__(self, channel: int, mean: float = 0.0, std: float = 0.02):
        super().__init__(channel, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(_Implicit):
    """Learned multiplicative per-channel scale."""

    def __init__(self, channel: int, mean: float = 1.0, std: float = 0.02):
        super().__init__(channel, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


class IDetect(nn.Module):
    """Detection layer over nl feature maps.

    Training forward: list of nl raw maps (B, na, H, W, nc+5), pre-sigmoid.
    Eval forward: (decoded (B, Σ na·H·W, nc+5) with [cx, cy, w, h] in input pixels and sigmoid scores,
    list of raw maps).
    """

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer('anchors', a)  # grid units once the model has set the strides
        self.register_buffer('anchor_grid', a.clone().view(self.nl, 1, -1, 1, 1, 2))  # pixels
        self.stride: torch.Tensor | None = None
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)
        self.fused = False

    def raw_maps(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level: (B, na, H, W, nc+5) logits."""
        maps = []
        for i, x in enumerate(xs):
            x = x.to(self.m[i].weight.dtype)  # fp32 heads on bfloat16 backbones (--bf16): boxes keep pixel precision
            y = self.m[i](x) if self.fused else self.im[i](self.m[i](self.ia[i](x)))
            bs, _, ny, nx = y.shape
            maps.append(y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return maps

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Raw maps → (B, Σ na·H·W, nc+5): boxes in input pixels, sigmoid objectness and class scores."""
        out = []
        for i, raw in enumerate(maps):
            bs, _, ny, nx, _ = raw.shape
            yv, xv = torch.meshgrid(torch.arange(ny, device=raw.device, dtype=raw.dtype),
                                    torch.arange(nx, device=raw.device, dtype=raw.dtype), indexing='ij')
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
            y = raw.sigmoid()
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]  # a 0-dim tensor: no .item(), one compiled graph
            wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(out, 1)

    def forward(self, xs: list[torch.Tensor]):
        maps = self.raw_maps(xs)
        if self.training:
            return maps
        return self.decode(maps), maps

    def initialize_biases(self) -> None:
        """Prior biases: objectness log(8 / (640/s)²), classes log(0.6 / (nc − 0.99)) (the reference's models/yolo.py
        (Model._initialize_biases))."""
        with torch.no_grad():
            for conv, s in zip(self.m, self.stride.tolist()):
                b = conv.bias.view(self.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold ImplicitA into the conv bias and ImplicitM into weight and bias."""
        if self.fused:
            return
        for conv, ia, im in zip(self.m, self.ia, self.im):
            w = conv.weight.reshape(conv.out_channels, -1)
            conv.bias += (w @ ia.implicit.reshape(-1, 1)).squeeze(1)
            scale = im.implicit.reshape(-1)
            conv.bias *= scale
            conv.weight *= scale.view(-1, 1, 1, 1)
        self.fused = True
