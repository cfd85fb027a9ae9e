"""Router scores → the 11 dynamic thresholds (as the reference's get_dynamic_thres.py), and the speed/accuracy sweep
over them (extension: one pass over both paths; mAP against mean GFLOPs per image for the router, random routing and
the oracle; sweep.csv, sweep.png, router_quality.txt and .json)."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.exported_model import load_inference_model
from models.graph import ConfigError
from models.inference import prepare_input
from utils.cli import check_writable, increment_path
from utils.data.data_config import load_data_config
from utils.evaluation.path_records import PathRecords, collect_path_records, routed_map
from utils.evaluation.router_budget import budget_file_for, save_router_budget
from utils.evaluation.routing_quality import RouterQuality, add_gains, baseline_columns, format_quality, router_quality
from utils.evaluation.validator import EvalOptions, evaluate, split_loader, summarize
from utils.hyp import load_hyp, scale_hyp
from utils.loss import ComputeLossOTADy
from utils.torch_utils import select_device

LOGGER = logging.getLogger(__name__)
COLUMNS = ('threshold', 'easy_share', 'gflops_per_image', 'mAP@.5', 'mAP@.5:.95', 'eval_ms_per_image')


@dataclass
class ThresholdResult:
    """The 11 thresholds (as printed), the router scores they came from (with their image files, in the same
    order) and, after a sweep, its rows and folder."""
    thresholds: list[str]
    scores: np.ndarray
    files: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    save_dir: Path | None = None
    quality: RouterQuality | None = None


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


def log_path_times(model, img_size: int) -> None:
    """--time-paths: each path's time per frame at batch 1 here (the deployment latency --target-ms plans with)."""
    from utils.data.letterbox import evaluation_square
    from utils.detection.latency import measure_paths
    shape = tuple(getattr(model, 'fixed_size', None) or evaluation_square(img_size, int(model.stride.max())))
    times = measure_paths(model, shape, reps=20)
    m, p = ({k: f'{1e3 * v:.1f}' for k, v in d.items()} for d in (times.median, times.p95))
    LOGGER.info(f'Path times here at {shape[0]}x{shape[1]}, batch 1, {torch.get_num_threads()} torch threads '
                f'(median / p95 ms, without NMS): easy path {m["easy_path"]} / {p["easy_path"]}, hard path '
                f'{m["hard_path"]} / {p["hard_path"]}; part 1 (backbone 1 + router) {m["part1"]} / {p["part1"]}, '
                f'head 1 {m["easy"]} / {p["easy"]}, backbone 2 + head 2 {m["hard"]} / {p["hard"]}')


def dynamic_thresholds(opt: argparse.Namespace,
                       on_thresholds: Callable[[list[str]], None] | None = None) -> ThresholdResult:
    """get_dynamic_thres.py's job for its options: scores on --task → thresholds (handed to on_thresholds before
    any sweep, so they show at once) and the router percentiles file; with opt.sweep, the one-pass sweep too."""
    data = load_data_config(opt.data, required=(opt.task,))
    check_writable(Path(opt.project) / opt.name)  # before the pass over the split, not after it
    hyp = load_hyp(opt.hyp) if opt.sweep else None  # a bad --hyp fails now, not after the model and the split
    device = select_device(opt.device, opt.batch_size)
    model = load_inference_model(opt, data['nc'], device)
    if not model.dynamic:
        raise ConfigError(f'{opt.cfg}: has no router (not a step-2 config); use e.g. cfg/dy-yolov7-step2.yaml')
    loader, dataset, img_size = split_loader(model, opt, data, data['nc'], device)
    if getattr(opt, 'time_paths', False):
        log_path_times(model, img_size)
    records = None
    if opt.sweep:
        exported = getattr(model, 'fixed_size', None) is not None  # no raw maps, so no training losses
        if exported:
            LOGGER.info('Sweep of exported graphs: router and random routing; the oracle needs the PyTorch '
                        'checkpoint (it ranks images by training losses)')
        oracle = None if exported else oracle_loss(model, hyp, data['nc'], img_size)
        records = collect_path_records(model, loader, oracle_loss=oracle)
        scores = records.scores.float().numpy()
    else:
        scores = collect_scores(model, loader)
    result = ThresholdResult(thresholds_from_scores(scores), scores, list(dataset.img_files))
    if on_thresholds is not None:
        on_thresholds(result.thresholds)
    result.save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)
    result.save_dir.mkdir(parents=True, exist_ok=True)
    flops = model.flops(img_size)
    written = save_router_budget([result.save_dir / 'router.json', budget_file_for(opt.weight)], scores, opt.weight,
                                 img_size, flops, opt.task)
    LOGGER.info(f'Router percentiles (for --easy-share / --gflops) saved to {", ".join(map(str, written))}')
    if records is not None:
        result.rows, result.quality = sweep_rows(records, result.thresholds, flops, opt.random_orders)
        write_sweep(result.rows, result.quality, result.save_dir)
    return result


