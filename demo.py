r"""The whole DynamicDet method on your machine, no download: synthetic data → step 1 → step 2 → thresholds → detect.

    python demo.py                                              # a few minutes on 2 CPU cores
    python demo.py --images 2000 --epochs 100 --router-epochs 20  # longer (the README's demo section: decay the rate)

It generates a dataset of shapes (half the images easy: one or two clear shapes; half hard: many faint ones on
clutter), trains step 1 of our tiny Dy-YOLOv7 (cfg/dy-yolov7-tiny-step1.yaml, 1.2 M parameters) with
hyp/hyp.demo.step1.yaml, trains the router (step 2, hyp/hyp.demo.step2.yaml), computes the 11 thresholds and
evaluates at each (the sweep), prints a table for three of them and runs detection on a few images. Each stage
calls the code of its script; the equivalent command is logged, so the same run can be typed by hand.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import detect
import get_dynamic_thres
import train_step1
import train_step2
from utils.cli import increment_path, run_cli
from utils.data.data_config import load_data_config
from utils.data.synthetic import generate_dataset
from utils.evaluation.routing_quality import format_quality
from utils.evaluation.sweep import ThresholdResult, dynamic_thresholds, format_thresholds
from utils.train.step2 import Step2Trainer
from utils.train.trainer import Trainer, train

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger('demo')
CFG1, CFG2 = ROOT / 'cfg' / 'dy-yolov7-tiny-step1.yaml', ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'
HYP1, HYP2 = ROOT / 'hyp' / 'hyp.demo.step1.yaml', ROOT / 'hyp' / 'hyp.demo.step2.yaml'
VAL_FRACTION = 0.2
DETECT_IMAGES = 6
TABLE_PICKS = (0, 5, 10)  # all easy, the median score (about half easy), all hard
RANDOM_ORDERS = 20


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Demo flags: where to write, how much data and training."""
    p = argparse.ArgumentParser(prog='demo.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='runs/demo', help='output folder (a new numbered one if it exists)')
    p.add_argument('--images', type=int, default=640, help=f'synthetic images ({100 * VAL_FRACTION:.0f}%% for validation)')
    p.add_argument('--img', type=int, default=128, help='image size, a multiple of 32')
    p.add_argument('--epochs', type=int, default=20, help='step-1 epochs')
    p.add_argument('--router-epochs', type=int, default=10, help='step-2 epochs')
    p.add_argument('--batch-size', type=int, default=8, help='training batch size (both steps)')
    p.add_argument('--workers', type=int, default=2, help='data loader workers')
    p.add_argument('--device', default='', help='cuda device (0, 0,1, …) or cpu; default: CUDA if available')
    p.add_argument('--seed', type=int, default=0, help='seed of the data and of training')
    opt = p.parse_args(argv)
    problems = [(opt.images < 10, f'--images must be at least 10, got {opt.images}'),
                (opt.img < 64 or opt.img % 32, f'--img must be a multiple of 32 and at least 64, got {opt.img}'),
                (min(opt.epochs, opt.router_epochs, opt.batch_size) < 1,
                 '--epochs, --router-epochs and --batch-size must be at least 1'),
                (opt.workers < 0 or opt.seed < 0, '--workers and --seed must be non-negative')]
    for bad, message in problems:
        if bad:
            p.error(message)
    return opt


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
              f'{r["ms_per_image"]:>9.1f}' for r in rows]
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
    LOGGER.setLevel(logging.INFO)
    try:
        return _stages(opt)
    finally:
        logging.getLogger().setLevel(root_level)


def training_argv(opt: argparse.Namespace, data: Path, out: Path) -> tuple[list[str], list[str]]:
    """The demo's step-1 and step-2 command lines (step 2 reads step 1's last.pt under out/train/step1)."""
    common = ['--img', str(opt.img), '--batch-size', str(opt.batch_size), '--workers', str(opt.workers),
              '--device', opt.device, '--data', str(data), '--project', str(out / 'train'), '--notest',
              '--seed', str(opt.seed), '--adam', '--nosave',  # the demo cannot resume: final checkpoints only
              '--no-amp']  # fp32 on every CPU: bf16 autocast (the default where bf16 is native) cost head 2 most
    step1 = ['--cfg', str(CFG1), '--weight', '', '--hyp', str(HYP1), '--epochs', str(opt.epochs),
             '--name', 'step1', '--noautoanchor', *common]
    # --router-loss bce: the reference's linear loss drives every score to 0 or 1 together (README, step 2)
    step2 = ['--cfg', str(CFG2), '--weight', str(out / 'train' / 'step1' / 'weights' / 'last.pt'), '--hyp', str(HYP2),
             '--epochs', str(opt.router_epochs), '--name', 'step2', '--router-loss', 'bce', *common]
    return step1, step2


def _stages(opt: argparse.Namespace) -> Path:
    out = increment_path(opt.out).resolve()
    data = generate_dataset(out / 'data', opt.images, opt.img, VAL_FRACTION, opt.seed)
    LOGGER.info(f'Data: {opt.images} synthetic images at {opt.img} px in {out / "data"}')
    step1_argv, step2_argv = training_argv(opt, data, out)
    step1 = train_stage('Step 1: both backbones and heads, from scratch', train_step1, step1_argv, Trainer,
                        opt.epochs)
    step2 = train_stage('Step 2: the router on the frozen detector', train_step2, step2_argv, Step2Trainer,
                        opt.router_epochs)
    weights = str(step2 / 'weights' / 'last.pt')
    inference = ['--cfg', str(CFG2), '--weight', weights, '--device', opt.device]
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
    LOGGER.info(f'\nOutputs in {out}:\n'
                f'  data       {data}\n'
                f'  step 1     {step1 / "weights" / "last.pt"}  (results.png, results.csv, ...)\n'
                f'  step 2     {weights}\n'
                f'  thresholds {result.save_dir / "thresholds.txt"}  (11 values; all 11 evaluated in sweep.csv)\n'
                f'  sweep plot {result.save_dir / "sweep.png"}  (mAP against mean GFLOPs per image)\n'
                f'  detections {detections}  (at dy_thres {float(middle):.4g})')
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run_demo, parse_opt(argv), LOGGER)


if __name__ == '__main__':
    sys.exit(main())
