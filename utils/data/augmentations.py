"""Training-time image augmentations, faithful to the reference (the reference's utils/datasets.py).

Random perspective, box filtering, HSV jitter, mixup and flips keep the reference's names, arguments,
formulas and the order of their random draws from the module-level Python `random` and `numpy.random`
generators, so seeding both reproduces a run. Deviations, none of which changes a result:
- `random_perspective` does not overwrite the caller's `segments` list with the resampled polygons and
  accepts a float `border` (cast to int for the output size).
- `mixup` accumulates into one float64 buffer instead of three; the float64 arithmetic and the truncating
  cast to uint8 are the reference's.
- `random_flips` gathers the reference's inline step-4 flips into one function and flips a copy of the labels.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import cv2
import numpy as np

from utils.general import resample_segments, segment2box


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of boxes (4, n) worth keeping after augmentation: box1 before, box2 after."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _warp_boxes(targets: np.ndarray, segments: Sequence[np.ndarray], M: np.ndarray, width: int, height: int,
                perspective: float) -> tuple[np.ndarray, bool]:
    """Boxes after the warp: of the resampled polygons when there are any, else of the 4 corners, clipped."""
    n = len(targets)
    use_segments = any(x.any() for x in segments)
    new = np.zeros((n, 4))
    if use_segments:
        for i, segment in enumerate(resample_segments(list(segments))):
            xy = np.ones((len(segment), 3))
            xy[:, :2] = segment
            xy = xy @ M.T
            xy = xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]
            new[i] = segment2box(xy, width, height)
        return new, True
    xy = np.ones((n * 4, 3))
    xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
    x = xy[:, [0, 2, 4, 6]]
    y = xy[:, [1, 3, 5, 7]]
    new = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    return new, False


def random_perspective(img: np.ndarray, targets: np.ndarray | Sequence = (), segments: Sequence[np.ndarray] = (),
                       degrees: float = 10, translate: float = .1, scale: float = .1, shear: float = 10,
                       perspective: float = 0.0, border: tuple[float, float] = (0, 0)
                       ) -> tuple[np.ndarray, np.ndarray | Sequence]:
    """Warp an image and its [cls, x1, y1, x2, y2] pixel targets by a random M = T·S·R·P·C (the reference's
    utils/datasets.py)."""
    height = int(img.shape[0] + border[0] * 2)  # a negative (mosaic) border crops the canvas
    width = int(img.shape[1] + border[1] * 2)

    C = np.eye(3)  # centre of the input at the origin, so R and S act about it
    C[0, 2] = -img.shape[1] / 2
    C[1, 2] = -img.shape[0] / 2

    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)

    R = np.eye(3)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1.1 + scale)  # asymmetric upper bound, as in the reference
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)

    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)

    T = np.eye(3)  # relative to the output size, so the origin lands near the output centre
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height

    M = T @ S @ R @ P @ C
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(width, height), borderValue=(114, 114, 114))
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(width, height), borderValue=(114, 114, 114))

    if len(targets):
        new, use_segments = _warp_boxes(targets, segments, M, width, height, perspective)
        # scaling the original box by s makes the area test relative to what the scale alone would give
        keep = box_candidates(box1=targets[:, 1:5].T * s, box2=new.T, area_thr=0.01 if use_segments else 0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return img, targets


def augment_hsv(img: np.ndarray, hgain: float = .5, sgain: float = .5, vgain: float = .5) -> None:
    """Jitter hue, saturation and value of a BGR uint8 image in place through 256-entry lookup tables."""
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    dtype = img.dtype

    x = np.arange(0, 256, dtype=np.int16)
    lut_hue = ((x * r[0]) % 180).astype(dtype)  # OpenCV's 8-bit hue spans 0..179 and wraps around
    lut_sat = np.clip(x * r[1], 0, 255).astype(dtype)
    lut_val = np.clip(x * r[2], 0, 255).astype(dtype)

    img_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val))).astype(dtype)
    cv2.cvtColor(img_hsv, cv2.COLOR_HSV2BGR, dst=img)


def mixup(img: np.ndarray, labels: np.ndarray, img2: np.ndarray, labels2: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Blend two uint8 images as img·r + img2·(1 − r), r ~ Beta(8, 8), and concatenate their labels."""
    r = np.random.beta(8.0, 8.0)
    blend = img * r  # float64, like the reference; the second product is added in place
    blend += img2 * (1 - r)
    return blend.astype(np.uint8), np.concatenate((labels, labels2), 0)


def random_flips(img: np.ndarray, labels: np.ndarray, flipud: float, fliplr: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down with probability flipud, then left-right with probability fliplr; labels [cls, cx, cy, w, h]."""
    if random.random() < flipud:  # drawn even without labels, so the random stream matches the reference
        img = np.flipud(img)
        if len(labels):
            labels = labels.copy()
            labels[:, 2] = 1 - labels[:, 2]
    if random.random() < fliplr:
        img = np.fliplr(img)
        if len(labels):
            labels = labels.copy()
            labels[:, 1] = 1 - labels[:, 1]
    return img, labels
