r"""The whole DynamicDet method on your machine, no download: synthetic data → detector → router → sweep → detect.

    python demo.py                       # the shipped detector + step 2, sweep, detect: 2-2.5 min on 2 CPU cores
    python demo.py --from-scratch        # step 1 from nothing too (time measured in docs/demo.md; verdict varies)
    python demo.py --build-detector      # rebuild the shipped detector (data/demo/): about an hour on 2 cores

It generates a dataset of shapes (half the images easy: one or two clear shapes; half hard: many faint ones on
clutter). By default it starts from the detector shipped in data/demo/ (step 1 of our tiny Dy-YOLOv7, trained once by
--build-detector to the end of its schedule, where both paths were still gaining: docs/demo.md; its manifest.json
says how and what it reached), checks it, trains the router (step 2, hyp/hyp.demo.step2.yaml), computes the 11
thresholds and evaluates at each (the sweep), prints a table for three of them and runs detection on a few images.
--from-scratch trains step 1 first (hyp/hyp.demo.step1.yaml, a few minutes: which head ends ahead then depends on the
seed, the machine and the library versions). Each stage calls the code of its script; the equivalent command is
logged, so the same run can be typed by hand.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import detect
import get_dynamic_thres
import train_step1
import train_step2
from models.checkpoint import copy_checkpoint
from utils import demo_detector as shipped
from utils.cli import HelpFormatter, increment_path, run_cli
from utils.data.data_config import load_data_config
from utils.data.synthetic import generate_dataset
from utils.demo_detector import NUM_CLASSES, VAL_FRACTION, BuildRecipe
from utils.evaluation.routing_quality import format_quality
from utils.evaluation.sweep import ThresholdResult, dynamic_thresholds, format_thresholds
from utils.train.step2 import Step2Trainer
from utils.train.trainer import Trainer, train

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger('demo')
CFG1, CFG2 = ROOT / 'cfg' / 'dy-yolov7-tiny-step1.yaml', ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'
HYP1, HYP2 = ROOT / 'hyp' / 'hyp.demo.step1.yaml', ROOT / 'hyp' / 'hyp.demo.step2.yaml'
DETECT_IMAGES = 6
TABLE_PICKS = (0, 5, 10)  # all easy, the median score (about half easy), all hard
RANDOM_ORDERS = 20
DEMO_IMAGES, SCRATCH_EPOCHS, ROUTER_EPOCHS = 640, 20, 10


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Demo flags: which mode, where to write, how much data and training."""
    p = argparse.ArgumentParser(prog='demo.py', description=__doc__, formatter_class=HelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--from-scratch', action='store_true', help='train step 1 too instead of using the shipped '
                      'detector (its verdict varies with seed, machine and versions)')
    mode.add_argument('--build-detector', action='store_true', help='train the detector the demo ships and write it '
                      'with its manifest to --detector (about an hour on 2 cores)')
    p.add_argument('--detector', default=str(shipped.SHIPPED_DIR),
                   help='folder of the shipped detector and its manifest')
    p.add_argument('--out', default=None, help='output folder, a new numbered one if it exists (default: runs/demo; '
                   'runs/demo_detector with --build-detector)')
    p.add_argument('--images', type=int, default=None, help=f'synthetic images, {100 * VAL_FRACTION:.0f}%% held out '
                   f'(default: {DEMO_IMAGES}; {BuildRecipe.images} with --build-detector)')
    p.add_argument('--img', type=int, default=None, help='image size, a multiple of 32 (default: the shipped '
                   f'detector\'s own, from its manifest; {BuildRecipe.img} with --from-scratch/--build-detector)')
    p.add_argument('--epochs', type=int, default=None, help=f'step-1 epochs, only with --from-scratch or '
                   f'--build-detector (default: {SCRATCH_EPOCHS}; {BuildRecipe.epochs} with --build-detector)')
    p.add_argument('--router-epochs', type=int, default=None, help=f'step-2 epochs, not with --build-detector '
                   f'(default: {ROUTER_EPOCHS})')
    p.add_argument('--router-loss', choices=('bce', 'adaptive'), default='bce',
                   help="step 2's router loss (train_step2.py --router-loss; 'adaptive' is the reference's)")
    p.add_argument('--batch-size', type=int, default=8, help='training batch size (of each step trained)')
    p.add_argument('--workers', type=int, default=2, help='data loader workers')
    p.add_argument('--device', default='', help='cuda device (0, 0,1, …) or cpu (default: CUDA if available)')
    p.add_argument('--seed', type=int, default=None, help='seed of training (and of the data with --from-scratch or '
                   '--build-detector; the shipped detector\'s data seed otherwise) (default: 0)')
    opt = p.parse_args(argv)
    for bad, message in _mode_problems(opt):
        if bad:
            p.error(message)
    _fill_defaults(opt)
    problems = [(opt.images < 10, f'--images must be at least 10, got {opt.images}'),
                (opt.img < 64 or opt.img % 32, f'--img must be a multiple of 32 and at least 64, got {opt.img}'),
                (min(n for n in (opt.epochs, opt.router_epochs, opt.batch_size) if n is not None) < 1,
                 '--epochs, --router-epochs and --batch-size must be at least 1'),
                (opt.workers < 0 or opt.seed < 0, '--workers and --seed must be non-negative')]
    for bad, message in problems:
        if bad:
            p.error(message)
    return opt


