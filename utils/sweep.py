"""Router scores → the 11 dynamic thresholds (SPEC §10), and the speed/accuracy sweep over them (extension:
mAP against mean GFLOPs per image, sweep.csv and sweep.png)."""
from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from models.graph import ConfigError
from models.inference import load_for_inference, prepare_input
from utils.cli import increment_path
from utils.data_config import load_data_config
from utils.evaluation import EvalOptions, evaluate, per_image_ms, split_loader, summarize
from utils.torch_utils import select_device

LOGGER = logging.getLogger(__name__)
COLUMNS = ('threshold', 'easy_share', 'gflops_per_image', 'mAP@.5', 'mAP@.5:.95', 'ms_per_image')


@dataclass
class ThresholdResult:
    """The 11 thresholds (as printed), the router scores they came from (with their image files, in the same
    order) and, after a sweep, its rows and folder."""
    thresholds: list[str]
    scores: np.ndarray
    files: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    save_dir: Path | None = None


def thresholds_from_scores(scores: np.ndarray) -> list[str]:
    """'0', the 10th … 90th percentiles (numpy linear interpolation), '1': 11 strings, as the reference prints."""
    return ['0'] + [str(np.percentile(scores, q)) for q in range(10, 100, 10)] + ['1']


def format_thresholds(thresholds: list[str]) -> str:
    """The reference's printout: stars, the thresholds on one line, one line per easy/hard share, stars."""
    lines = ['', '*' * 51, ' '.join(thresholds)]
    lines += [f'First: {100 - 10 * k}%\tSecond: {10 * k}%\tThreshold: {t}' for k, t in enumerate(thresholds)]
    return '\n'.join(lines + ['*' * 51])


def collect_scores(model, loader) -> np.ndarray:
    """Router scores of every image of the loader (all B of each batch)."""
    model.get_score = True
    scores = []
    with torch.inference_mode():
        for imgs, *_ in tqdm(loader, desc='Router scores'):
            scores.append(model(prepare_input(imgs, model) / 255.0).float().view(-1).cpu())
    model.get_score = False
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def dynamic_thresholds(opt: argparse.Namespace,
                       on_thresholds: Callable[[list[str]], None] | None = None) -> ThresholdResult:
    """get_dynamic_thres.py's job for its options: scores on --task → thresholds (handed to on_thresholds before
    any sweep, so they show at once); with opt.sweep, the sweep too."""
    data = load_data_config(opt.data, required=(opt.task,))
    device = select_device(opt.device, opt.batch_size)
    model = load_for_inference(opt.cfg, opt.weight, data['nc'], device, opt.compile, opt.bf16)
    if not model.dynamic:
        raise ConfigError(f'{opt.cfg}: has no router (not a step-2 config); use e.g. cfg/dy-yolov7-step2.yaml')
    loader, dataset, img_size = split_loader(model, opt, data, data['nc'], device)
    scores = collect_scores(model, loader)
    result = ThresholdResult(thresholds_from_scores(scores), scores, list(dataset.img_files))
    if on_thresholds is not None:
        on_thresholds(result.thresholds)
    if opt.sweep:
        result.save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)
        result.rows = sweep_thresholds(model, loader, result.thresholds, data, img_size, result.save_dir)
    return result


def sweep_thresholds(model, loader, thresholds: list[str], data: dict, img_size: int,
                     save_dir: Path) -> list[dict]:
    """Evaluate at every threshold; write sweep.csv and sweep.png into save_dir; return the rows."""
    save_dir.mkdir(parents=True, exist_ok=True)
    flops = model.flops(img_size)
    names = [str(n) for n in data['names']]
    rows = []
    for t in tqdm(thresholds, desc='Sweep', unit='threshold'):
        model.dy_thres = float(t)
        opt = EvalOptions(names=names, plots=False, save_dir=save_dir, training=True)
        out, confusion = evaluate(model, loader, opt)
        (_, _, map50, map_), _ = summarize(out, opt, confusion)
        share = out.n_easy / max(out.n_routed, 1)
        rows.append(dict(zip(COLUMNS, (float(t), share, share * flops['easy'] + (1 - share) * flops['hard'],
                                       map50, map_, per_image_ms(out)[2]))))
        LOGGER.info(f'dy_thres {t}: {100 * share:.0f}% easy, {rows[-1]["gflops_per_image"]:.4g} GFLOPs/image, '
                    f'mAP@.5 {map50:.4f}, mAP@.5:.95 {map_:.4f}')
    with open(save_dir / 'sweep.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, save_dir / 'sweep.png')
    LOGGER.info(f'Sweep saved to {save_dir / "sweep.csv"} and {save_dir / "sweep.png"}')
    return rows
def _plot(rows: list[dict], path: Path) -> None:
    import utils.plots  # noqa: F401  (selects the file-only matplotlib backend)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
    x = [r['gflops_per_image'] for r in rows]
    ax.plot(x, [r['mAP@.5:.95'] for r in rows], 'o-', label='mAP@.5:.95')
    ax.plot(x, [r['mAP@.5'] for r in rows], 's--', label='mAP@.5')
    for r in rows:
        ax.annotate(f'{r["threshold"]:.3g}', (r['gflops_per_image'], r['mAP@.5:.95']), fontsize=7,
                    textcoords='offset points', xytext=(3, 3))
    ax.set(xlabel='mean GFLOPs per image', ylabel='mAP', title='Dynamic threshold sweep (labels: dy_thres)')
    ax.legend()
    fig.savefig(path, dpi=200)
    plt.close(fig)
