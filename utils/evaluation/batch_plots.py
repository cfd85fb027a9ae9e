"""Mosaics of a batch with its boxes: test_batch{i}_labels/_pred.jpg and train_batch{i}.jpg (the reference's
test.py)."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.detection.drawing import class_colours, draw_detection

MAX_TILE = 640  # longest side of one image in the mosaic
PRED_CONF_DRAWN = 0.25  # predictions below this confidence are not drawn (too many at --conf 0.001)


def targets_to_boxes(targets: torch.Tensor | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Rows [image, class, cx, cy, w, h] (pixels) → per image (n, 6) [x1, y1, x2, y2, 1, class]."""
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.float64).reshape(-1, 6)
    boxes = []
    for i in range(batch_size):
        rows = t[t[:, 0] == i]
        xyxy = np.concatenate([rows[:, 2:4] - rows[:, 4:6] / 2, rows[:, 2:4] + rows[:, 4:6] / 2], 1)
        boxes.append(np.concatenate([xyxy, np.ones((len(rows), 1)), rows[:, 1:2]], 1))
    return boxes


def _tile(image: np.ndarray, boxes: np.ndarray, path: str, names: list[str], colours: list, labels: bool,
          scale: float) -> np.ndarray:
    tile = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else image.copy()
    for x1, y1, x2, y2, conf, cls in boxes.tolist():
        if labels or conf >= PRED_CONF_DRAWN:
            c = int(cls)
            name = names[c] if c < len(names) else str(c)
            draw_detection(tile, [v * scale for v in (x1, y1, x2, y2)], name if labels else f'{name} {conf:.1f}',
                           colours[c % len(colours)])
    cv2.putText(tile, Path(path).name[:40], (5, 15), 0, 0.5, (220, 220, 220), 1, cv2.LINE_AA)
    cv2.rectangle(tile, (0, 0), (tile.shape[1] - 1, tile.shape[0] - 1), (255, 255, 255), 2)
    return tile


def plot_batch(images: torch.Tensor | np.ndarray, boxes: list[np.ndarray], paths: list[str], names: list[str],
               save_path: str | Path, labels: bool = True, max_images: int = 16) -> Path:
    """Up to max_images of a (B, 3, H, W) RGB batch (uint8 or 0–1 floats) in a square grid with their boxes.

    boxes: per image (n, 6) [x1, y1, x2, y2, conf, class] in batch pixels; labels=False draws confidences and
    only boxes with conf >= 0.25. Returns the written path.
    """
    imgs = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, float)
    if imgs.max(initial=0) <= 1:
        imgs = imgs * 255
    imgs = imgs[:max_images].clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1]  # BGR for cv2
    n, h, w = imgs.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = min(1.0, MAX_TILE / max(h, w))
    th, tw = round(h * scale), round(w * scale)
    mosaic = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    colours = class_colours(max(len(names), 1), seed=0)
    for i in range(n):
        tile = _tile(np.ascontiguousarray(imgs[i]), boxes[i], paths[i], names, colours, labels, scale)[:th, :tw]
        r, c = divmod(i, cols)
        mosaic[r * th:r * th + tile.shape[0], c * tw:c * tw + tile.shape[1]] = tile
    cv2.imwrite(str(save_path), mosaic)
    return Path(save_path)
