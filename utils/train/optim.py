"""Step-1 optimizer recipe (the reference's train_step1.py): freezing, parameter groups, SGD/Adam, lr schedule, warmup,
accumulation.

Faithful to the reference (`train_step1.py`): three groups in its order — group 0 BatchNorm weights and IDetect
implicit parameters (no decay), group 1 every other module `weight` (decay), group 2 every module `bias` (no
decay) — filled by one walk of `model.named_modules()` (per module: bias, then weight, then `im`, then `ia`
implicits), so group contents and order match the reference's optimizer state_dicts; weight decay scaled by
total_batch·accumulate/nbs; SGD (Nesterov) or Adam (β1 = momentum); one-cycle cosine or linear schedule; linear
warmup of lr, SGD momentum and accumulation over max(round(warmup_epochs·nb), 1000) iterations, with group 2
(biases) falling from `warmup_bias_lr` and the others rising from 0.

Fixed: `--freeze N` maps the reference's prefix `model.{i}.` (which never matches the dual model, a no-op) to
backbone 1's `model_b.{i}.`. The schedule is a picklable object, not a lambda. Warmup stores Python floats
(the reference stored numpy floats, which `torch.load(weights_only=True)` refuses in an optimizer state_dict).
The linear schedule with one epoch does not divide by zero. The scaled weight decay is returned in the
optimizer, not written back into `hyp` (the reference mutated the caller's dict). SyncBatchNorm weights count
as BatchNorm weights too (the reference tested `nn.BatchNorm2d` only; it built the groups before converting).

Extension: hyp `hard_path_lr_gain` (default 1, the reference's single rate) multiplies the learning rate of the
hard path's own layers, backbone 2 and head 2 (`HARD_PATH_SECTIONS`). With a gain other than 1 those layers get
three more groups (3-5, the same three kinds in the same order) at lr0 · gain; warmup and the schedule treat them
as groups 0-2. Why it exists: trained from scratch for a few hundred steps, head 2 trails head 1 (see docs/demo.md's
experiments), and a larger step for the second path is what lets it pass head 1 early.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)
FREEZE_SECTION = 'model_b'  # `--freeze N` counts the layers of backbone 1
IMPLICIT_ATTRS = ('im', 'ia')  # IDetect's implicit layers, in the reference's grouping order
HARD_PATH_SECTIONS = ('model_b2', 'model_h2')  # backbone 2 and head 2: the layers only the hard path runs
GROUP_KINDS = 3  # BN weights + implicit, decayed weights, biases


def freeze_parameters(model: nn.Module, freeze: int | Sequence[int]) -> list[str]:
    """Make every parameter trainable, then freeze backbone-1 layers as --freeze says (the reference's rule: one
    value n = the first n layers, several values = those layer indices); returns the frozen names."""
    model = de_parallel(model)
    indices = list(range(freeze)) if isinstance(freeze, int) else \
        (list(range(freeze[0])) if len(freeze) == 1 else list(freeze))
    n = max(indices, default=-1) + 1
    prefixes = tuple(f'{FREEZE_SECTION}.{i}.' for i in indices)
    frozen = []
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(prefixes))  # the reference first unfreezes everything too
        if not p.requires_grad:
            frozen.append(name)
    layers = len(getattr(model, FREEZE_SECTION, ()))
    if n > layers:
        LOGGER.warning('--freeze: backbone 1 (%s) has %d layers; indices from %d on match nothing',
                       FREEZE_SECTION, layers, layers)
    if n > 0:
        LOGGER.info('Froze %d parameters of %s layers %s: %s', len(frozen), FREEZE_SECTION, indices,
                    ', '.join(frozen))
    return frozen


def _implicit_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The `implicit` parameters under a module's `im` then `ia` attributes (one layer or a ModuleList)."""
    found = []
    for attr in IMPLICIT_ATTRS:
        sub = getattr(module, attr, None)
        if isinstance(sub, nn.Module):
            found += [m.implicit for m in sub.modules() if isinstance(getattr(m, 'implicit', None), nn.Parameter)]
    return found


