"""Evaluation plots: PR / metric-vs-confidence curves and the confusion matrix (the reference's test.py), with
matplotlib only.

The reference drew the confusion matrix with seaborn; here it is matplotlib's `imshow` with the same layout
(columns normalised to 1, background last), so no extra dependency is needed.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # files only: no display needed, safe in workers and on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_LEGEND_CLASSES = 21  # per-class lines get a legend only when there are few classes
# The reference drew at 200-250 dpi: 3000-px PNGs, ~1 s each to encode on a CPU core, read on screens at a third
# of that; 150 dpi keeps every label sharp at a third of the time.
PLOT_DPI = 150


def _name(names: dict | list | tuple, i: int) -> str:
    if isinstance(names, dict):
        return str(names.get(i, i))
    return str(names[i]) if i < len(names) else str(i)


def plot_pr_curve(px: np.ndarray, py: list[np.ndarray], ap: np.ndarray, save_path: Path,
                  names: dict | list | tuple = ()) -> None:
    """Precision over recall per class (IoU 0.5) and for all classes, with AP@.5 in the legend."""
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    py = np.stack(py, axis=1) if py else np.zeros((len(px), 0))
    per_class = 0 < len(ap) < MAX_LEGEND_CLASSES
    for i, y in enumerate(py.T):
        ax.plot(px, y, linewidth=1, label=f'{_name(names, i)} {ap[i, 0]:.3f}' if per_class else None, color='grey')
    if py.shape[1]:
        ax.plot(px, py.mean(1), linewidth=3, color='blue', label=f'all classes {ap[:, 0].mean():.3f} mAP@0.5')
    ax.set(xlabel='Recall', ylabel='Precision', xlim=(0, 1), ylim=(0, 1))
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    fig.savefig(save_path, dpi=PLOT_DPI)
    plt.close(fig)


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_path: Path, names: dict | list | tuple = (),
                  xlabel: str = 'Confidence', ylabel: str = 'Metric') -> None:
    """A metric (F1, P or R) over confidence per class, and the class mean with its best value."""
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    per_class = 0 < len(py) < MAX_LEGEND_CLASSES
    for i, y in enumerate(py):
        ax.plot(px, y, linewidth=1, label=_name(names, i) if per_class else None, color='grey')
    if len(py):
        y = py.mean(0)
        ax.plot(px, y, linewidth=3, color='blue', label=f'all classes {y.max():.2f} at {px[y.argmax()]:.3f}')
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    fig.savefig(save_path, dpi=PLOT_DPI)
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, save_path: Path, names: dict | list | tuple = ()) -> None:
    """The (nc + 1)² matrix, each true-class column normalised to 1; values < 0.005 left blank."""
    nc = len(matrix) - 1
    norm = matrix / (matrix.sum(0).reshape(1, -1) + 1e-6)
    norm[norm < 0.005] = np.nan
    fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
    image = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046)
    labels = [_name(names, i) for i in range(nc)] + ['background']
    if nc < 30:  # readable: class names on the axes and values in the cells
        ax.set_xticks(range(nc + 1), labels, rotation=90)
        ax.set_yticks(range(nc + 1), labels)
        for (i, j), v in np.ndenumerate(norm):
            if not np.isnan(v):
                ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=8,
                        color='white' if v > 0.5 else 'black')
    ax.set(xlabel='True', ylabel='Predicted')
    fig.savefig(save_path, dpi=PLOT_DPI)
    plt.close(fig)
