"""YOLOv7 "paste-in" augmentation (the reference's utils/datasets.py), faithful to the reference.

Object samples (class, masked pixels inside the box, filled-polygon mask) are harvested from 4-image mosaics of
random images (`harvest_samples`, the reference's `sample_segments`; `collect_samples`, the loop in
`LoadImagesAndLabels.__getitem__`), then pasted into free places of the training image at 20 decreasing scales
(`paste_in`, the reference's `pastein`). Randomness comes from Python's module-level `random` functions in the
reference's call order, so `random.seed` reproduces the reference's draws.

Reference quirks kept on purpose:
- a sample's pixels are the polygon mask (255) overwritten by the image wherever the image channel is non-zero, so
  an exactly-0 channel inside the object becomes 255;
- the reference keeps a view of that same canvas as the sample's mask, so the mask *is* the sample's pixels
  (non-zero exactly inside the polygon); paste-in's `> 0` test then runs on the resized pixels, which can differ
  from a resized 255 mask only at edges next to very dark pixels;
- the "> 60" mask test counts mask elements of the 3-channel mask (pixels × 3), not pixels;
- collection stops early only while nothing has been collected yet (the reference's `len(...) == 0` check is made
  on the running total, i.e. after a first empty attempt).

Reference defect fixed: the mask count used `np.int`, removed in numpy ≥ 1.24, so the reference crashed the first
time a sample was pasted; plain `int` gives the identical count.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import cv2
import numpy as np

Samples = tuple[list[float], list[np.ndarray], list[np.ndarray]]

# Fraction of the image size for each of the 20 placement tries (largest first).
PASTE_SCALES = [0.75] * 2 + [0.5] * 4 + [0.25] * 4 + [0.125] * 4 + [0.0625] * 6


def bbox_ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of box1 (4,) with each of box2 (n, 4), over box2's area; boxes x1y1x2y2 → (n,)."""
    b2 = np.asarray(box2).T
    inter_w = (np.minimum(box1[2], b2[2]) - np.maximum(box1[0], b2[0])).clip(0)
    inter_h = (np.minimum(box1[3], b2[3]) - np.maximum(box1[1], b2[1])).clip(0)
    box2_area = (b2[2] - b2[0]) * (b2[3] - b2[1]) + eps
    return inter_w * inter_h / box2_area