def parameter_groups(model: nn.Module, only: Callable[[str], bool] = lambda name: True
                     ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(BN weights + implicit parameters, other module weights, module biases), in the reference's order, of the
    modules whose names `only` accepts."""
    bn_and_implicit, weights, biases = [], [], []
    for name, module in de_parallel(model).named_modules():
        if not only(name):
            continue
        if isinstance(getattr(module, 'bias', None), nn.Parameter):
            biases.append(module.bias)
        if isinstance(module, _BatchNorm):
            if isinstance(module.weight, nn.Parameter):  # None without affine
                bn_and_implicit.append(module.weight)
        elif isinstance(getattr(module, 'weight', None), nn.Parameter):
            weights.append(module.weight)
        bn_and_implicit += _implicit_parameters(module)
    return bn_and_implicit, weights, biases


def nominal_accumulate(total_batch_size: int, nbs: int = 64) -> int:
    """Batches to accumulate per optimizer step so each step sees about nbs images."""
    return max(round(nbs / total_batch_size), 1)


def scaled_weight_decay(weight_decay: float, total_batch_size: int, nbs: int = 64) -> float:
    """Weight decay scaled by the images per optimizer step over the nominal batch."""
    return weight_decay * total_batch_size * nominal_accumulate(total_batch_size, nbs) / nbs


def build_optimizer(model: nn.Module, hyp: dict, adam: bool = False, total_batch_size: int = 64,
                    nbs: int = 64) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam over the three parameter groups; decay on group 1 only; 'initial_lr' recorded."""
    gain = float(hyp.get('hard_path_lr_gain', 1.0))
    if gain <= 0:
        raise ValueError(f'hyp hard_path_lr_gain must be positive, got {gain}')
    def on_hard_path(name: str) -> bool:
        return name.split('.')[0] in HARD_PATH_SECTIONS

    kinds = [(parameter_groups(model), 1.0)] if gain == 1 else \
        [(parameter_groups(model, lambda n: not on_hard_path(n)), 1.0), (parameter_groups(model, on_hard_path), gain)]
    decay = scaled_weight_decay(hyp['weight_decay'], total_batch_size, nbs)
    LOGGER.info('Scaled weight_decay = %s', decay)
    groups = []  # per kind: BN weights + implicit (no decay), weights (decay), biases (no decay)
    for (bn_and_implicit, weights, biases), lr_gain in kinds:
        lr = hyp['lr0'] * lr_gain
        groups += [{'params': bn_and_implicit, 'lr': lr}, {'params': weights, 'lr': lr, 'weight_decay': decay},
                   {'params': biases, 'lr': lr}]
    if adam:
        optimizer = torch.optim.Adam(groups, lr=hyp['lr0'], betas=(hyp['momentum'], 0.999))
    else:
        optimizer = torch.optim.SGD(groups, lr=hyp['lr0'], momentum=hyp['momentum'], nesterov=True)
    for group in optimizer.param_groups:
        group.setdefault('initial_lr', group['lr'])  # what LambdaLR records; warmup ramps towards it
    counts = [sum(len(optimizer.param_groups[j]['params']) for j in range(k, len(optimizer.param_groups), GROUP_KINDS))
              for k in (2, 1, 0)]
    LOGGER.info('Optimizer groups: %d .bias, %d conv.weight, %d other%s', *counts,
                f' (backbone 2 and head 2 at {gain:g}x lr0)' if gain != 1 else '')
    return optimizer


@dataclass(frozen=True)
class LRLambda:
    """lf(epoch), the lr multiplier: one-cycle cosine from 1 to lrf over `epochs`, or linear with `linear`."""
    epochs: int
    lrf: float
    linear: bool = False

    def __call__(self, epoch: float) -> float:
        """The multiplier at `epoch` (0-based; lf(0) = 1)."""
        if self.linear:
            return (1 - epoch / max(self.epochs - 1, 1)) * (1.0 - self.lrf) + self.lrf
        return ((1 - math.cos(epoch * math.pi / self.epochs)) / 2) * (self.lrf - 1) + 1


def lr_lambda(epochs: int, lrf: float, linear: bool = False) -> LRLambda:
    """The picklable per-epoch lr multiplier for `torch.optim.lr_scheduler.LambdaLR`."""
    return LRLambda(epochs, lrf, linear)


def warmup_iterations(hyp: dict, nb: int) -> int:
    """Warmup length nw in iterations: warmup_epochs·nb, at least 1000 (hyp `warmup_min_iterations`, our
    extension for small datasets and tests, lowers that floor)."""
    return max(round(hyp['warmup_epochs'] * nb), int(hyp.get('warmup_min_iterations', 1000)))


def apply_warmup(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch: int, lr_fn: Callable[[float], float],
                 hyp: dict, total_batch_size: int, nbs: int = 64) -> int:
    """Set each group's lr (and SGD momentum) for global iteration ni ≤ nw; returns the accumulate to use."""
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / total_batch_size]).round()))
    lf = lr_fn(epoch)
    for j, group in enumerate(optimizer.param_groups):
        start = hyp['warmup_bias_lr'] if j % GROUP_KINDS == 2 else 0.0  # groups 2 (and 5) hold the biases
        group['lr'] = float(np.interp(ni, xi, [start, group.setdefault('initial_lr', group['lr']) * lf]))
        if 'momentum' in group:  # Adam/AdamW groups carry 'betas' instead; β1 is not warmed up
            group['momentum'] = float(np.interp(ni, xi, [hyp['warmup_momentum'], hyp['momentum']]))
    return accumulate
