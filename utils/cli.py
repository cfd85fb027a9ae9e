"""What every script needs: logging set-up, run folders, image-size checks and one-line failures."""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import re
import sys
from pathlib import Path

from utils.errors import UserError
from utils.torch_utils import BF16_MODES

LOGGER = logging.getLogger(__name__)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's --help: the description's lines kept as written (its example commands) and each flag's help
    ending in its default (a flag without help text shows its default alone), except where that says nothing: None
    (the help says what leaving the flag out does), a switch's False/True, '' and [] (an empty path or list)."""

    @staticmethod
    def _says_something(default) -> bool:
        return not (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                    or (isinstance(default, (str, list)) and not default))

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return super()._get_help_string(action) if self._says_something(action.default) else action.help

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and self._says_something(action.default):
            action = copy.copy(action)
            action.help = '(default: %(default)s)'
        return super()._format_action(action)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message is emitted (notebooks and test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = True) -> None:
    """Plain messages on stderr (INFO, or WARNING when quiet), like the reference's prints."""
    logging.basicConfig(format='%(message)s', level=logging.INFO if verbose else logging.WARNING, force=True,
                        handlers=[_CurrentStderr()])


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """runs/test/exp → runs/test/exp2, exp3, … unless exist_ok (then the path itself)."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    taken = [int(m.group(1)) for p in path.parent.glob(f'{path.name}*')
             if (m := re.fullmatch(rf'{re.escape(path.name)}(\d+)', p.name))]
    return path.parent / f'{path.name}{max(taken, default=1) + 1}'


def check_img_size(img_size: int, stride: int) -> int:
    """The smallest multiple of stride ≥ img_size, with a warning when it had to change."""
    new_size = math.ceil(img_size / stride) * stride
    if new_size != img_size:
        LOGGER.warning(f'WARNING: --img-size {img_size} must be a multiple of the max stride {stride}, '
                       f'updating to {new_size}')
    return new_size


class OutputFolderError(UserError, ValueError):
    """An output folder that cannot be written: one line, before any work is done."""


def check_writable(folder: str | Path, flag: str = '--project') -> None:
    """Raise OutputFolderError unless `folder`, or the nearest existing folder above it, can be written."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path('.'))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f'{folder}: cannot write there ({existing} is not a writable folder); '
                                f'choose another {flag}')


def warn_existing_labels(save_dir: Path) -> None:
    """--save-txt appends rows per image (as the reference does): say so when --exist-ok reuses a folder that
    already holds label files, whose rows the new ones would join."""
    old = sum(1 for _ in (save_dir / 'labels').glob('*.txt'))
    if old:
        LOGGER.warning(f'WARNING: {save_dir / "labels"} already holds {old} label files; --save-txt appends to '
                       f'them (as the reference does): remove them, or drop --exist-ok for a new run folder')


def fail(message: str, code: int = 2) -> None:
    """Print one line naming the problem and exit (no traceback)."""
    sys.stderr.write(f'error: {message}\n')
    raise SystemExit(code)


def os_error_line(e: OSError) -> str:
    """run_cli's one line for a file-system error met mid-run (also what DDP's other ranks print for rank 0's)."""
    where = f'{e.filename}: ' if e.filename else ''
    return f'{where}{e.strerror or e}; check that its folder exists, is writable and its disk has space'


def run_cli(run, opt, logger: logging.Logger):
    """Log the options, run, and turn every user error (utils.errors.UserError) and every file-system error met
    mid-run into one line and exit code 2; Ctrl-C into one line and exit code 130."""
    setup_logging()
    logger.info(opt)
    try:
        return run(opt)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt as e:  # training's says how to --resume
        fail(str(e) or 'interrupted (Ctrl-C)', 130)
    except OSError as e:  # a full disk, a folder removed or made read-only while running
        fail(os_error_line(e))


TASKS = ('train', 'val', 'test')
DEFAULT_DY_THRES = 0.5  # the reference's --dy-thres default


COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune')


def add_engine_flags(p) -> None:
    """Inference-engine extensions: --compile [MODE] (torch.compile of the routed forward's three stages;
    'reduce-overhead' also captures each stage as CUDA graphs, one per batch size met, on a GPU; pays a one-off
    compile time per shape) and --bf16 [MODE] (bfloat16 backbones on the CPU; 'keep-routes' keeps backbone 1 in
    fp32, so every route is fp32's)."""
    p.add_argument('--compile', nargs='?', const='default', default=None, choices=COMPILE_MODES, metavar='MODE',
                   help='torch.compile the three stages of the routed forward (extension; off unless given; first '
                        f'batches of each shape are slow); MODE is one of {", ".join(COMPILE_MODES)}, default when '
                        '--compile is given alone; reduce-overhead adds CUDA-graph capture per path on a GPU')
    p.add_argument('--bf16', nargs='?', const='all', default=None, choices=BF16_MODES, metavar='MODE',
                   help='CPU: run backbones and necks in bfloat16, router and heads in fp32 (extension; off unless '
                        'given; ~1.5x faster than fp32 on CPUs with AVX512-BF16 or AMX; boxes within ~1 px at 640, see '
                        f'docs/deployment.md); MODE is one of {", ".join(BF16_MODES)}, all when --bf16 is given alone; '
                        'keep-routes keeps backbone 1 in fp32 so every route is fp32\'s (slower)')
    p.add_argument('--engine', default=None, choices=('onnx', 'openvino', 'torchscript'),
                   help='with --weight <stem>_export.yaml (export.py\'s manifest): the runtime of its graphs '
                        '(left out: openvino for an int8 manifest or with --bf16, onnx otherwise)')
    p.add_argument('--threads', type=int, default=0, metavar='N',
                   help='CPU threads of the engine: torch\'s (a checkpoint, TorchScript), ONNX Runtime\'s intra-op, '
                        'OpenVINO\'s inference threads (0: the engine\'s own choice, about one per core)')
    p.add_argument('--ov-mode', default='latency', choices=('latency', 'throughput'),
                   help='OpenVINO engine: latency runs one image at a time on every thread; throughput keeps several '
                        'images in flight on parallel streams (pays with batches on 4+ cores; see docs/deployment.md)')