def _mode_problems(opt: argparse.Namespace) -> list[tuple[bool, str]]:
    """Flags that mean nothing in the chosen mode: refused rather than silently ignored."""
    shipped = not (opt.from_scratch or opt.build_detector)
    return [(shipped and opt.epochs is not None, '--epochs trains step 1: the default demo uses the shipped detector '
             '(add --from-scratch to train step 1, or --build-detector to rebuild the detector)'),
            (opt.build_detector and opt.router_epochs is not None, '--router-epochs: --build-detector trains step 1 '
             'only')]


def _fill_defaults(opt: argparse.Namespace) -> None:
    """Each mode's defaults for the flags left out (None), so that an explicit 0 is still checked."""
    def default(value, fallback):
        return fallback if value is None else value
    opt.out = default(opt.out, 'runs/demo_detector' if opt.build_detector else 'runs/demo')
    opt.images = default(opt.images, BuildRecipe.images if opt.build_detector else DEMO_IMAGES)
    opt.epochs = default(opt.epochs, BuildRecipe.epochs if opt.build_detector else
                         SCRATCH_EPOCHS if opt.from_scratch else None)
    opt.router_epochs = None if opt.build_detector else default(opt.router_epochs, ROUTER_EPOCHS)
    opt.seed = default(opt.seed, 0)
    opt.img = default(opt.img, BuildRecipe.img if opt.from_scratch or opt.build_detector else _shipped_img(opt))


def _shipped_img(opt: argparse.Namespace) -> int:
    """The image size the shipped detector was trained at (its manifest's), the default demo's --img; the recipe's
    when the manifest cannot be read (the demo then stops on that with one line, before any work)."""
    try:
        return int(shipped.read_manifest(Path(opt.detector))['data']['img'])
    except (shipped.DetectorError, TypeError, ValueError):
        return BuildRecipe.img


def with_epoch_bar(trainer_cls: type[Trainer], bar: tqdm) -> type[Trainer]:
    """trainer_cls showing one bar over epochs instead of a bar and a log block per epoch."""
    class EpochBarTrainer(trainer_cls):
        def batch_progress(self, batches):
            return batches

        def end_epoch(self, epoch, mloss, line):
            stop = super().end_epoch(epoch, mloss, line)
            bar.set_postfix(loss=f'{float(mloss[-1]):.4f}')
            bar.update(1)
            return stop
    return EpochBarTrainer


