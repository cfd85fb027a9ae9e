"""The demo's shipped detector (extension): a step-1 tiny Dy-YOLOv7 trained once, to the end of its schedule (both paths still gaining: docs/demo.md), on the synthetic
shapes, kept in the repository with a manifest, so that the default demo starts from a model whose verdict (does the
hard path pay?) is a property of the model, not of a five-minute run's float rounding.

This module holds the pieces `demo.py` puts together: the manifest (what made the checkpoint, what it reached, its
SHA-256), the check before use, both paths' mAP per synthetic kind, and the step-1 trainer that records that curve
while `python demo.py --build-detector` trains.
"""
from __future__ import annotations

import csv
import json
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.data.synthetic import GENERATOR_VERSION, image_kind
from utils.errors import UserError
from utils.evaluation.path_records import PATHS, collect_path_records, subset_map
from utils.general import file_digest
from utils.train.trainer import Trainer

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIR = ROOT / 'data' / 'demo'
CHECKPOINT_NAME = 'dy-yolov7-tiny-demo.pt'
MANIFEST_NAME = 'manifest.json'
CFG1 = ROOT / 'cfg' / 'dy-yolov7-tiny-step1.yaml'
HYP = ROOT / 'hyp' / 'hyp.demo.detector.yaml'
KINDS = ('all', 'easy', 'hard')
METRICS = ('mAP@.5', 'mAP@.5:.95')
EVAL_BATCH = 32
VAL_FRACTION = 0.2  # every 5th image held out (utils/data/synthetic.py::split_of)
NUM_CLASSES = 3


class DetectorError(UserError, ValueError):
    """The shipped detector is missing, altered or made for other data: one line saying how to rebuild it."""


@dataclass(frozen=True)
class BuildRecipe:
    """How the shipped detector is trained: the data pool and the step-1 run (`demo.py --build-detector` flags)."""
    images: int = 2560  # the pool: 2048 training and 512 held-out images (any demo's data is a prefix of it)
    img: int = 128
    epochs: int = 24
    batch_size: int = 8
    seed: int = 0  # of the data and of training
    every: int = 4  # evaluate both heads after every this many epochs (the convergence curve)


def rebuild_hint(folder: Path) -> str:
    """The commands that make a new detector in folder, or do without it."""
    where = '' if folder.resolve() == SHIPPED_DIR else f' --detector {folder}'
    return f'rebuild it with: python demo.py --build-detector{where} (or run python demo.py --from-scratch)'


def read_manifest(folder: Path) -> dict:
    """The manifest of the detector in folder; DetectorError when it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise DetectorError(f'{path}: the demo detector\'s manifest is missing; {rebuild_hint(Path(folder))}')
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
        missing = [k for k in ('seed', 'img', 'classes', 'val_fraction') if k not in manifest['data']]
        missing += [k for k in ('sha256', 'command') if k not in manifest]
    except (ValueError, KeyError, TypeError) as e:
        raise DetectorError(f'{path}: not a demo detector manifest ({e}); {rebuild_hint(Path(folder))}') from None
    if missing:
        raise DetectorError(f'{path}: not a demo detector manifest (no {", ".join(missing)}); '
                            f'{rebuild_hint(Path(folder))}')
    return manifest


def check_detector(folder: Path) -> tuple[Path, dict]:
    """(checkpoint path, manifest) of the detector in folder, after checking its SHA-256 and data version."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    checkpoint = folder / manifest.get('checkpoint', CHECKPOINT_NAME)
    if not checkpoint.is_file():
        raise DetectorError(f'{checkpoint}: the demo detector is missing; {rebuild_hint(folder)}')
    digest = file_digest(checkpoint)
    if digest != manifest['sha256']:
        raise DetectorError(f'{checkpoint}: altered (SHA-256 {digest[:12]}…, its manifest says '
                            f'{manifest["sha256"][:12]}…); restore it (git checkout -- {checkpoint.name}) or '
                            f'{rebuild_hint(folder)}')
    version = manifest['data'].get('generator_version')
    if version != GENERATOR_VERSION:
        raise DetectorError(f'{checkpoint}: trained on synthetic data version {version}, this generator makes '
                            f'version {GENERATOR_VERSION}; {rebuild_hint(folder)}')
    return checkpoint, manifest


