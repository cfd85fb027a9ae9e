"""Outputs of a training run folder (the reference's train_step1.py and train_step2.py): progress text, results.txt and
results.csv, results.png, LR.png, labels.png, train batch mosaics, TensorBoard scalars. Rank 0 only (the caller
decides).

results.txt keeps the reference's fixed-width text (checkpoints carry it as `training_results`); results.csv holds
the same epochs at full precision plus the learning rates, and is what results.png is drawn from.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

# importing utils.plots selects the Agg backend, which must happen before pyplot is imported
# isort: off
from utils.plots import PLOT_DPI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
# isort: on

from utils.evaluation.batch_plots import plot_batch, targets_to_boxes  # noqa: E402

LOGGER = logging.getLogger(__name__)

LOSS_NAMES = ('box', 'obj', 'cls', 'total')  # step 1; step 2 passes ('diff', 'score.0', 'score.1', 'total')
METRIC_COLUMNS = ('metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',
                  'val/box_loss', 'val/obj_loss', 'val/cls_loss')
LABEL_BOXES_DRAWN = 500  # the box-shape canvas gets this many boxes at most (more only blacken it)


def progress_header(loss_names: Sequence[str] = LOSS_NAMES) -> str:
    """The column header printed above the batch progress lines ('%10s' per column)."""
    names = ('Epoch', 'gpu_mem', *loss_names, 'labels', 'img_size')
    return ('%10s' * len(names)) % names


def progress_line(epoch: int, epochs: int, mem_gb: float, mean_losses: Sequence[float], n_targets: int,
                  img_size: int) -> str:
    """One progress line: epoch/last, reserved GPU memory, running mean losses, targets in the batch, image width."""
    numbers = [float(x) for x in mean_losses] + [n_targets, img_size]
    return ('%10s' * 2 + '%10.4g' * len(numbers)) % (f'{epoch}/{epochs - 1}', f'{mem_gb:.3g}G', *numbers)


def cuda_memory_gb() -> float:
    """Reserved CUDA memory in GB, 0 without CUDA (the progress line's gpu_mem)."""
    return torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0.0


def _append(path: Path, text: str) -> None:
    """Append in one O_APPEND write, then fsync, so a killed run leaves no half line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode()
        while data:  # os.write may write less than asked (never in practice for a line)
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    """Write a whole file through a temporary file and a rename, so readers see the old or the new one."""
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _line_epoch(line: str) -> int | None:
    """The epoch of a results.txt line ('3/299 ...' → 3), None for a line that is not one."""
    head = line.split()[0] if line.strip() else ''
    return int(head.split('/')[0]) if head.split('/')[0].isdigit() else None


class ResultsLog:
    """results.txt (reference text, one line per epoch) and results.csv (header + one row per epoch)."""

    def __init__(self, save_dir: str | Path, loss_names: Sequence[str] = LOSS_NAMES, lr_groups: int = 3):
        """lr_groups: optimizer parameter groups logged as x/lr0… (3 in step 1, 2 in step 2)."""
        self.txt = Path(save_dir) / 'results.txt'
        self.csv = Path(save_dir) / 'results.csv'
        self.loss_names = tuple(loss_names)
        self.columns = ['epoch', *(f'train/{n}_loss' for n in self.loss_names), *METRIC_COLUMNS,
                        *(f'x/lr{i}' for i in range(lr_groups))]

    def log(self, epoch: int, progress: str, train_losses: Sequence[float], results: Sequence[float],
            lrs: Sequence[float]) -> dict[str, float]:
        """Append one epoch: progress is the epoch's last progress line, results the 7 values (P, R, mAP@.5,
        mAP@.5:.95, val box, obj, cls). Returns the TensorBoard scalars (the total train loss left out)."""
        values = [float(x) for x in (*train_losses, *results, *lrs)]
        if len(values) != len(self.columns) - 1:
            raise ValueError(f'results.csv has {len(self.columns) - 1} value columns, got {len(values)} values')
        _append(self.txt, progress + '%10.4g' * 7 % tuple(float(x) for x in results) + '\n')
        if not self.csv.exists() or self.csv.stat().st_size == 0:
            _append(self.csv, ','.join(self.columns) + '\n')
        _append(self.csv, ','.join([str(epoch)] + [f'{v:.8g}' for v in values]) + '\n')
        scalars = dict(zip(self.columns[1:], values))
        scalars.pop(self.columns[len(self.loss_names)])  # the reference logs mloss[:-1]: no total
        return scalars

    def read_text(self) -> str:
        """The text of results.txt ('' when nothing was logged), for a checkpoint's `training_results`."""
        return self.txt.read_text() if self.txt.exists() else ''

    def epochs_logged(self) -> list[int]:
        """The epochs results.txt holds, in file order."""
        return [e for e in map(_line_epoch, self.read_text().splitlines()) if e is not None]

    def restore(self, text: str | None) -> None:
        """Make both files hold exactly the epochs of a checkpoint's results text ('' starts them afresh).

        results.csv keeps its own rows for those epochs; an epoch it lacks (a checkpoint from elsewhere, or a kill
        between the two appends) is rebuilt from the text's 4-digit numbers, with unknown learning rates as nan.
        """
        lines = [ln for ln in (text or '').splitlines() if ln.strip()]
        _replace(self.txt, ''.join(ln + '\n' for ln in lines))
        rows = self._csv_rows()
        out = [','.join(self.columns)]
        for ln in lines:
            epoch = _line_epoch(ln)
            if epoch is not None:
                out.append(rows.get(epoch) or self._row_from_text(epoch, ln))
        _replace(self.csv, '\n'.join(out) + '\n' if len(out) > 1 else '')

    def _csv_rows(self) -> dict[int, str]:
        """Existing results.csv rows by epoch (the last one wins), only if its columns are ours."""
        if not self.csv.exists():
            return {}
        lines = self.csv.read_text().splitlines()
        if not lines or lines[0] != ','.join(self.columns):
            return {}
        return {int(r.split(',')[0]): r for r in lines[1:] if r.split(',')[0].isdigit()}

    def _row_from_text(self, epoch: int, line: str) -> str:
        """A csv row from a results.txt line: columns 3… are losses, labels, img_size, then the 7 results."""
        fields = line.split()
        n = len(self.loss_names)
        numbers = fields[2:2 + n] + fields[4 + n:11 + n]
        lrs = ['nan'] * (len(self.columns) - 1 - len(numbers))
        return ','.join([str(epoch), *numbers, *lrs])