def announce(title: str, script: str, argv: list[str]) -> None:
    """Log a stage and the command that does the same."""
    LOGGER.info(f'\n{title}\n  = python {script} {shlex.join(argv)}')


def train_stage(title: str, script, argv: list[str], trainer_cls: type[Trainer], epochs: int) -> Path:
    """One training step with an epoch bar; returns its run folder."""
    announce(title, Path(script.__file__).name, argv)
    with tqdm(total=epochs, desc=title.split(':')[0], unit='epoch') as bar:
        return train(script.parse_opt(argv), with_epoch_bar(trainer_cls, bar), configure_logging=False)


def sweep_stage(argv: list[str]) -> ThresholdResult:
    """Router scores → 11 thresholds → evaluation at each (sweep.csv/png); thresholds.txt as the script prints."""
    announce('Thresholds: router scores on val, 11 thresholds, evaluation at each', 'get_dynamic_thres.py', argv)
    result = dynamic_thresholds(get_dynamic_thres.parse_opt(argv))
    (result.save_dir / 'thresholds.txt').write_text(format_thresholds(result.thresholds).lstrip() + '\n')
    return result


def detect_stage(argv: list[str]) -> Path:
    """detect.py on the sample images, its per-image lines (route included) shown."""
    announce('Detection on a few validation images', 'detect.py', argv)
    logging.getLogger('detect').setLevel(logging.INFO)
    try:
        return detect.run_detect(detect.parse_opt(argv))
    finally:
        logging.getLogger('detect').setLevel(logging.NOTSET)


def format_table(rows: list[dict]) -> str:
    """The demo's table: one line per threshold, the router's mAP@.5:.95 beside random routing's and the oracle's."""
    lines = [f'{"threshold":>12} {"easy images":>12} {"GFLOPs/image":>13} {"mAP@.5":>8} {"mAP@.5:.95":>11} '
             f'{"random":>15} {"oracle":>7} {"ms/image":>9}']
    lines += [f'{r["threshold"]:>12.4g} {100 * r["easy_share"]:>11.0f}% {r["gflops_per_image"]:>13.3f} '
              f'{r["mAP@.5"]:>8.3f} {r["mAP@.5:.95"]:>11.3f} '
              f'{r["random_mAP@.5:.95"]:>9.3f}±{r["random_mAP@.5:.95_sd"]:.3f} {r["oracle_mAP@.5:.95"]:>7.3f} '
              f'{r["eval_ms_per_image"]:>9.1f}' for r in rows]
    return '\n'.join(lines)


def sample_images(result: ThresholdResult, folder: Path) -> Path:
    """Copy the validation images with the highest and the lowest router scores into folder (detect's --source)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort(result.scores, kind='stable')
    for k in (*order[-(DETECT_IMAGES // 2):], *order[:DETECT_IMAGES // 2]):
        shutil.copy2(result.files[k], folder / Path(result.files[k]).name)
    return folder


def run_demo(opt: argparse.Namespace) -> Path:
    """All stages, the library's INFO lines kept out of the terminal (they are in the run folders' files)."""
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)
    os.environ.setdefault('WANDB_MODE', 'disabled')  # W&B only when asked (WANDB_MODE=online or offline)
    loggers = [LOGGER, logging.getLogger('utils.demo_detector')]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    try:
        return build_detector(opt) if opt.build_detector else _stages(opt)
    finally:
        logging.getLogger().setLevel(root_level)


def common_argv(opt: argparse.Namespace, data: Path, out: Path) -> list[str]:
    """The flags both training steps of the demo share."""
    return ['--img', str(opt.img), '--batch-size', str(opt.batch_size), '--workers', str(opt.workers),
            '--device', opt.device, '--data', str(data), '--project', str(out / 'train'), '--notest',
            '--seed', str(opt.seed), '--adam', '--nosave',  # the demo cannot resume: final checkpoints only
            '--no-amp']  # fp32 on CUDA too (the CPU trains in fp32 by default): bf16 autocast had cost head 2 most


def step1_argv(opt: argparse.Namespace, data: Path, out: Path, hyp: Path = HYP1) -> list[str]:
    """The demo's step-1 command line (from scratch, its run folder out/train/step1)."""
    return ['--cfg', str(CFG1), '--weight', '', '--hyp', str(hyp), '--epochs', str(opt.epochs),
            '--name', 'step1', '--noautoanchor', *common_argv(opt, data, out)]


