"""Training flags (the reference's train_step1.py and train_step2.py), their checks, the distributed environment, and
--resume (the reference's train_step1.py).

Faithful: every reference flag with its default; `--img` for `--img-size`; one size means train = test size;
`--resume` alone picks the newest `last*.pt` under the working directory and restores the run's options.
Extended: `--patience` (early stopping), `--no-amp`, `--amp` (bf16 autocast on CPUs), `--allow-partial-weights`, `--seed`, torchrun's LOCAL_RANK.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from models.checkpoint import read_checkpoint
from models.config import load_config
from utils.cli import HelpFormatter, increment_path
from utils.errors import TrainOptionError
from utils.hyp import load_hyp
from utils.train.checkpoint import checkpoint_step
from utils.yaml_io import read_yaml_mapping

LOGGER = logging.getLogger(__name__)
ROUTER_LOSSES = ('adaptive', 'bce')
KEPT_ON_RESUME = ('resume', 'device', 'no_amp', 'local_rank', 'help')  # flags --resume does not replace


def add_train_flags(p: argparse.ArgumentParser, step: int) -> None:
    """The reference's flags for train_step1.py (step 1) or train_step2.py (step 2), plus our extensions."""
    p.add_argument('--weight', '--weights', type=str, default='',
                   help='initial weights path ("" = from scratch)' if step == 1 else
                   'the step-1 checkpoint whose detector the router learns to route (required)')
    p.add_argument('--cfg', type=str, default='', help='model.yaml path')
    p.add_argument('--data', type=str, default='data/coco.yaml', help='data.yaml path')
    p.add_argument('--hyp', type=str, default='hyp/hyp.scratch.p5.yaml',
                   help='hyperparameters path' if step == 1 else
                   'hyperparameters path (step 2\'s recipe: hyp/hyp.finetune.dynamic.adam.yaml with --adam; the '
                   'default is step 1\'s file, as in the reference)')
    p.add_argument('--epochs', type=int, default=300 if step == 1 else 2, help='number of training epochs')
    p.add_argument('--batch-size', type=int, default=16 if step == 1 else 1,
                   help='total batch size for all GPUs' if step == 1 else
                   'total batch size; 1 is the reference, B > 1 our extension (adaptive loss per image)')
    p.add_argument('--img-size', '--img', nargs='+', type=int, default=[640, 640], help='[train, test] image sizes')
    p.add_argument('--rect', action='store_true', help='rectangular training')
    p.add_argument('--resume', nargs='?', const=True, default=False, help='resume the most recent run or a last.pt')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--notest', action='store_true', help='only validate the final epoch')
    p.add_argument('--noautoanchor', action='store_true', help='disable the autoanchor check')
    p.add_argument('--bucket', type=str, default='', help='gsutil bucket (accepted, unused)')
    p.add_argument('--cache-images', action='store_true', help='cache images in RAM for faster training')
    p.add_argument('--image-weights', action='store_true', help='weighted image selection for training')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--multi-scale', action='store_true', help='vary img-size +/- 50%%')
    p.add_argument('--single-cls', action='store_true', help='train multi-class data as single-class')
    if step == 1:
        p.add_argument('--single-backbone', action='store_true', help='single-backbone config (plain OTA loss)')
    else:
        p.add_argument('--router-loss', choices=ROUTER_LOSSES, default='adaptive',
                       help='adaptive: the reference\'s s·(L1 - m/2) + (1 - s)·(L2 + m/2), linear in the score s; '
                            'bce (extension): binary cross-entropy of s against "L1 - L2 below its running median m", '
                            'which keeps scores off 0 and 1 (see docs/thresholds.md, Router losses)')
    p.add_argument('--adam', action='store_true',
                   help='use torch.optim.Adam() (beta1 = hyp momentum) instead of Nesterov SGD' if step == 1 else
                   'use torch.optim.AdamW() (beta1 = hyp momentum, as the reference\'s step 2) instead of '
                   'Nesterov SGD')
    p.add_argument('--sync-bn', action='store_true', help='use SyncBatchNorm, only available in DDP mode')
    p.add_argument('--local_rank', '--local-rank', type=int, default=-1, help='DDP parameter, do not modify')
    p.add_argument('--workers', type=int, default=8, help='maximum number of dataloader workers')
    p.add_argument('--project', default='runs/train', help='save to project/name')
    p.add_argument('--entity', default=None, help='W&B entity')
    p.add_argument('--name', default='exp', help='save to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--quad', action='store_true', help='quad dataloader')
    if step == 1:
        p.add_argument('--linear-lr', action='store_true', help='linear LR')
    p.add_argument('--label-smoothing', type=float, default=0.0, help='Label smoothing epsilon')
    p.add_argument('--upload_dataset', action='store_true', help='Upload dataset as W&B artifact table')
    p.add_argument('--bbox_interval', type=int, default=-1, help='Set bounding-box image logging interval for W&B')
    p.add_argument('--save_period', type=int, default=-1, help='Also save epoch_NNN.pt every N epochs (-1: off)')
    p.add_argument('--artifact_alias', type=str, default='latest', help='version of dataset artifact to be used')
    p.add_argument('--freeze', nargs='+', type=int, default=[0], help='Freeze layers: backbone of yolov7=50')
    p.add_argument('--v5-metric', action='store_true', help='assume maximum recall as 1.0 in AP calculation')
    p.add_argument('--patience', type=int, default=0, help='stop after N epochs without a better fitness (0: off)')
    p.add_argument('--no-amp', action='store_true',
                   help='train in fp32 on CUDA too (a way out of fp16 overflows; the CPU trains in fp32 already)')
    p.add_argument('--amp', action='store_true',
                   help='CPU: bfloat16 autocast (extension; off by default: fp32 as the reference, the same on '
                        'every CPU; faster only with native bf16, AVX512-BF16/AMX). CUDA always uses fp16 AMP')
    p.add_argument('--allow-partial-weights', action='store_true',
                   help='accept --weight even when fewer than half of the model tensors match it')
    p.add_argument('--seed', type=int, default=0, help='base seed: random, numpy and torch get seed + 2 + rank, as the reference; loader workers are seeded '
                   'from it too (not the reference\'s worker stream)')


