"""Box and polygon coordinate conversions, box IoU and NMS, shared by the data pipeline and evaluation
(reference names and signatures kept, so scripts written for the original port as they are)."""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

LOGGER = logging.getLogger(__name__)

Array = np.ndarray | torch.Tensor


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


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


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) × (M, 4) → (N, M)."""
    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    lt = torch.max(box1[:, None, :2], box2[:, :2])
    rb = torch.min(box1[:, None, 2:], box2[:, 2:])
    inter = (rb - lt).clamp(0).prod(2)
    return inter / (area1[:, None] + area2 - inter)


MAX_NMS_CANDIDATES = 30000  # boxes fed to torchvision's nms per image
MAX_DETECTIONS = 300  # boxes kept per image
CLASS_OFFSET = 4096  # per-class box offset: one nms call keeps classes apart
SLOW_NMS_S = 10.0  # the reference stopped here and dropped the rest of the batch; we only warn


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool, labels: torch.Tensor | None) -> torch.Tensor:
    """One image's rows [cx, cy, w, h, obj, cls…] → candidate detections [x1, y1, x2, y2, conf, cls]."""
    nc = x.shape[1] - 5
    x = x[x[:, 4] > conf_thres]
    if labels is not None and len(labels):  # --save-hybrid: ground truth joins as certain candidates
        extra = torch.zeros((len(labels), nc + 5), device=x.device, dtype=x.dtype)
        extra[:, :4] = labels[:, 1:5]  # [cls, cx, cy, w, h] pixels, boxes as the predictions' (reference's NMS)
        extra[:, 4] = 1.0
        extra[range(len(labels)), labels[:, 0].long() + 5] = 1.0
        x = torch.cat((x, extra), 0)
    if not len(x):
        return x.new_zeros((0, 6))
    if nc == 1:
        x[:, 5:] = x[:, 4:5]  # single class: its score is the objectness itself
    else:
        x[:, 5:] *= x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], x[i, j + 5, None], j[:, None].float()), 1)
    conf, j = x[:, 5:].max(1, keepdim=True)
    return torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: list[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        labels: tuple | list = ()) -> list[torch.Tensor]:
    """Per image (n, 6) detections [x1, y1, x2, y2, conf, cls] from decoded rows [cx, cy, w, h, obj, cls…].

    The semantics of the reference's test.py; unlike it, no image of a batch is ever dropped for time: a slow batch
    only warns.
    """
    multi_label &= prediction.shape[2] - 5 > 1
    t0 = time.perf_counter()
    output = []
    for xi, x in enumerate(prediction):
        det = _candidates(x.clone(), conf_thres, multi_label, labels[xi] if len(labels) else None)
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if len(det) > MAX_NMS_CANDIDATES:
            det = det[det[:, 4].argsort(descending=True)[:MAX_NMS_CANDIDATES]]
        if len(det):
            offsets = det[:, 5:6] * (0 if agnostic else CLASS_OFFSET)
            keep = torchvision.ops.nms(det[:, :4] + offsets, det[:, 4], iou_thres)[:MAX_DETECTIONS]
            det = det[keep]
        output.append(det)
    elapsed = time.perf_counter() - t0
    if elapsed > SLOW_NMS_S:
        LOGGER.warning(f'WARNING: NMS took {elapsed:.1f} s for {len(prediction)} images '
                                            f'(conf_thres {conf_thres} keeps many candidates); nothing was dropped')
    return output
