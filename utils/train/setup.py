"""What a training run builds before its first step (the reference's train_step1.py): run folder files, seeds, the
model with its
initial weights, the data loaders, and the hyperparameter scaling of §6.5.

Faithful: name/shape intersection loading without `anchor` keys ("Transferred a/b items"), fp16 rounding of the
fresh model, hyp scaling, loaders' arguments. Fixed: a checkpoint of another architecture is refused unless
--allow-partial-weights; what was not loaded is reported; released `{'model': …}` checkpoints restore nothing else.
"""
from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from models.checkpoint import load_weights, read_checkpoint
from models.yolo import Model
from utils.data.dataloaders import create_dataloader
from utils.errors import TrainOptionError
from utils.yaml_io import read_yaml

LOGGER = logging.getLogger(__name__)
MIN_TRANSFER_SHARE = 0.5  # below this the checkpoint is for another architecture


def init_seeds(seed: int) -> None:
    """Seed python, numpy and torch (the reference: 2 + rank), and set cuDNN as the reference's init_torch_seeds:
    seed 0 deterministic, any other seed autotuned (cudnn.benchmark; training's input size is fixed, so the
    per-shape tuning is paid once). The flags only matter on CUDA."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (False, True) if seed == 0 else (True, False)


def write_run_files(opt: argparse.Namespace, hyp: dict, save_dir: Path) -> None:
    """hyp.yaml, opt.yaml and (new runs) cfg.yaml in the run folder, so --resume can rebuild the run."""
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / 'hyp.yaml').write_text(yaml.safe_dump(hyp, sort_keys=False))
    plain = {k: v for k, v in vars(opt).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    (save_dir / 'opt.yaml').write_text(yaml.safe_dump(plain, sort_keys=False))
    if not opt.resume and opt.cfg:
        (save_dir / 'cfg.yaml').write_text(yaml.safe_dump(read_yaml(opt.cfg, TrainOptionError, 'a model config'), sort_keys=False))


def load_initial_weights(model: Model, opt: argparse.Namespace) -> dict:
    """Copy --weight's matching tensors into the model; returns the checkpoint (for the training state)."""
    if not opt.weight:
        return {}
    ckpt = read_checkpoint(opt.weight)
    exclude = ('anchor',) if opt.cfg and not opt.resume else ()
    keys = load_weights(model, ckpt, strict=False, exclude=exclude)
    own = model.state_dict()
    LOGGER.info(f'Transferred {len(keys)}/{len(own)} items from {opt.weight}')
    skipped = [k for k in own if k not in keys and not any(x in k for x in exclude)]
    if skipped:
        LOGGER.info(f'Not in {opt.weight} or of another shape ({len(skipped)}): {", ".join(skipped[:5])}'
                    f'{", …" if len(skipped) > 5 else ""}')
    if len(keys) < MIN_TRANSFER_SHARE * len(own) and not opt.allow_partial_weights:
        raise TrainOptionError(f'--weight {opt.weight}: only {len(keys)}/{len(own)} tensors fit {opt.cfg}; it was '
                               'trained for another config (pass the matching --cfg, or --allow-partial-weights)')
    return ckpt


def build_train_model(opt: argparse.Namespace, hyp: dict, nc: int, device: torch.device) -> tuple[Model, dict]:
    """The model from --cfg with its initial weights, on the device, rounded once through fp16 as the reference."""
    model = Model(opt.cfg, ch=3, nc=nc, anchors=hyp.get('anchors'))
    ckpt = load_initial_weights(model, opt)
    return model.to(device), ckpt


def train_loader(opt: argparse.Namespace, data: dict, hyp: dict, img_size: int, gs: int, rank: int):
    """The augmented training loader of this rank (per-rank batch = total / world size)."""
    return create_dataloader(data['train'], img_size, opt.batch_size // opt.world_size, gs, opt, hyp=hyp,
                             augment=True, cache=opt.cache_images, rect=opt.rect, rank=rank,
                             world_size=opt.world_size, workers=opt.workers, image_weights=opt.image_weights,
                             quad=opt.quad, prefix='train: ', nc=None, seed=opt.seed)  # classes checked after


def val_loader(opt: argparse.Namespace, data: dict, hyp: dict, img_size: int, gs: int, batch_size: int):
    """The rect validation loader (rank 0 only)."""
    return create_dataloader(data['val'], img_size, batch_size, gs, opt, hyp=hyp, cache=opt.cache_images,
                             rect=True, rank=-1, world_size=opt.world_size, workers=opt.workers, pad=0.5,
                             prefix='val: ', nc=data['nc'])[0]


def check_label_classes(labels: list[np.ndarray], nc: int, data_file: str, label_files: list[str]) -> None:
    """Every label class must be below nc (the data layer drops such rows; a wrong nc would drop them all)."""
    over = [(int(x[:, 0].max()), f) for x, f in zip(labels, label_files) if len(x) and x[:, 0].max() >= nc]
    if over:
        top, file = max(over)
        raise TrainOptionError(f'{data_file}: labels use class {top} but nc is {nc} (in {file}; {len(over)} label '
                               f'files over nc); set nc/names to cover every class or fix the labels')