def read_results_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Column names and an (epochs, columns) float array of a results.csv (blank cells → nan)."""
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    if not rows:
        return [], np.zeros((0, 0))
    data = [[float(v) if v.strip() else math.nan for v in r] for r in rows[1:] if r]
    return rows[0], np.array(data, dtype=float).reshape(len(data), len(rows[0]))


def _smooth(y: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Gaussian smoothing with edge padding (finite values only), the trend line of results.png."""
    if len(y) < 3:
        return y
    r = int(min(3 * sigma, len(y) - 1))
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(np.pad(y, r, mode='edge'), kernel / kernel.sum(), mode='valid')


def plot_results(save_dir: str | Path) -> Path | None:
    """results.png: every results.csv column over epochs, points plus a smoothed line; None without data."""
    path = Path(save_dir) / 'results.csv'
    names, data = read_results_csv(path) if path.exists() else ([], np.zeros((0, 0)))
    if len(data) == 0:
        LOGGER.warning(f'plot_results: no epochs in {path}, results.png not drawn')
        return None
    cols = math.ceil((len(names) - 1) / 2)
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.5))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.07, top=0.92, wspace=0.45, hspace=0.4)  # tight_layout: +50 %
    for ax, name, y in zip(axes.ravel(), names[1:], data[:, 1:].T):
        ax.tick_params(labelsize=7)
        ok = np.isfinite(y)
        ax.plot(data[ok, 0], y[ok], marker='.', linewidth=1, markersize=6, label='results')
        ax.plot(data[ok, 0], _smooth(y[ok]), ':', linewidth=2, label='smooth')
        ax.set_title(name, fontsize=10)
    for ax in axes.ravel()[len(names) - 1:]:
        ax.axis('off')
    axes.ravel()[0].legend(fontsize=7)
    out = Path(save_dir) / 'results.png'
    fig.savefig(out, dpi=PLOT_DPI)
    plt.close(fig)
    return out


