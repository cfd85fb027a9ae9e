"""Box and polygon coordinate conversions shared by the data pipeline and evaluation (reference names kept)."""
from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _empty_like(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Array) -> Array:
    """Boxes [x1, y1, x2, y2] → [cx, cy, w, h] (same units)."""
    y = _empty_like(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2
    y[:, 2] = x[:, 2] - x[:, 0]
    y[:, 3] = x[:, 3] - x[:, 1]
    return y


def xywh2xyxy(x: Array) -> Array:
    """Boxes [cx, cy, w, h] → [x1, y1, x2, y2] (same units)."""
    y = _empty_like(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def xywhn2xyxy(x: Array, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Array:
    """Normalised [cx, cy, w, h] → pixel [x1, y1, x2, y2] in an image of size (w, h) placed at (padw, padh)."""
    y = _empty_like(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x: np.ndarray, w: float, h: float) -> np.ndarray:
    """Pixel [x1, y1, x2, y2] → normalised [cx, cy, w, h] for an image of size (w, h)."""
    y = xyxy2xywh(x)
    y[:, [0, 2]] /= w
    y[:, [1, 3]] /= h
    return y


def xyn2xy(x: np.ndarray, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> np.ndarray:
    """Normalised polygon points (k, 2) → pixels in an image of size (w, h) placed at (padw, padh)."""
    y = np.copy(x)
    y[:, 0] = w * x[:, 0] + padw
    y[:, 1] = h * x[:, 1] + padh
    return y


def segment2box(segment: np.ndarray, width: float = 640, height: float = 640) -> np.ndarray:
    """Pixel polygon (k, 2) → its bounding box [x1, y1, x2, y2] over the points inside the image (zeros if none)."""
    x, y = segment.T
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    x, y = x[inside], y[inside]
    return np.array([x.min(), y.min(), x.max(), y.max()]) if len(x) else np.zeros(4)


def resample_segments(segments: list[np.ndarray], n: int = 1000) -> list[np.ndarray]:
    """Each polygon (k, 2) → n points linearly interpolated from its first to its last vertex (not closed, as
    the reference)."""
    out = []
    for s in segments:
        t = np.linspace(0, len(s) - 1, n)
        knots = np.arange(len(s))
        out.append(np.stack([np.interp(t, knots, s[:, i]) for i in range(2)], 1))
    return out


def clip_coords(boxes: Array, shape: tuple[int, int]) -> None:
    """Clip xyxy boxes in place to an image of shape (h, w)."""
    h, w = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[:, 0].clamp_(0, w)
        boxes[:, 1].clamp_(0, h)
        boxes[:, 2].clamp_(0, w)
        boxes[:, 3].clamp_(0, h)
    else:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)


def scale_coords(img1_shape: tuple[int, int], coords: Array, img0_shape: tuple[int, int],
                 ratio_pad: tuple | None = None) -> Array:
    """Map xyxy boxes from the letterboxed shape img1 (h, w) back to the original img0 (h, w), in place."""
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain, pad = ratio_pad[0][0], ratio_pad[1]
    coords[:, [0, 2]] -= pad[0]
    coords[:, [1, 3]] -= pad[1]
    coords[:, :4] /= gain
    clip_coords(coords, img0_shape)
    return coords