def step2_argv(opt: argparse.Namespace, data: Path, out: Path, detector: Path) -> list[str]:
    """The demo's step-2 command line: the router on the frozen `detector` (run folder out/train/step2)."""
    # --router-loss bce by default: the reference's linear loss drives every score to 0 or 1 together (docs/thresholds.md)
    return ['--cfg', str(CFG2), '--weight', str(detector), '--hyp', str(HYP2), '--epochs', str(opt.router_epochs),
            '--name', 'step2', '--router-loss', opt.router_loss, *common_argv(opt, data, out)]


def shipped_detector(opt: argparse.Namespace) -> tuple[Path, dict]:
    """The checked shipped detector and its manifest; its data seed and image size become the demo's."""
    checkpoint, manifest = shipped.check_detector(Path(opt.detector))
    if opt.img != manifest['data']['img']:
        raise shipped.DetectorError(f'--img {opt.img}: the shipped detector was trained at '
                                    f'{manifest["data"]["img"]} px; leave --img out, or add --from-scratch to train '
                                    f'one at {opt.img} px')
    return checkpoint, manifest


def _stages(opt: argparse.Namespace) -> Path:
    detector = manifest = None
    if not opt.from_scratch:
        detector, manifest = shipped_detector(opt)  # checked before any work
    out = increment_path(opt.out).resolve()
    drawn = manifest['data'] if manifest else {'seed': opt.seed, 'val_fraction': VAL_FRACTION, 'classes': NUM_CLASSES}
    data = generate_dataset(out / 'data', opt.images, opt.img, drawn['val_fraction'], drawn['seed'], drawn['classes'])
    LOGGER.info(f'Data: {opt.images} synthetic images at {opt.img} px (data seed {drawn["seed"]}) in {out / "data"}')
    if detector is None:
        step1 = train_stage('Step 1: both backbones and heads, from scratch', train_step1, step1_argv(opt, data, out),
                            Trainer, opt.epochs)
        detector = step1 / 'weights' / 'last.pt'
        LOGGER.info('(--from-scratch: after these few minutes of training, which head ends ahead depends on the '
                    'seed, the machine and the library versions; the default demo starts from the shipped one)')
    else:
        LOGGER.info(f'Step 1: the shipped detector {detector} (trained once by `{manifest["command"]}`; '
                    f'held-out mAP@.5:.95 easy path {_held_out(manifest, "easy")}, hard path '
                    f'{_held_out(manifest, "hard")}: {opt.detector}/manifest.json)')
    step2 = train_stage('Step 2: the router on the frozen detector', train_step2, step2_argv(opt, data, out, detector),
                        Step2Trainer, opt.router_epochs)
    result, middle, detections = _evaluate_and_detect(opt, data, out, step2 / 'weights' / 'last.pt')
    LOGGER.info(f'\nOutputs in {out}:\n'
                f'  data       {data}\n'
                f'  step 1     {detector}\n'
                f'  step 2     {step2 / "weights" / "last.pt"}\n'
                f'  thresholds {result.save_dir / "thresholds.txt"}  (11 values; all 11 evaluated in sweep.csv)\n'
                f'  sweep plot {result.save_dir / "sweep.png"}  (mAP against mean GFLOPs per image)\n'
                f'  detections {detections}  (at dy_thres {float(middle):.4g})')
    return out


def _held_out(manifest: dict, path: str) -> str:
    metrics = manifest.get('metrics', {}).get('demo_held_out', {}).get('all', {}).get(path, {})
    return f'{metrics["mAP@.5:.95"]:.3f}' if 'mAP@.5:.95' in metrics else '?'


