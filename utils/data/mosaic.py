"""Mosaics of 4 and 9 images with their labels and polygons (the reference's utils/datasets.py), faithful to the
reference.

Each function takes the dataset (for `load_images`, `labels`, `segments`, `draw_partners`, `img_size`, `hyp`) and draws
its randomness from Python `random` in the reference's order, so a seeded run repeats.
"""
from __future__ import annotations

import random

import numpy as np

from utils.data.augmentations import random_perspective
from utils.data.paste_in import copy_paste
from utils.general import xyn2xy, xywhn2xyxy

FILL = 114


def _tile_labels(dataset, index: int, w: int, h: int, padw: float, padh: float) -> tuple[np.ndarray, list]:
    """The image's labels as pixel xyxy and its polygons as pixels, shifted by the tile's placement."""
    labels = dataset.labels[index].copy()
    segments = dataset.segments[index]
    if labels.size:
        labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
        segments = [xyn2xy(x, w, h, padw, padh) for x in segments]
    return labels, list(segments)


def _clip_all(labels: np.ndarray, segments: list[np.ndarray], limit: float) -> None:
    for x in (labels[:, 1:], *segments):
        np.clip(x, 0, limit, out=x)


def mosaic4_canvas(dataset, index: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """2s×2s canvas: the sample and 3 random images meeting at a random centre; labels xyxy, clipped to it."""
    s = dataset.img_size
    yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in dataset.mosaic_border)
    indices = [index] + dataset.draw_partners(3)
    canvas, labels4, segments4 = None, [], []
    for i, (idx, (img, _, (h, w))) in enumerate(zip(indices, dataset.load_images(indices))):
        if canvas is None:
            canvas = np.full((s * 2, s * 2, img.shape[2]), FILL, dtype=np.uint8)
        if i == 0:  # top left: its bottom-right corner on the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        labels, segments = _tile_labels(dataset, idx, w, h, x1a - x1b, y1a - y1b)
        labels4.append(labels)
        segments4.extend(segments)
    labels4 = np.concatenate(labels4, 0)
    _clip_all(labels4, segments4, 2 * s)
    return canvas, labels4, segments4


def _tile9_corners(i: int, s: int, h: int, w: int, h0: int, w0: int, hp: int, wp: int) -> tuple[int, int, int, int]:
    """Where tile i of the 9-mosaic goes: around the centre tile (h0, w0), each aligned to the previous (hp, wp)."""
    return [
        (s, s, s + w, s + h),  # centre
        (s, s - h, s + w, s),  # top
        (s + wp, s - h, s + wp + w, s),  # top right
        (s + w0, s, s + w0 + w, s + h),  # right
        (s + w0, s + hp, s + w0 + w, s + hp + h),  # bottom right
        (s + w0 - w, s + h0, s + w0, s + h0 + h),  # bottom
        (s + w0 - wp - w, s + h0, s + w0 - wp, s + h0 + h),  # bottom left
        (s - w, s + h0 - h, s, s + h0),  # left
        (s - w, s + h0 - hp - h, s, s + h0 - hp),  # top left
    ][i]


def mosaic9_canvas(dataset, index: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """3s×3s canvas of 9 images around the sample, then a random 2s×2s crop; labels xyxy, clipped to it."""
    s = dataset.img_size
    indices = [index] + dataset.draw_partners(8)
    canvas, labels9, segments9 = None, [], []
    h0 = w0 = hp = wp = 0
    for i, (idx, (img, _, (h, w))) in enumerate(zip(indices, dataset.load_images(indices))):
        if i == 0:
            canvas = np.full((s * 3, s * 3, img.shape[2]), FILL, dtype=np.uint8)
            h0, w0 = h, w
        padx, pady, *_ = corners = _tile9_corners(i, s, h, w, h0, w0, hp, wp)
        x1, y1, x2, y2 = (max(c, 0) for c in corners)
        labels, segments = _tile_labels(dataset, idx, w, h, padx, pady)
        labels9.append(labels)
        segments9.extend(segments)
        canvas[y1:y2, x1:x2] = img[y1 - pady:, x1 - padx:]
        hp, wp = h, w
    yc, xc = (int(random.uniform(0, s)) for _ in dataset.mosaic_border)
    canvas = canvas[yc:yc + 2 * s, xc:xc + 2 * s]
    labels9 = np.concatenate(labels9, 0)
    labels9[:, [1, 3]] -= xc
    labels9[:, [2, 4]] -= yc
    offset = np.array([xc, yc])
    segments9 = [x - offset for x in segments9]
    _clip_all(labels9, segments9, 2 * s)
    return canvas, labels9, segments9


def _perspective(dataset, img: np.ndarray, labels: np.ndarray, segments: list) -> tuple[np.ndarray, np.ndarray]:
    hyp = dataset.hyp
    img, labels, segments = copy_paste(img, labels, segments, probability=hyp.get('copy_paste', 0.0))
    return random_perspective(img, labels, segments, degrees=hyp['degrees'], translate=hyp['translate'],
                              scale=hyp['scale'], shear=hyp['shear'], perspective=hyp['perspective'],
                              border=dataset.mosaic_border)


def load_mosaic(dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """4-image mosaic after random perspective: s×s image, labels (n, 5) [cls, x1, y1, x2, y2] pixels."""
    return _perspective(dataset, *mosaic4_canvas(dataset, index))


def load_mosaic9(dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """9-image mosaic after random perspective: s×s image, labels (n, 5) [cls, x1, y1, x2, y2] pixels."""
    return _perspective(dataset, *mosaic9_canvas(dataset, index))
