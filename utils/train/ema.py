"""Exponential moving average of a model's state (the reference's train_step1.py).

Faithful to the reference (`ModelEMA` of YOLOv7): a deep copy in eval mode with gradients off; after each
optimizer step `updates += 1`, d = decay·(1 − exp(−updates/2000)), and every floating-point state_dict entry
(parameters and buffers: BN running statistics, anchors) becomes d·ema + (1 − d)·model; integer buffers
(`num_batches_tracked`) are left alone. `update_attr` copies plain attributes (yaml, nc, hyp, names, …) like the
reference's `copy_attr`. Checkpoints store `.ema.state_dict()` and `.updates`.

Fixed: the reference's decay is a lambda attribute (the object cannot be pickled); here it is a method. The
reference unwraps DDP/DataParallel in `update` but not in `update_attr`, so under DDP the attributes were read
from the wrapper and never copied; both unwrap here.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from copy import deepcopy

import torch
from torch import nn

from utils.torch_utils import de_parallel

# The attributes the trainers copy onto the EMA before validation (the reference's train_step1.py).
EMA_ATTRIBUTES = ('yaml', 'nc', 'hyp', 'gr', 'names', 'stride', 'class_weights')


class ModelEMA:
    """Moving average of every floating-point state_dict entry of a model; `.ema` is the averaged module."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.decay = decay
        self.updates = updates  # restored from a checkpoint so the decay ramp continues
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The averaging weight d after `updates` updates: small at first so early EMA follows the model."""
        return self.decay * (1 - math.exp(-updates / 2000))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model` (call after each optimizer step)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        msd = de_parallel(model).state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(msd[key].detach(), alpha=1 - d)

    def update_attr(self, model: nn.Module, include: Iterable[str] = EMA_ATTRIBUTES,
                    exclude: Iterable[str] = ('process_group', 'reducer')) -> None:
        """Copy the named plain attributes of `model` (those it has; all public ones if `include` is empty)."""
        include, exclude = set(include), set(exclude)
        for key, value in vars(de_parallel(model)).items():
            if (include and key not in include) or key in exclude or key.startswith('_'):
                continue
            setattr(self.ema, key, value)
