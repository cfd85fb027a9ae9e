"""Building blocks of the DynamicDet graphs (as the reference's models/common.py), with their fused (inference) forms.

Every block keeps the reference's attribute names, so state_dict keys match released checkpoints.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def autopad(k: int, p: int | None = None) -> int:
    """'Same' padding for an odd kernel k, unless p is given."""
    return k // 2 if p is None else p


def _activation(act: bool | nn.Module) -> nn.Module:
    if act is True:
        return nn.SiLU()
    return act if isinstance(act, nn.Module) else nn.Identity()


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, bias) of a conv whose output equals bn(conv(x)) in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    base = bn.bias - bn.running_mean * scale
    folded_b = base if bias is None else base + bias * scale
    return folded_w, folded_b


def conv_with_bias(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A Conv2d shaped like `template` (stride, padding, groups, dilation) taking over the given tensors (pass
    fresh ones, such as fold_batchnorm's: they become its parameters without a copy)."""
    # built on the meta device: the default initialisation would draw values that are replaced at once
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, template.stride,
                     template.padding, template.dilation, template.groups, bias=True, device='meta')
    conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return conv


class Conv(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → SiLU; after fuse(): Conv2d with bias → SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (eval-mode semantics)."""
        if self.bn is None:
            return
        weight, bias = fold_batchnorm(self.conv.weight, self.conv.bias, self.bn)
        self.conv = conv_with_bias(self.conv, weight, bias)
        self.bn = None


class ConvCheckpoint(Conv):
    """Conv that recomputes its activations in the backward pass (gradient checkpointing) when training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.requires_grad:
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


class RepConv(nn.Module):
    """RepVGG block: 3×3 conv+BN, 1×1 conv+BN (and identity BN when c1 == c2, s == 1), summed, then SiLU.

    fuse() re-parameterises the branches into one 3×3 conv `rbr_reparam`.
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        if k != 3 or autopad(k, p) != 1:
            raise ValueError(f'RepConv supports a 3x3 kernel with padding 1 only, got k={k}, p={p}')
        self.groups = g
        self.act = _activation(act)
        self.rbr_identity = nn.BatchNorm2d(c1) if c2 == c1 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, 1, groups=g, bias=False), nn.BatchNorm2d(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, groups=g, bias=False), nn.BatchNorm2d(c2))
        self.rbr_reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    def _identity_kernel(self, like: torch.Tensor) -> torch.Tensor:
        c_out, c_in_per_group = like.shape[:2]
        kernel = torch.zeros_like(like)
        for i in range(c_out):
            kernel[i, i % c_in_per_group, 1, 1] = 1.0
        return kernel

    @torch.no_grad()
    def fuse(self) -> None:
        """Merge the branches into a single 3×3 convolution with bias."""
        if self.rbr_reparam is not None:
            return
        dense_conv, dense_bn = self.rbr_dense
        weight, bias = fold_batchnorm(dense_conv.weight, None, dense_bn)
        w1, b1 = fold_batchnorm(self.rbr_1x1[0].weight, None, self.rbr_1x1[1])
        weight = weight + F.pad(w1, [1, 1, 1, 1])
        bias = bias + b1
        if self.rbr_identity is not None:
            wi, bi = fold_batchnorm(self._identity_kernel(weight), None, self.rbr_identity)
            weight, bias = weight + wi, bias + bi
        self.rbr_reparam = conv_with_bias(dense_conv, weight, bias)
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class SPPCSPC(nn.Module):
    """CSP spatial pyramid pooling (YOLOv7): max-pools 5/9/13 on one branch, a 1×1 shortcut on the other."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5,
                 k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        # Max-pools of odd kernels a then b (stride 1, padding k // 2) are exactly one max-pool of kernel
        # a + b - 1, so without gradients increasing odd kernels 5, 9, 13 run as 5, then 5 twice more on the
        # previous result (`steps`): the same numbers at a third of the comparisons (YOLOv5's SPPF identity).
        ks = [int(v) for v in k]
        self.chained = all(v % 2 for v in ks) and all(a < b for a, b in zip(ks, ks[1:]))
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in ks)
        steps = [ks[0]] + [b - a + 1 for a, b in zip(ks, ks[1:])]
        self.steps = nn.ModuleList(nn.MaxPool2d(kernel_size=s, stride=1, padding=s // 2) for s in steps)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        # Training keeps the reference's pools: at tied maxima (flat image regions) the chain would send the
        # gradient to another of the tied positions, and training would drift from the reference's.
        chain = self.chained and not (torch.is_grad_enabled() and x1.requires_grad)
        maps = [x1]
        for pool, step in zip(self.m, self.steps):
            maps.append(step(maps[-1]) if chain else pool(x1))
        y1 = self.cv6(self.cv5(torch.cat(maps, 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), dim=1))


class MP(nn.Module):
    """2×2 max-pool with stride 2."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class ReOrg(nn.Module):
    """Space-to-depth: (B, C, H, W) → (B, 4C, H/2, W/2), sub-grids in the reference's order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class Concat(nn.Module):
    """Concatenate a list of maps along `dimension`."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Shortcut(nn.Module):
    """Sum of two maps."""

    def __init__(self, dimension: int = 0):
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return xs[0] + xs[1]


class CBLinear(nn.Module):
    """Composite-backbone projection: one 1×1 conv (with bias) split into pieces of widths `c2s`."""

    def __init__(self, c1: int, c2s: Sequence[int], k: int = 1, s: int = 1, p: int | None = None, g: int = 1):
        super().__init__()
        self.c2s = [int(c) for c in c2s]
        self.conv = nn.Conv2d(c1, sum(self.c2s), k, s, autopad(k, p), groups=g, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.conv(x).split(self.c2s, dim=1)


class CBFuse(nn.Module):
    """Composite-backbone fusion: sum of piece idx[i] of the i-th CBLinear input, nearest-resized to the
    last input's size, plus the last input."""

    def __init__(self, idx: Sequence[int]):
        super().__init__()
        self.idx = [int(i) for i in idx]

    def forward(self, xs: list) -> torch.Tensor:
        target = xs[-1]
        size = target.shape[2:]
        out = target
        for pieces, i in zip(xs[:-1], self.idx):
            piece = pieces[i]
            out = out + (piece if piece.shape[2:] == size else F.interpolate(piece, size=size, mode='nearest'))
        return out