def plot_lr_schedule(lr_fn: Callable[[int], float], epochs: int, lr0: float, save_dir: str | Path) -> Path:
    """LR.png: lr0·lr_fn(epoch) for every epoch (lr_fn is the LambdaLR factor of the reference's train_step1.py)."""
    y = [lr0 * lr_fn(e) for e in range(epochs)]
    fig, ax = plt.subplots(1, 1, figsize=(6, 4), tight_layout=True)
    ax.plot(y, '.-', label='LR')
    ax.set(xlabel='epoch', ylabel='LR', xlim=(0, max(epochs, 1)), ylim=(0, None))
    ax.grid()
    out = Path(save_dir) / 'LR.png'
    fig.savefig(out, dpi=PLOT_DPI)
    plt.close(fig)
    return out


def _box_canvas(ax: plt.Axes, labels: np.ndarray, colours: np.ndarray) -> None:
    """Draw up to LABEL_BOXES_DRAWN boxes centred in a unit square, to show box shapes."""
    shown = labels[:LABEL_BOXES_DRAWN]
    rects = [Rectangle((0.5 - w / 2, 0.5 - h / 2), w, h) for w, h in shown[:, 3:5]]
    ax.add_collection(PatchCollection(rects, facecolor='none', linewidth=0.5,
                                      edgecolor=colours[shown[:, 0].astype(int) % len(colours)]))
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect='equal', xticks=[], yticks=[])


def plot_labels(labels: np.ndarray, names: Sequence[str], save_dir: str | Path) -> Path:
    """labels.png of (n, 5) [class, cx, cy, w, h] normalised labels: class counts, box shapes, x-y and w-h maps."""
    labels = np.asarray(labels, dtype=float).reshape(-1, 5)
    nc = max(len(names), int(labels[:, 0].max()) + 1 if len(labels) else 1)
    colours = plt.get_cmap('tab20')(np.arange(20))
    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    ax[0].hist(labels[:, 0], bins=np.arange(nc + 1) - 0.5, rwidth=0.8, color=colours[0])
    ax[0].set(ylabel='instances', xlim=(-0.5, nc - 0.5))
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(len(names)), [str(n) for n in names], rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel('classes')
    _box_canvas(ax[1], labels, colours)
    for a, (i, j), (xl, yl) in zip(ax[2:], ((1, 2), (3, 4)), (('x', 'y'), ('width', 'height'))):
        a.hist2d(labels[:, i], labels[:, j], bins=50, range=[[0, 1], [0, 1]], cmap='Blues', cmin=1)
        a.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1))
    out = Path(save_dir) / 'labels.png'
    fig.savefig(out, dpi=PLOT_DPI)
    plt.close(fig)
    return out


def plot_train_batch(imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str], save_path: str | Path,
                     names: Sequence[str]) -> Path:
    """train_batch{ni}.jpg: the batch (B, 3, H, W) with its targets [image, class, cx, cy, w, h] (normalised)."""
    t = targets.detach().cpu().float().clone().reshape(-1, 6)
    h, w = imgs.shape[-2:]
    t[:, [2, 4]] *= w
    t[:, [3, 5]] *= h
    return plot_batch(imgs, targets_to_boxes(t, imgs.shape[0]), list(paths), list(names), save_path, labels=True)


class TrainWriter:
    """TensorBoard scalars and histograms when the tensorboard package is importable, otherwise a no-op."""

    def __init__(self, save_dir: str | Path, enabled: bool = True):
        """Open a SummaryWriter in save_dir; warns once and stays a no-op without tensorboard."""
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard, which is optional
        except ImportError:
            LOGGER.warning('WARNING: install tensorboard to get TensorBoard logs')
            return
        self._writer = SummaryWriter(log_dir=str(save_dir))
        LOGGER.info(f"TensorBoard: start with 'tensorboard --logdir {Path(save_dir).parent}'")

    @property
    def active(self) -> bool:
        """Whether events are being written."""
        return self._writer is not None

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One scalar per tag at this step."""
        if self._writer is not None:
            for tag, v in values.items():
                self._writer.add_scalar(tag, float(v), step)

    def histogram(self, name: str, values: torch.Tensor | np.ndarray, step: int) -> None:
        """A histogram of the values (e.g. the label classes); empty input is skipped."""
        arr = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=float).ravel()
        if self._writer is not None and arr.size:
            self._writer.add_histogram(name, arr, step)

    def close(self) -> None:
        """Flush and close (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