def check_engine_flags(p, opt) -> None:
    """argparse-style one-line error for a negative --threads."""
    if getattr(opt, 'threads', 0) < 0:
        p.error(f'--threads {opt.threads}: give a count of at least 1, or 0 for the engine\'s own choice')


def add_detection_flags(p, conf_thres: float, iou_thres: float) -> None:
    """Flags test.py and detect.py share (reference names; the NMS defaults differ between them)."""
    p.add_argument('--conf-thres', type=float, default=conf_thres, help='object confidence threshold')
    p.add_argument('--iou-thres', type=float, default=iou_thres, help='IOU threshold for NMS')
    p.add_argument('--augment', action='store_true', help='augmented inference')
    p.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    budget = p.add_mutually_exclusive_group()
    budget.add_argument('--dy-thres', type=float, default=DEFAULT_DY_THRES,
                        help='router threshold: score >= T takes the easy path (T <= 0: all easy, T > 1: all hard)')
    budget.add_argument('--easy-share', type=float, default=None, metavar='P',
                        help='instead of --dy-thres: the threshold sending a share P (0..1) of images down the easy '
                             'path, from the percentiles get_dynamic_thres.py saved for --weight (extension)')
    budget.add_argument('--gflops', type=float, default=None, metavar='G',
                        help='instead of --dy-thres: the threshold giving G mean GFLOPs per image (extension)')
    budget.add_argument('--target-ms', type=float, default=None, metavar='T',
                        help='instead of --dy-thres: hold T milliseconds per image (inference + NMS, the time each '
                             'detect.py line logs): the paths are timed here first, the easy share that fits T is '
                             'taken from the saved percentiles, and detect.py keeps moving the threshold as the '
                             'machine\'s load changes (test.py: the share and mAP T gives here) (extension)')
    p.add_argument('--router-json', default='', metavar='FILE',
                   help='the percentiles file for --easy-share/--gflops/--target-ms (left out: <weights stem>.router.json '
                        'beside --weight, written by get_dynamic_thres.py)')


def check_detection_flags(p, opt) -> None:
    """argparse-style one-line errors for thresholds that cannot be meant: NMS ones outside [0, 1], NaN ones."""
    for flag in ('conf_thres', 'iou_thres'):
        value = getattr(opt, flag)
        if not 0 <= value <= 1:
            p.error(f'--{flag.replace("_", "-")} {value}: must lie between 0 and 1')
    refuse_nan_dy_thres(p, opt.dy_thres)


def refuse_nan_dy_thres(p, dy_thres: float) -> None:
    """argparse-style one-line error for --dy-thres nan (a NaN threshold silently sends every image down the hard
    path; below 0 and above 1 are meaningful: all easy, all hard)."""
    if math.isnan(dy_thres):
        p.error('--dy-thres nan: give a number (score >= T takes the easy path)')


def add_split_flags(p, run_note: str = '') -> None:
    """Flags shared by the scripts that run a checkpoint over a data split (reference names and defaults)."""
    p.add_argument('--cfg', type=str, default='', help='model.yaml path (a step-2 config for dynamic routing)')
    p.add_argument('--weight', '--weights', type=str, default='', help='model.pt path')
    p.add_argument('--data', type=str, default='data/coco.yaml', help='data.yaml path')
    p.add_argument('--batch-size', type=int, default=1, help='images per batch (any size: routing is per image)')
    p.add_argument('--img-size', type=int, default=640, help='inference size (pixels), rounded up to the stride')
    p.add_argument('--task', default='val', help='train, val or test')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--project', default='runs/test', help=f'save to project/name{run_note}')
    p.add_argument('--name', default='exp', help=f'save to project/name{run_note}')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    add_engine_flags(p)


def check_split_flags(p, opt) -> None:
    """argparse-style one-line errors for a bad --task, --batch-size or --img-size."""
    if opt.task not in TASKS:
        p.error(f'--task {opt.task}: not implemented; use one of {", ".join(TASKS)}')
    check_engine_flags(p, opt)
    if opt.batch_size < 1 or opt.img_size < 1:
        p.error('--batch-size and --img-size must be positive')