def parse_train_options(prog: str, step: int, description: str, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line of train_step1.py / train_step2.py."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    add_train_flags(p, step)
    return p.parse_args(argv)


def distributed_env(opt: argparse.Namespace) -> None:
    """Set opt.world_size, opt.global_rank and opt.local_rank from torchrun / torch.distributed.launch."""
    opt.world_size = int(os.environ.get('WORLD_SIZE', 1))
    opt.global_rank = int(os.environ.get('RANK', -1))
    local = int(os.environ.get('LOCAL_RANK', opt.local_rank))
    opt.local_rank = local if opt.world_size > 1 or local != -1 else -1
    if opt.world_size > 1 and opt.global_rank == -1:
        opt.global_rank = opt.local_rank


def check_model_config(cfg: str, step: int) -> None:
    """One-line TrainOptionError unless --cfg is a model config file of this step (a router only in step 2)."""
    example = f'cfg/dy-yolov7-step{step}.yaml'
    if not cfg:  # our checkpoints hold weights only, so the architecture always comes from a config
        raise TrainOptionError(f'--cfg is required, e.g. --cfg {example} (--weight gives weights only)')
    if Path(cfg).is_dir():
        raise TrainOptionError(f'--cfg {cfg}: is a folder, not a model config; pass a file such as {example}')
    dynamic = bool(load_config(cfg)[0].get('dynamic'))  # a missing or malformed file is one ConfigError line
    if step == 1 and dynamic:  # its loss would expect both heads' maps and fail after the first step
        raise TrainOptionError(f'--cfg {cfg}: a step-2 config (it has a router); train_step1.py trains the '
                               f'detector: use the step-1 config, e.g. {example}')
    if step == 2 and not dynamic:
        raise TrainOptionError(f'--cfg {cfg}: not a step-2 config (no router); use cfg/*-step2.yaml')


def check_train_options(opt: argparse.Namespace, step: int = 1) -> None:
    """One-line TrainOptionError for values that cannot train (step: 1 or 2, the script's)."""
    if opt.epochs < 1:
        raise TrainOptionError(f'--epochs {opt.epochs}: must be at least 1')
    if opt.batch_size < 1:
        raise TrainOptionError(f'--batch-size {opt.batch_size}: must be at least 1')
    if opt.batch_size % opt.world_size:
        raise TrainOptionError(f'--batch-size {opt.batch_size} is not a multiple of the {opt.world_size} '
                               'processes (GPUs): use a multiple of the process count')
    if not 1 <= len(opt.img_size) <= 2 or min(opt.img_size) < 32:
        raise TrainOptionError(f'--img-size {" ".join(map(str, opt.img_size))}: give one or two sizes >= 32')
    check_model_config(opt.cfg, step)
    if step == 2 and not opt.weight:  # a router trained on a random detector is worthless
        raise TrainOptionError('--weight is required: the step-1 checkpoint whose detector the router learns to '
                               'route, e.g. --weight runs/train/dy-yolov7-step1/weights/last.pt')
    load_hyp(opt.hyp)  # a bad hyp file fails here, before the run folder exists
    opt.img_size.extend([opt.img_size[-1]] * (2 - len(opt.img_size)))
    opt.total_batch_size = opt.batch_size


def latest_run_checkpoint(search_dir: str | Path = '.') -> Path:
    """The most recently written last*.pt under search_dir (what a bare --resume continues)."""
    found = [p for p in Path(search_dir).glob('**/last*.pt') if p.is_file()]
    if not found:
        raise TrainOptionError(f'--resume: no last*.pt found under {Path(search_dir).resolve()}; '
                               'name a checkpoint: --resume runs/train/exp/weights/last.pt')
    return max(found, key=lambda p: p.stat().st_mtime)


def ignored_with_resume(opt: argparse.Namespace, step: int) -> list[str]:
    """The flags given with --resume that it replaces by the run's own (those differing from the defaults)."""
    p = argparse.ArgumentParser()
    add_train_flags(p, step)
    # argparse keeps its flag list in the private _actions only; it is how each dest's flag name is found
    return [a.option_strings[0] for a in p._actions if a.option_strings and a.dest not in KEPT_ON_RESUME
            and getattr(opt, a.dest, a.default) != a.default]


def read_resumable(ckpt_path: Path, step: int) -> dict:
    """The run options saved beside a checkpoint that this step can continue; one-line errors otherwise."""
    opt_file = ckpt_path.parent.parent / 'opt.yaml'
    saved = read_yaml_mapping(opt_file, TrainOptionError, "the run's options",
                              f'--resume {ckpt_path}: its run folder has no opt.yaml ({opt_file}); '
                              'start a new run with --weight instead')
    ckpt = read_checkpoint(ckpt_path)
    if ckpt.get('epoch', -1) == -1 or ckpt.get('optimizer') is None:
        raise TrainOptionError(f'--resume {ckpt_path}: this run is finished (stripped checkpoint), nothing to '
                               'resume; fine-tune from it with --weight instead')
    run_step = checkpoint_step(ckpt)
    if run_step != step:  # the other step's optimizer has other parameter groups
        raise TrainOptionError(f'--resume {ckpt_path}: this checkpoint is a step-{run_step} run\'s; resume it with '
                               f'train_step{run_step}.py --resume {ckpt_path}')
    data = saved.get('data')
    if data is not None and not Path(str(data)).is_file():
        raise TrainOptionError(f'--resume {ckpt_path}: the run\'s data YAML {data} is not found; correct `data:` in '
                               f'{opt_file} (--data is ignored with --resume)')
    return saved


def resume_options(opt: argparse.Namespace, step: int = 1) -> argparse.Namespace:
    """Replace the options by the resumed run's opt.yaml (keeping this process's rank) and point at its files."""
    ckpt_path = Path(opt.resume) if isinstance(opt.resume, str) else latest_run_checkpoint()
    if not ckpt_path.is_file():
        raise TrainOptionError(f'--resume {ckpt_path}: no such checkpoint')
    run_dir = ckpt_path.parent.parent
    saved = read_resumable(ckpt_path, step)
    ignored = ignored_with_resume(opt, step)
    if ignored and getattr(opt, 'global_rank', -1) in (-1, 0):  # once, not once per DDP process
        LOGGER.warning(f'WARNING: --resume continues with the run\'s own options ({run_dir / "opt.yaml"}); '
                       f'ignored: {", ".join(ignored)}')
    keep = {k: getattr(opt, k) for k in ('local_rank', 'global_rank', 'world_size', 'device') if hasattr(opt, k)}
    if getattr(opt, 'no_amp', False):  # the way out of fp16 overflows must work on the run that overflowed
        keep['no_amp'] = True
    resumed = argparse.Namespace(**{**vars(opt), **saved, **keep})
    resumed.resume, resumed.weight = True, str(ckpt_path)
    resumed.cfg = str(run_dir / 'cfg.yaml') if (run_dir / 'cfg.yaml').is_file() else saved.get('cfg', '')
    resumed.hyp = str(run_dir / 'hyp.yaml') if (run_dir / 'hyp.yaml').is_file() else saved.get('hyp', '')
    resumed.batch_size = saved.get('total_batch_size', saved.get('batch_size'))
    resumed.save_dir = str(run_dir)
    return resumed


def prepare_options(opt: argparse.Namespace, step: int = 1) -> argparse.Namespace:
    """Distributed environment, resume, checks and the run folder's name, in the reference's order (step: the
    training script's, 1 or 2)."""
    distributed_env(opt)
    if opt.resume:
        opt = resume_options(opt, step)
    check_train_options(opt, step)
    if not opt.resume:
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, opt.exist_ok))
    return opt
