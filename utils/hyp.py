"""Hyperparameter files: loading with one-line errors, and the loss gains scaled to a model and image size (the
reference's train_step1.py). Shared by training and by the sweep's oracle loss."""
from __future__ import annotations

import math
from collections.abc import Callable

from utils.errors import TrainOptionError
from utils.yaml_io import read_yaml_mapping

# The hyperparameters the recipe reads without a default (the shipped hyp/*.yaml have all of them).
HYP_KEYS = ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr',
            'box', 'cls', 'cls_pw', 'obj', 'obj_pw', 'anchor_t', 'hsv_h', 'hsv_s', 'hsv_v', 'degrees', 'translate',
            'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup')

_POSITIVE = (lambda v: v > 0, 'must be positive')
_NON_NEGATIVE = (lambda v: v >= 0, 'must be >= 0')
_PROBABILITY = (lambda v: 0 <= v <= 1, 'must lie in [0, 1] (a probability)')
_MOMENTUM = (lambda v: 0 <= v < 1, 'must lie in [0, 1) (SGD momentum / Adam beta1)')
# Values no run can train with (a negative rate, a probability above 1, ...); a key a file lacks is not checked.
# Augmentation magnitudes (degrees, translate, hsv_*) are symmetric draws, so any finite value is meaningful there.
HYP_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    'lr0': _POSITIVE, 'lrf': _NON_NEGATIVE, 'momentum': _MOMENTUM, 'warmup_momentum': _MOMENTUM,
    'weight_decay': _NON_NEGATIVE, 'warmup_epochs': _NON_NEGATIVE, 'warmup_bias_lr': _NON_NEGATIVE,
    'warmup_min_iterations': _NON_NEGATIVE, 'nbs': (lambda v: v >= 1, 'must be at least 1 (images)'),
    'hard_path_lr_gain': (_POSITIVE[0], 'must be positive (1 = the reference\'s single rate)'),
    'box': _NON_NEGATIVE, 'cls': _NON_NEGATIVE, 'obj': _NON_NEGATIVE, 'cls_pw': _POSITIVE, 'obj_pw': _POSITIVE,
    'anchor_t': _POSITIVE, 'fl_gamma': _NON_NEGATIVE,
    **dict.fromkeys(('fliplr', 'flipud', 'mosaic', 'mixup', 'copy_paste', 'paste_in'), _PROBABILITY),
}


def load_hyp(path: str) -> dict:
    """Hyperparameters from a YAML mapping holding every key of HYP_KEYS as a finite number within HYP_RANGES;
    one-line TrainOptionError."""
    hyp = read_yaml_mapping(path, TrainOptionError, 'hyperparameters',
                            f'--hyp {path}: no such file (see hyp/ for the shipped ones)')
    missing = [k for k in HYP_KEYS if k not in hyp]
    if missing:
        raise TrainOptionError(f'--hyp {path}: missing {", ".join(missing)}; start from a shipped file such as '
                               f'hyp/hyp.scratch.p5.yaml')
    for key, value in hyp.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TrainOptionError(f'--hyp {path}: {key} must be a number, got {value!r}')
        if not math.isfinite(value):  # a NaN trains to the end and saves NaN weights
            raise TrainOptionError(f'--hyp {path}: {key} is {value}; give a finite number')
        valid, rule = HYP_RANGES.get(key, (None, ''))
        if valid is not None and not valid(value):
            raise TrainOptionError(f'--hyp {path}: {key} {rule}, got {value}')
    return hyp


def scale_hyp(hyp: dict, nl: int, nc: int, img_size: int, label_smoothing: float) -> dict:
    """Loss gains for the number of levels, classes and image size (the reference's train_step1.py hyp scaling)."""
    hyp = dict(hyp)
    hyp['box'] *= 3.0 / nl
    hyp['cls'] *= nc / 80.0 * 3.0 / nl
    hyp['obj'] *= (img_size / 640) ** 2 * 3.0 / nl
    hyp['label_smoothing'] = label_smoothing
    return hyp
