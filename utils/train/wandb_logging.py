"""Weights & Biases logging of a training run (the reference's utils/wandb_logging/wandb_utils.py::WandbLogger,
written anew): on when `wandb` imports and neither WANDB_DISABLED nor WANDB_MODE=disabled says otherwise.

One W&B run per training, named by the run folder under project --project (entity --entity), with the options and
hyperparameters as its config; each epoch's losses, metrics and learning rates; validation images with their
predictions every --bbox_interval epochs; the dataset as an artifact with --upload_dataset; the model as an
artifact every --save_period epochs and at the end; the result plots at the end. A resumed training continues the
same W&B run (the checkpoint's `wandb_id`). Data paths written `wandb-artifact://NAME` in the data YAML are
downloaded from the artifact NAME at version --artifact_alias. Without `wandb`, a W&B flag given on the command
line warns once and nothing else changes. When `wandb.init` fails (installed but not logged in, no network), one
warning says how to fix it and the training goes on without W&B. W&B writes under the run folder unless WANDB_DIR
is set.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from utils.errors import UserError

LOGGER = logging.getLogger(__name__)

ARTIFACT_PREFIX = 'wandb-artifact://'
FLAG_DEFAULTS = {'entity': None, 'upload_dataset': False, 'bbox_interval': -1, 'artifact_alias': 'latest'}
RESULT_PLOTS = ('results.png', 'confusion_matrix.png', 'F1_curve.png', 'PR_curve.png', 'P_curve.png', 'R_curve.png')


class WandbError(UserError, RuntimeError):
    """A W&B request the run cannot honour (one line)."""


def wandb_module():
    """The `wandb` module, or None when it is not installed, broken or disabled by the environment."""
    if os.environ.get('WANDB_DISABLED', '').lower() in ('1', 'true', 'yes') or \
            os.environ.get('WANDB_MODE', '').lower() == 'disabled':
        return None
    try:
        import wandb
    except Exception:  # a broken install raises more than ImportError; either way W&B stays off
        return None
    return wandb


def warn_unused_flags(opt: argparse.Namespace) -> None:
    """One warning naming the W&B flags given although W&B is off."""
    given = [f'--{name}' for name, default in FLAG_DEFAULTS.items() if getattr(opt, name, default) != default]
    if given:
        LOGGER.warning(f'WARNING: {", ".join(given)}: W&B is not installed (pip install wandb) or is disabled by '
                       'WANDB_DISABLED/WANDB_MODE; ignored')


def _split_paths(data: dict, split: str) -> list[str]:
    paths = data.get(split)
    return [paths] if isinstance(paths, str) else [str(p) for p in paths or []]


def check_artifact_paths(data: dict, resolvable: bool) -> None:
    """WandbError when the data YAML names a W&B artifact that this process cannot download."""
    named = [s for s in ('train', 'val', 'test') if any(p.startswith(ARTIFACT_PREFIX) for p in _split_paths(data, s))]
    if named and not resolvable:
        raise WandbError(f'the data YAML\'s {", ".join(named)} split is a W&B artifact ({ARTIFACT_PREFIX}…): that needs '
                         'wandb installed and a single training process (download it first for DDP)')


class WandbRun:
    """The W&B side of one training run (rank 0 only)."""

    def __init__(self, wandb, run, opt: argparse.Namespace, save_dir: Path) -> None:
        self.wandb, self.run, self.opt, self.save_dir = wandb, run, opt, save_dir

    @classmethod
    def start(cls, opt: argparse.Namespace, hyp: dict, save_dir: Path, resume_id: str | None) -> WandbRun | None:
        """A new W&B run, or the checkpoint's one continued; None when W&B is off."""
        wandb = wandb_module()
        if wandb is None:
            warn_unused_flags(opt)
            return None
        config = {k: v for k, v in vars(opt).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
        project = 'YOLOR' if opt.project == 'runs/train' else Path(opt.project).stem  # the reference's naming
        where = {} if os.environ.get('WANDB_DIR') else {'dir': str(save_dir)}  # a user's WANDB_DIR wins
        try:
            run = wandb.init(project=project, name=Path(save_dir).name, entity=opt.entity, job_type='Training',
                             config={**config, 'hyp': hyp}, id=resume_id, resume='allow' if resume_id else None,
                             **where)
        except Exception as e:  # no API key, no network, a refused project: W&B is optional, the training is not
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            LOGGER.warning(f'WARNING: W&B could not start ({reason}); training goes on without it. To log to W&B '
                           'run `wandb login`, or set WANDB_MODE=offline (logs kept locally) or WANDB_MODE=disabled')
            return None
        LOGGER.info(f'W&B: run {run.id} ({"continued" if resume_id else "new"}) in project {project}')
        return cls(wandb, run, opt, Path(save_dir))

    @property
    def id(self) -> str:
        """The W&B run id (saved in checkpoints as `wandb_id`)."""
        return self.run.id

    def resolve_data(self, data: dict) -> dict:
        """data with each `wandb-artifact://NAME` split path downloaded from NAME:--artifact_alias."""
        resolved = dict(data)
        for split in ('train', 'val', 'test'):
            paths = _split_paths(data, split)
            if any(p.startswith(ARTIFACT_PREFIX) for p in paths):
                resolved[split] = [self._download(p) if p.startswith(ARTIFACT_PREFIX) else p for p in paths]
        return resolved

    def _download(self, path: str) -> str:
        name = f'{path[len(ARTIFACT_PREFIX):]}:{self.opt.artifact_alias}'
        folder = str(self.run.use_artifact(name).download())
        LOGGER.info(f'W&B: artifact {name} downloaded to {folder}')
        return folder

    def upload_dataset(self, data_file: str, data: dict) -> None:
        """The data YAML and its splits (folders or list files) as one dataset artifact."""
        artifact = self.wandb.Artifact(f'run_{self.id}_dataset', type='dataset')
        artifact.add_file(str(data_file), name=Path(data_file).name)
        for split in ('train', 'val', 'test'):
            for k, path in enumerate(_split_paths(data, split)):
                name = split if k == 0 else f'{split}{k}'
                if Path(path).is_dir():
                    artifact.add_dir(path, name=name)
                elif Path(path).is_file():
                    artifact.add_file(path, name=f'{name}{Path(path).suffix}')
        self.run.log_artifact(artifact)

    def bbox_due(self, epoch: int) -> bool:
        """Whether validation should draw its prediction images this epoch for --bbox_interval."""
        interval = self.opt.bbox_interval
        return interval > 0 and (epoch + 1) % interval == 0

    def log_epoch(self, scalars: dict, epoch: int) -> None:
        """One epoch's losses, metrics and learning rates; its validation images when --bbox_interval is due."""
        values = {**scalars, 'epoch': epoch}
        if self.bbox_due(epoch):
            values['Bounding Box Debugger/Images'] = [self.wandb.Image(str(p), caption=p.name)
                                                       for p in sorted(self.save_dir.glob('test_batch*_pred.jpg'))]
        self.run.log(values)

    def log_model(self, path: Path, epoch: int, best: bool, final: bool = False) -> None:
        """A checkpoint as a model artifact, aliased by epoch (and best / last)."""
        artifact = self.wandb.Artifact(f'run_{self.id}_model', type='model',
                                       metadata={'epoch': epoch + 1, 'save_period': self.opt.save_period})
        artifact.add_file(str(path), name=path.name)
        aliases = ['last' if final else 'latest', f'epoch {epoch + 1}'] + (['best'] if best else [])
        self.run.log_artifact(artifact, aliases=aliases)

    def finish(self, ok: bool) -> None:
        """The result plots, then close the W&B run (exit code 1 when training failed)."""
        if ok:
            plots = [self.save_dir / name for name in RESULT_PLOTS if (self.save_dir / name).is_file()]
            if plots:
                self.run.log({'Results': [self.wandb.Image(str(p), caption=p.name) for p in plots]})
        self.run.finish(exit_code=0 if ok else 1)
