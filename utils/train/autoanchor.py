"""Autoanchor (the reference's train_step1.py and models/yolo.py (Model._initialize_biases)): check how well the
anchors fit the labels; re-fit them by k-means + evolution.

The YOLOv5/YOLOv7 procedure. Training draws from numpy's global generator, as the reference does: the trainer has
seeded it (`init_seeds`), and what autoanchor draws there shifts every later numpy draw of the augmentations, so a
run follows the reference's random stream only if autoanchor consumes the same draws. Given a `seed` (the
standalone use, tests), the draws come from `np.random.default_rng(seed)` and leave the global stream alone.
Extension: new anchors are written into BOTH detection layers (the reference updated head 2 only, while head 1
decoded with its own anchors).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.cluster.vq import kmeans
from tqdm import tqdm

from models.detect import IDetect
from models.yolo import _check_anchor_order

LOGGER = logging.getLogger(__name__)
RandomSource = Any  # np.random.Generator, or the np.random module (the global RandomState): both draw alike here
PREFIX = 'autoanchor: '
BPR_REFIT = 0.98  # below this best possible recall the anchors are re-estimated


def random_source(seed: int | None) -> RandomSource:
    """A seeded generator, or (seed None) numpy's global generator as the reference draws from it."""
    return np.random if seed is None else np.random.default_rng(seed)


def label_wh(dataset: Any, img_size: int, rng: RandomSource | None = None) -> np.ndarray:
    """Label (w, h) in pixels with each image's long side at img_size; with rng, each image scaled ×U(0.9, 1.1)."""
    shapes = img_size * dataset.shapes / dataset.shapes.max(1, keepdims=True)
    if rng is not None:  # mimics the scale augmentation, so the check sees sizes training will see
        shapes = shapes * rng.uniform(0.9, 1.1, size=(len(shapes), 1))
    wh = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(shapes, dataset.labels)]
    return np.concatenate(wh or [np.zeros((0, 2))]).astype(np.float32)


def anchor_metric(wh: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels × anchors) ratio metric min over w, h of min(r, 1/r), and each label's best value."""
    r = wh[:, None] / anchors[None]
    with np.errstate(divide='ignore'):  # a zero-size label gives r = 0, 1/r = inf → metric 0, as in torch
        x = np.minimum(r, 1 / r).min(2)
    return x, x.max(1)


def anchor_stats(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, anchors above threshold per target) of pixel anchors for label wh."""
    if not len(wh):
        return 0.0, 0.0
    x, best = anchor_metric(wh, anchors)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def _fitness(k: np.ndarray, wh: np.ndarray, thr: float) -> float:
    """Evolution fitness: mean best metric, counting only labels past the threshold."""
    _, best = anchor_metric(wh, k)
    return float((best * (best > 1 / thr)).mean())


def _sort_by_area(k: np.ndarray) -> np.ndarray:
    """Anchors ordered small to large by w·h (the order of increasing stride)."""
    return k[np.argsort(k.prod(1))]


def _log_results(k: np.ndarray, wh0: np.ndarray, thr: float, img_size: int) -> None:
    """Log the fit of anchors k (already area-sorted) to all labels, the reference's two lines."""
    x, best = anchor_metric(wh0, k)
    bpr, aat = anchor_stats(wh0, k, thr)
    past = x[x > 1 / thr]
    LOGGER.info(f'{PREFIX}thr={1 / thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr')
    LOGGER.info(f'{PREFIX}n={len(k)}, img_size={img_size}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, '
                f'past_thr={past.mean() if past.size else 0:.3f}-mean: '
                + ',  '.join(f'{round(w)},{round(h)}' for w, h in k))


def _initial_anchors(wh: np.ndarray, n: int, img_size: int, rng: RandomSource) -> np.ndarray:
    """k-means centroids of whitened wh; random anchors when k-means cannot give n distinct ones."""
    LOGGER.info(f'{PREFIX}Running kmeans for {n} anchors on {len(wh)} points...')
    if len(wh) >= n:  # scipy samples n distinct starting points, so it needs at least n labels
        s = wh.std(0)
        s = np.where(s > 0, s, 1.0)  # a constant column cannot be whitened; leave it unscaled
        k = kmeans(wh / s, n, iter=30, seed=None if rng is np.random else rng)[0] * s  # None: the global one
        if len(k) == n:
            return k
    LOGGER.warning(f'{PREFIX}WARNING: switching strategies from kmeans to random init')
    return np.sort(rng.random(n * 2)).reshape(n, 2) * img_size