def oracle_loss(model, hyp: dict, nc: int, img_size: int) -> ComputeLossOTADy:
    """The step-2 loss object whose per-head losses rank images for the oracle (the hyp's gains scaled as step 2
    scales them)."""
    det = model.model_h2[-1]
    model.hyp = scale_hyp(hyp, det.nl, nc, img_size, 0.0)
    model.gr = 1.0
    return ComputeLossOTADy(model)


def sweep_rows(records: PathRecords, thresholds: list[str], flops: dict[str, float],
               random_orders: int) -> tuple[list[dict], RouterQuality]:
    """One row per threshold: the router's routing with its random and oracle baselines at the same easy share."""
    rows = []
    for t in tqdm(thresholds, desc='Sweep', unit='threshold'):
        easy = records.easy_mask(float(t))
        share = float(easy.mean()) if len(easy) else 1.0
        map50, map_ = routed_map(records, easy)
        row = dict(zip(COLUMNS, (float(t), share, share * flops['easy'] + (1 - share) * flops['hard'], map50, map_,
                                 records.ms_per_image(share))))
        rows.append(add_gains({**row, **baseline_columns(records, int(easy.sum()), random_orders)}))
        LOGGER.info(f'dy_thres {t}: {100 * share:.0f}% easy, {row["gflops_per_image"]:.4g} GFLOPs/image, '
                    f'mAP@.5 {map50:.4f}, mAP@.5:.95 {map_:.4f}')
    return rows, router_quality(records, rows)


def write_sweep(rows: list[dict], quality: RouterQuality, save_dir: Path) -> None:
    """sweep.csv, sweep.png, router_quality.txt (and .json) in save_dir; the quality summary logged."""
    with open(save_dir / 'sweep.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = format_quality(quality, rows)
    (save_dir / 'router_quality.txt').write_text(summary + '\n')
    (save_dir / 'router_quality.json').write_text(json.dumps(dataclasses.asdict(quality)) + '\n')  # for scripts
    plot_sweep(rows, save_dir / 'sweep.png')
    LOGGER.info(f'{summary}\nSweep saved to {save_dir / "sweep.csv"}, {save_dir / "sweep.png"} and '
                f'{save_dir / "router_quality.txt"}')


def evaluate_each_threshold(model, loader, thresholds: list[str], names: list[str]) -> list[dict]:
    """The sweep the slow way, one routed evaluation per threshold: rows of (threshold, easy_share, mAP@.5,
    mAP@.5:.95) that the one-pass sweep reproduces (kept to check it and to time both)."""
    rows = []
    for t in tqdm(thresholds, desc='Evaluations', unit='threshold'):
        model.dy_thres = float(t)
        opt = EvalOptions(names=names, plots=False, training=True)
        out, confusion = evaluate(model, loader, opt)
        (_, _, map50, map_), _ = summarize(out, opt, confusion)
        rows.append({'threshold': float(t), 'easy_share': out.n_easy / max(out.n_routed, 1), 'mAP@.5': map50,
                     'mAP@.5:.95': map_})
    return rows


def plot_sweep(rows: list[dict], path: Path, metric: str = 'mAP@.5:.95') -> None:
    """The router's mAP against mean GFLOPs per image, with the random band (mean ± sd) and the oracle."""
    import matplotlib.pyplot as plt

    from utils.plots import PLOT_DPI  # (importing utils.plots selects the file-only matplotlib backend)
    rows = sorted(rows, key=lambda r: r['gflops_per_image'])
    x = np.array([r['gflops_per_image'] for r in rows])
    random, sd = (np.array([r[f'random_{metric}{k}'] for r in rows]) for k in ('', '_sd'))
    fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
    ax.fill_between(x, random - sd, random + sd, color='grey', alpha=0.3, label='random routing (mean ± sd)')
    ax.plot(x, random, '-', color='grey', linewidth=1)
    ax.plot(x, [r[f'oracle_{metric}'] for r in rows], 's--', color='green', label='oracle (loss difference)')
    ax.plot(x, [r[metric] for r in rows], 'o-', color='blue', label='router')
    for r in rows:
        ax.annotate(f'{100 * r["easy_share"]:.0f}%', (r['gflops_per_image'], r[metric]), fontsize=7,
                    textcoords='offset points', xytext=(3, 3))
    ax.set(xlabel='mean GFLOPs per image', ylabel=metric, title='Dynamic routing sweep (labels: easy share)')
    ax.legend()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
