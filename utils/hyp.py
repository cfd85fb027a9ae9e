"""Hyperparameter files: loading with one-line errors, and the loss gains scaled to a model and image size (the
reference's train_step1.py). Shared by training and by the sweep's oracle loss."""
from __future__ import annotations

from utils.errors import TrainOptionError
from utils.yaml_io import read_yaml_mapping

# The hyperparameters the recipe reads without a default (the shipped hyp/*.yaml have all of them).
HYP_KEYS = ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr',
            'box', 'cls', 'cls_pw', 'obj', 'obj_pw', 'anchor_t', 'hsv_h', 'hsv_s', 'hsv_v', 'degrees', 'translate',
            'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup')


def load_hyp(path: str) -> dict:
    """Hyperparameters from a YAML mapping holding every key of HYP_KEYS as a number; one-line TrainOptionError."""
    hyp = read_yaml_mapping(path, TrainOptionError, 'hyperparameters',
                            f'--hyp {path}: no such file (see hyp/ for the shipped ones)')
    missing = [k for k in HYP_KEYS if k not in hyp]
    if missing:
        raise TrainOptionError(f'--hyp {path}: missing {", ".join(missing)}; start from a shipped file such as '
                               f'hyp/hyp.scratch.p5.yaml')
    bad = [k for k, v in hyp.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise TrainOptionError(f'--hyp {path}: {bad[0]} must be a number, got {hyp[bad[0]]!r}')
    if hyp.get('hard_path_lr_gain', 1) <= 0:
        raise TrainOptionError(f'--hyp {path}: hard_path_lr_gain must be positive (1 = the reference\'s single rate), '
                               f'got {hyp["hard_path_lr_gain"]}')
    return hyp


def scale_hyp(hyp: dict, nl: int, nc: int, img_size: int, label_smoothing: float) -> dict:
    """Loss gains for the number of levels, classes and image size (the reference's train_step1.py hyp scaling)."""
    hyp = dict(hyp)
    hyp['box'] *= 3.0 / nl
    hyp['cls'] *= nc / 80.0 * 3.0 / nl
    hyp['obj'] *= (img_size / 640) ** 2 * 3.0 / nl
    hyp['label_smoothing'] = label_smoothing
    return hyp