def _evolve(k: np.ndarray, wh: np.ndarray, thr: float, gen: int, rng: RandomSource,
            on_improve: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Genetic mutation (prob 0.9, sigma 0.1) for gen generations, keeping each mutation that raises fitness."""
    f, sh, mp, s = _fitness(k, wh, thr), k.shape, 0.9, 0.1
    desc = f'{PREFIX}Evolving anchors with Genetic Algorithm'
    pbar = tqdm(range(gen), desc=desc, disable=not LOGGER.isEnabledFor(logging.INFO))
    for _ in pbar:
        v = np.ones(sh)
        while (v == 1).all():  # mutate until something changes, so no generation re-scores the parent
            v = ((rng.random(sh) < mp) * rng.random() * rng.standard_normal(sh) * s + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = _fitness(kg, wh, thr)
        if fg > f:
            f, k = fg, kg
            pbar.desc = f'{desc}: fitness = {f:.4f}'
            if on_improve is not None:
                on_improve(_sort_by_area(k))
    return k


def kmean_anchors(wh_or_dataset: Any, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  seed: int | None = 0, verbose: bool = True) -> np.ndarray:
    """n anchors (n, 2) in pixels fitted to the labels (a dataset, or an (N, 2) pixel wh array), area-sorted;
    seed None draws from numpy's global generator (the reference's stream)."""
    rng = random_source(seed)
    if isinstance(wh_or_dataset, np.ndarray):
        wh0 = wh_or_dataset.astype(np.float32).reshape(-1, 2)
    else:
        wh0 = label_wh(wh_or_dataset, img_size)
    if not len(wh0):
        raise ValueError(f'{PREFIX}no labels to fit anchors to')
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.warning(f'{PREFIX}WARNING: Extremely small objects found. '
                       f'{small} of {len(wh0)} labels are < 3 pixels in size.')
    wh = wh0[(wh0 >= 2.0).any(1)]  # tiny boxes would drag the smallest anchors towards nothing
    k = _sort_by_area(_initial_anchors(wh, n, img_size, rng))
    _log_results(k, wh0, thr, img_size)
    report = (lambda a: _log_results(a, wh0, thr, img_size)) if verbose else None
    k = _sort_by_area(_evolve(k, wh, thr, gen, rng, report))
    _log_results(k, wh0, thr, img_size)
    return k


@torch.no_grad()
def _set_anchors(det: IDetect, anchors: np.ndarray) -> None:
    """Write pixel anchors into a detection layer: anchor_grid in pixels, anchors in grid units."""
    a = torch.from_numpy(np.ascontiguousarray(anchors, dtype=np.float32))
    det.anchor_grid.copy_(a.view_as(det.anchor_grid))  # copy_ converts to the buffer's device and dtype
    det.anchors.copy_(a.view_as(det.anchors))
    _check_anchor_order(det)  # flips both buffers together, so the division below uses the matching stride
    det.anchors /= det.stride.to(det.anchors).view(-1, 1, 1)


def check_anchors(dataset: Any, model: torch.nn.Module, thr: float = 4.0, imgsz: int = 640,
                  seed: int | None = None, refit: bool = True) -> bool:
    """Check head 2's anchors against the labels; if BPR < 0.98 re-fit them and adopt in both heads if better
    (with refit False only report: step 2's detector is frozen with its anchors). seed None: numpy's global
    generator, whose stream the reference's training continues with."""
    model = getattr(model, 'module', model)  # DDP / DataParallel wrapper
    det1, det2 = model.detect_layers
    wh = label_wh(dataset, imgsz, random_source(seed))
    if not len(wh):
        LOGGER.warning(f'{PREFIX}WARNING: no labels, anchors not checked')
        return False
    anchors = det2.anchor_grid.detach().float().cpu().numpy().reshape(-1, 2)
    bpr, aat = anchor_stats(wh, anchors, thr)
    line = f'{PREFIX}Analyzing anchors... anchors/target = {aat:.2f}, Best Possible Recall (BPR) = {bpr:.4f}'
    if bpr >= BPR_REFIT:
        LOGGER.info(f'{line}, current anchors are a good fit to dataset')
        return False
    if not refit:
        LOGGER.warning(f'{line}: below {BPR_REFIT}, but the anchors stay the frozen step-1 detector\'s (its boxes '
                       f'were trained with them); to re-fit them, train step 1 on this data without --noautoanchor')
        return False
    LOGGER.info(f'{line}. Attempting to improve anchors, please wait...')
    new = kmean_anchors(dataset, n=len(anchors), img_size=imgsz, thr=thr, gen=1000, seed=seed, verbose=False)
    new_bpr = anchor_stats(wh, new, thr)[0]
    if new_bpr <= bpr:
        LOGGER.info(f'{PREFIX}Original anchors better than new anchors (BPR {new_bpr:.4f}). '
                    'Proceeding with original anchors.')
        return False
    for det in (det1, det2):
        _set_anchors(det, new)
    LOGGER.info(f'{PREFIX}New anchors saved to model (BPR {bpr:.4f} -> {new_bpr:.4f}). '
                'Update model *.yaml to use these anchors in the future.')
    return True