def held_out_list(data_yaml: Path, images: int, name: str) -> Path:
    """A list beside data_yaml of the held-out images among the first `images` (the demo's with --images N)."""
    root = Path(data_yaml).parent
    lines = [line for line in (root / 'val.txt').read_text().split() if int(Path(line).stem) < images]
    path = root / name
    path.write_text(''.join(f'{line}\n' for line in lines))
    return path


def path_metrics(model, loader, seed: int, img: int) -> dict:
    """Both paths' mAP on a loader's images, on all of them and per synthetic kind (background images only in
    'all'): {'images': n, kind: {path: {metric: value}}}."""
    records = collect_path_records(model, loader)
    kinds = np.array([image_kind(seed, int(Path(f).stem), img) for f in records.files])
    result: dict = {'images': len(records)}
    for kind in KINDS:
        keep = np.ones(len(kinds), bool) if kind == 'all' else kinds == kind
        result[kind] = {path: dict(zip(METRICS, (round(v, 4) for v in subset_map(records, path, keep))))
                        for path in PATHS}
        result[kind]['images'] = int(keep.sum())
    return result


def evaluate_detector(weights: Path, image_list: Path, nc: int, seed: int, img: int, device: str = 'cpu') -> dict:
    """path_metrics of a step-1 checkpoint on the images of a list (rect batches of 32, as test.py evaluates)."""
    from models.inference import load_for_inference
    from utils.data.dataloaders import create_dataloader
    model = load_for_inference(str(CFG1), str(weights), nc, device)
    gs = max(int(model.stride.max()), 32)
    loader, _ = create_dataloader(str(image_list), img, EVAL_BATCH, gs, pad=0.5, rect=True, workers=0, nc=nc)
    return path_metrics(model, loader, seed, img)


def curve_trainer(base: type[Trainer], recipe: BuildRecipe, rows: list[dict]) -> type[Trainer]:
    """`base` also evaluating both paths per kind on the held-out images (EMA weights) after every
    recipe.every-th epoch and the last; rows appended to `rows` and written to heads.csv in the run folder."""
    class CurveTrainer(base):
        def end_epoch(self, epoch, mloss, line):
            stop = super().end_epoch(epoch, mloss, line)
            if self.ctx.main and ((epoch + 1) % recipe.every == 0 or epoch + 1 == self.epochs):
                self.ema.update_attr(self.model)
                metrics = path_metrics(self.ema.ema, self.val_loader, recipe.seed, recipe.img)
                rows.append({'epoch': epoch + 1, **{f'{path}_path_{kind}': metrics[kind][path]['mAP@.5:.95']
                                                    for kind in KINDS for path in PATHS}})
                LOGGER.info('heads (mAP@.5:.95) ' + ' '.join(f'{k} {v}' for k, v in rows[-1].items()))
                write_curve(rows, self.save_dir / 'heads.csv')
            return stop
    return CurveTrainer


def write_curve(rows: list[dict], path: Path) -> None:
    """The convergence curve as CSV: one row per evaluated epoch."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def environment() -> dict:
    """Where a figure was measured: machine, versions, threads."""
    return {'machine': f'{platform.machine()} {platform.processor() or ""}'.strip(), 'cpus': cpu_name(),
            'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__,
            'opencv': cv2.__version__, 'threads': torch.get_num_threads()}


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform says."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_manifest(folder: Path, checkpoint: Path, recipe: BuildRecipe, command: str, step1_command: str,
                   wall_seconds: float, metrics: dict, curve: list[dict]) -> Path:
    """manifest.json beside the checkpoint: the command, data, recipe, environment, metrics, curve and SHA-256."""
    manifest = {
        'checkpoint': checkpoint.name, 'sha256': file_digest(checkpoint), 'bytes': checkpoint.stat().st_size,
        'command': command, 'step1_command': step1_command,
        'config': str(CFG1.relative_to(ROOT)), 'hyp': str(HYP.relative_to(ROOT)),
        'data': {'generator': 'utils/data/synthetic.py', 'generator_version': GENERATOR_VERSION, 'seed': recipe.seed,
                 'images': recipe.images, 'img': recipe.img, 'val_fraction': VAL_FRACTION, 'classes': NUM_CLASSES},
        'recipe': asdict(recipe), 'wall_seconds': round(wall_seconds), 'environment': environment(),
        'metrics': metrics, 'curve': curve,
    }
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1) + '\n', encoding='utf-8')
    return path
