"""Training checkpoints (the reference's train_step1.py): what is saved when, stripping, and restoring.

Faithful: the reference's fields (`epoch`, `best_fitness`, `training_results`, `model`, `ema`, `updates`,
`optimizer`, `wandb_id`) and file policy (last, best, best_NNN from epoch 200, epoch_NNN at epoch 0, every 25th
and the last 5). Fixed: only tensors, numbers, strings and plain containers (fp16 state_dicts, `best_fitness` a
float), so `torch.load(weights_only=True)` reads every checkpoint; every write is atomic (temp file + rename).
Extended: `--save_period N` also keeps `epoch_NNN.pt` every N epochs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models.checkpoint import copy_checkpoint, half_state_dict, load_weights, read_checkpoint, save_checkpoint
from utils.errors import TrainOptionError
from utils.torch_utils import de_parallel
from utils.train.ema import ModelEMA

LOGGER = logging.getLogger(__name__)
ROUTER = 'router'  # the state_dict prefix of step 2's router: only step-2 checkpoints hold it


def checkpoint_step(ckpt: dict) -> int:
    """2 for a checkpoint holding a router (a step-2 run's), 1 otherwise."""
    return 2 if any(ROUTER in k for k in ckpt.get('model') or {}) else 1


def non_finite_tensors(ckpt: dict) -> list[str]:
    """The names of the model and EMA entries holding NaN or inf (fp16 also overflows above 65504)."""
    return [f'{entry}.{k}' for entry in ('model', 'ema') for k, v in (ckpt.get(entry) or {}).items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def training_checkpoint(epoch: int, best_fitness: float, results_text: str, model: torch.nn.Module,
                        ema: ModelEMA | None, optimizer: torch.optim.Optimizer) -> dict:
    """The reference's checkpoint fields made of state_dicts, numbers and strings."""
    return {'epoch': epoch, 'best_fitness': float(best_fitness), 'training_results': results_text,
            'model': half_state_dict(de_parallel(model)),
            'ema': half_state_dict(ema.ema) if ema is not None else None,
            'updates': ema.updates if ema is not None else 0,
            'optimizer': optimizer.state_dict(), 'wandb_id': None}


def checkpoint_names(epoch: int, epochs: int, is_best: bool, save_period: int = -1) -> list[str]:
    """File names this epoch's checkpoint is written to (besides last.pt)."""
    names = []
    if is_best:
        names.append('best.pt')
        if epoch >= 200:
            names.append(f'best_{epoch:03d}.pt')
    if epoch == 0 or (epoch + 1) % 25 == 0 or epoch >= epochs - 5 or (save_period > 0 and (epoch + 1) % save_period == 0):
        names.append(f'epoch_{epoch:03d}.pt')
    return names


def save_epoch(ckpt: dict, weights_dir: Path, epoch: int, epochs: int, is_best: bool, save_period: int = -1) -> None:
    """last.pt, then best / epoch copies as the policy says; each written atomically. The copies are byte copies
    of last.pt: serialising a checkpoint costs ~25x copying its file."""
    last = weights_dir / 'last.pt'
    save_checkpoint(ckpt, last)
    for name in checkpoint_names(epoch, epochs, is_best, save_period):
        copy_checkpoint(last, weights_dir / name)


def strip_checkpoint(path: Path, saved: dict | None = None) -> None:
    """Finished-run form: `model` ← `ema`, training state dropped, epoch −1 (what --weight and releases use).
    `saved`: the checkpoint dict last written to `path`, when the caller still holds it (spares reading it back)."""
    ckpt = dict(saved) if saved is not None else read_checkpoint(path)
    if ckpt.get('ema') is not None:
        ckpt['model'] = ckpt['ema']
    ckpt.update(optimizer=None, training_results=None, wandb_id=None, ema=None, updates=None, epoch=-1)
    save_checkpoint(ckpt, path)
    LOGGER.info(f'Optimizer stripped from {path}, {path.stat().st_size / 1e6:.1f}MB')


@dataclass
class RestoredState:
    """What a checkpoint given as --weight (or resumed) brings back besides the weights."""
    start_epoch: int = 0
    best_fitness: float = 0.0
    results_text: str | None = None


def epochs_to_train(ckpt: dict, epochs: int, weights: str) -> int:
    """--epochs, or, when the checkpoint (saved after epoch E, counted from 0) is already past them, --epochs + E:
    the reference's fine-tuning of an unstripped checkpoint, which starts at E + 1 and so trains --epochs − 1 more
    epochs (its learning-rate schedule keeps the --epochs count: Trainer.lr_function)."""
    saved_epoch = int(ckpt.get('epoch', -1))
    if saved_epoch >= 0 and epochs < saved_epoch + 1:
        LOGGER.info(f'{weights} has been trained for {saved_epoch} epochs. Fine-tuning for {epochs} additional '
                    f'epochs.')  # the reference's message and count
        epochs += saved_epoch
    return epochs


def restore_training_state(ckpt: dict, optimizer: torch.optim.Optimizer, ema: ModelEMA | None,
                           source: str = 'the checkpoint') -> RestoredState:
    """Optimizer (its learning rates included), EMA, best fitness, results text and start epoch from a checkpoint;
    absent keys restore nothing. Call it after creating the lr scheduler, which resets every group's lr."""
    state = RestoredState()
    if ckpt.get('optimizer') is not None:
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except ValueError as e:  # torch: another number of parameter groups, or groups of other sizes
            raise TrainOptionError(f'{source}: its optimizer state does not fit this run\'s ({e}); it was saved '
                                   'with another step, model or hyp (hard_path_lr_gain): train with those, or start '
                                   'from a finished (stripped) checkpoint') from None
        state.best_fitness = float(ckpt.get('best_fitness') or 0.0)
    if ema is not None and ckpt.get('ema') is not None:
        load_weights(ema.ema, ckpt, entry='ema')
        ema.updates = int(ckpt.get('updates') or 0)
    state.results_text = ckpt.get('training_results')
    state.start_epoch = int(ckpt.get('epoch', -1)) + 1
    return state