def _evaluate_and_detect(opt: argparse.Namespace, data: Path, out: Path, weights: Path):
    """The sweep, the table and the router-quality summary, then detect.py at the median threshold."""
    inference = ['--cfg', str(CFG2), '--weight', str(weights), '--device', opt.device]
    result = sweep_stage([*inference, '--data', str(data), '--img-size', str(opt.img), '--batch-size', '1',
                          '--task', 'val', '--sweep', '--hyp', str(HYP2), '--random-orders', str(RANDOM_ORDERS),
                          '--project', str(out), '--name', 'sweep', '--exist-ok'])
    middle = result.thresholds[TABLE_PICKS[1]]
    detections = detect_stage([*inference, '--num-classes', str(load_data_config(data)['nc']),
                               '--data', str(data), '--source', str(sample_images(result, out / 'samples')),
                               '--img-size', str(opt.img), '--dy-thres', middle, '--project', str(out),
                               '--name', 'detect', '--exist-ok'])
    LOGGER.info(f'\nResults on {len(result.scores)} validation images (router scores '
                f'{result.scores.min():.4g} to {result.scores.max():.4g}; score >= threshold takes the easy path; only the\n'
                f'scores\' order matters: a threshold sets the share of easy images):\n'
                + format_table([result.rows[k] for k in TABLE_PICKS])
                + f'\n(random: {RANDOM_ORDERS} random routings at the same easy share, mean±sd; oracle: images ranked by '
                  f'head 1\'s minus head 2\'s loss)\n\n' + format_quality(result.quality, result.rows))
    return result, middle, detections


def build_detector(opt: argparse.Namespace) -> Path:
    """--build-detector: data pool → step 1 with both heads' curve → checkpoint + manifest in --detector."""
    recipe = BuildRecipe(images=opt.images, img=opt.img, epochs=opt.epochs, batch_size=opt.batch_size, seed=opt.seed)
    folder = Path(opt.detector)
    out = increment_path(opt.out).resolve()
    data = generate_dataset(out / 'data', recipe.images, recipe.img, VAL_FRACTION, recipe.seed, NUM_CLASSES)
    argv = step1_argv(opt, data, out, shipped.HYP)
    rows: list[dict] = []
    start = time.perf_counter()
    run = train_stage('Step 1: the demo detector, to the end of its schedule', train_step1, argv,
                      shipped.curve_trainer(Trainer, recipe, rows), recipe.epochs)
    wall = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / shipped.CHECKPOINT_NAME
    copy_checkpoint(run / 'weights' / 'last.pt', checkpoint)  # stripped: the EMA weights, fp16, no optimizer
    demo_list = shipped.held_out_list(data, DEMO_IMAGES, 'val_demo.txt')
    metrics = {name: shipped.evaluate_detector(checkpoint, images, NUM_CLASSES, recipe.seed, recipe.img, 'cpu')
               for name, images in (('demo_held_out', demo_list), ('held_out', data.parent / 'val.txt'))}
    relative = str(ROOT) + '/'
    manifest = shipped.write_manifest(folder, checkpoint, recipe, 'python demo.py ' + shlex.join(sys.argv[1:]),
                                      ('python train_step1.py ' + shlex.join(argv)).replace(relative, ''), wall,
                                      metrics, rows)
    for name, m in metrics.items():
        LOGGER.info(f'{name} ({m["images"]} images) mAP@.5:.95 easy path / hard path: ' + ', '.join(
            f'{kind} {m[kind]["easy"]["mAP@.5:.95"]:.4f} / {m[kind]["hard"]["mAP@.5:.95"]:.4f}'
            for kind in ('all', 'easy', 'hard')))
    LOGGER.info(f'\nDetector {checkpoint} and {manifest} written (step 1 {wall / 60:.1f} min; run folder {run})')
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run_demo, parse_opt(argv), LOGGER)


if __name__ == '__main__':
    sys.exit(main())