def _filled_polygon(polygon: np.ndarray, shape: tuple, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """The reference's 255-filled polygon on an image-sized canvas, cropped to [y1:y2, x1:x2].

    A polygon inside the image fills identically on a canvas just around it (integer shift), which saves
    allocating and clearing a mosaic-sized canvas per object; OpenCV clips polygons that reach the image
    border differently on a smaller canvas, so those still use the full one.
    """
    h, w = shape[:2]
    lo, hi = polygon.min(0), polygon.max(0)
    if (lo >= 0).all() and hi[0] < w and hi[1] < h:
        ox, oy = min(lo[0], x1), min(lo[1], y1)
        local = np.zeros((max(hi[1], y2) - oy + 1, max(hi[0], x2) - ox + 1, shape[2]), np.uint8)
        cv2.drawContours(local, [polygon - [ox, oy]], -1, (255, 255, 255), cv2.FILLED)
        return local[y1 - oy:y2 - oy, x1 - ox:x2 - ox].copy()
    canvas = np.zeros(shape, np.uint8)
    cv2.drawContours(canvas, [polygon], -1, (255, 255, 255), cv2.FILLED)
    return canvas[y1:y2, x1:x2].copy()  # a copy lets the mosaic-sized canvas go


def harvest_samples(img: np.ndarray, labels: np.ndarray, segments: list[np.ndarray],
                    probability: float = 0.5) -> Samples:
    """Cut a random `probability` share of the segmented objects out of img: (classes, crops, masks)."""
    classes: list[float] = []
    crops: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    n = len(segments)
    if not (probability and n):
        return classes, crops, masks
    h, w = img.shape[:2]
    for j in random.sample(range(n), k=round(probability * n)):
        lab = labels[j]
        # int() truncation then clipping to the last pixel, as the reference does
        x1, x2 = (int(v) for v in np.clip(lab[[1, 3]].astype(int), 0, w - 1))
        y1, y2 = (int(v) for v in np.clip(lab[[2, 4]].astype(int), 0, h - 1))
        if x2 <= x1 or y2 <= y1:
            continue
        crop = _filled_polygon(segments[j].astype(np.int32), img.shape, x1, y1, x2, y2)
        result = cv2.bitwise_and(img[y1:y2, x1:x2], crop)
        keep = result > 0
        crop[keep] = result[keep]
        classes.append(lab[0])
        crops.append(crop)
        # The reference's mask is a view of the canvas that the line above overwrites, so it is the crop itself.
        masks.append(crop)
    return classes, crops, masks


def collect_samples(make_mosaic: Callable[[], tuple[np.ndarray, np.ndarray, list[np.ndarray]]],
                    min_samples: int = 30) -> Samples:
    """Harvest samples (probability 0.5) from fresh mosaics until there are at least min_samples."""
    classes: list[float] = []
    crops: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    while len(classes) < min_samples:
        c, s, m = harvest_samples(*make_mosaic(), probability=0.5)
        classes += c
        crops += s
        masks += m
        # Checked on the running total like the reference: only a dataset yielding nothing stops the loop.
        if not classes:
            break
    return classes, crops, masks


def paste_in(img: np.ndarray, labels: np.ndarray, classes: list[float], crops: list[np.ndarray],
             masks: list[np.ndarray]) -> np.ndarray:
    """Paste samples into free places of img (in place); returns labels (n, 5) with the pasted boxes appended."""
    h, w = img.shape[:2]
    for s in PASTE_SCALES:
        if random.random() < 0.2:
            continue
        mask_h = random.randint(1, int(h * s))
        mask_w = random.randint(1, int(w * s))
        xmin = max(0, random.randint(0, w) - mask_w // 2)
        ymin = max(0, random.randint(0, h) - mask_h // 2)
        xmax = min(w, xmin + mask_w)
        ymax = min(h, ymin + mask_h)
        box = np.array([xmin, ymin, xmax, ymax], dtype=np.float32)
        # Pasted labels join `labels`, so later tries also avoid covering earlier pastes.
        ioa = bbox_ioa(box, labels[:, 1:5]) if len(labels) else np.zeros(1)
        if not ((ioa < 0.30).all() and len(classes) and xmax > xmin + 20 and ymax > ymin + 20):
            continue
        sel = random.randint(0, len(classes) - 1)
        hs, ws = crops[sel].shape[:2]
        r_scale = min((ymax - ymin) / hs, (xmax - xmin) / ws)
        r_w, r_h = int(ws * r_scale), int(hs * r_scale)
        if r_w <= 10 or r_h <= 10:
            continue
        r_mask = cv2.resize(masks[sel], (r_w, r_h))
        r_image = cv2.resize(crops[sel], (r_w, r_h))
        target = img[ymin:ymin + r_h, xmin:xmin + r_w]  # a view: writing it writes img
        m_ind = r_mask > 0
        if m_ind.astype(int).sum() > 60:  # reference: np.int (removed in numpy 1.24)
            target[m_ind] = r_image[m_ind]
            new = np.array([[classes[sel], xmin, ymin, xmin + r_w, ymin + r_h]],
                           dtype=np.result_type(labels.dtype, np.float32))
            labels = np.concatenate((labels, new), 0) if len(labels) else new
    return labels


def copy_paste(img: np.ndarray, labels: np.ndarray, segments: list[np.ndarray],
               probability: float = 0.5) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Segment copy-paste (hyp `copy_paste`, 0 in the shipped recipes): mirror a random share of the objects
    left-right into the same image where they overlap no label by 30 % or more; img changed in place."""
    n = len(segments)
    if not (probability and n):
        return img, labels, segments
    w = img.shape[1]
    segments = list(segments)
    canvas = np.zeros(img.shape, np.uint8)
    for j in random.sample(range(n), k=round(probability * n)):
        lab, seg = labels[j], segments[j]
        box = np.array([w - lab[3], lab[2], w - lab[1], lab[4]])
        if (bbox_ioa(box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, [[lab[0], *box]]), 0)
            segments.append(np.concatenate((w - seg[:, 0:1], seg[:, 1:2]), 1))
            cv2.drawContours(canvas, [seg.astype(np.int32)], -1, (255, 255, 255), cv2.FILLED)
    mirrored = cv2.flip(cv2.bitwise_and(img, canvas), 1)
    keep = mirrored > 0
    img[keep] = mirrored[keep]
    return img, labels, segments
