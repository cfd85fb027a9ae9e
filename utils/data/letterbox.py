"""Fitting images to network input shapes: letterbox resizing and rectangular batch shapes (the reference's
utils/datasets.py)."""
from __future__ import annotations

import math

import cv2
import numpy as np


def letterbox(img: np.ndarray, new_shape: int | tuple[int, int] = (640, 640), color: tuple[int, int, int] = (114, 114, 114),
              auto: bool = True, scaleFill: bool = False, scaleup: bool = True,  # noqa: N803 (reference name)
              stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping aspect ratio and pad to new_shape (h, w) (with `auto`: only to a stride multiple).

    Returns (image, (ratio_w, ratio_h), (pad_w, pad_h)) with pads as half-padding floats; the odd pixel of
    padding goes right/bottom.
    """
    h0, w0 = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    ratio = (r, r)
    unpad_w, unpad_h = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))  # a 4000x30 image: 640x5, not 0
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    elif scaleFill:
        dw, dh = 0, 0
        unpad_w, unpad_h = new_w, new_h
        ratio = (new_w / w0, new_h / h0)
    dw, dh = dw / 2, dh / 2
    if (w0, h0) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, ratio, (dw, dh)


def resize_to_fit(img: np.ndarray, shape: int | tuple[int, int], augment: bool = False) -> np.ndarray:
    """img resized, aspect kept, to fit shape: an int is the long side, (h, w) a box to fit inside (the loader's rule)."""
    h0, w0 = img.shape[:2]
    new_h, new_w = (shape, shape) if isinstance(shape, int) else shape
    r = min(new_h / h0, new_w / w0)  # an int shape: exactly shape / max(h0, w0)
    if r != 1:
        # shrinking an image to evaluate: INTER_AREA averages the pixels it drops where INTER_LINEAR aliases
        interp = cv2.INTER_AREA if r < 1 and not augment else cv2.INTER_LINEAR
        img = cv2.resize(img, (max(1, int(w0 * r)), max(1, int(h0 * r))), interpolation=interp)  # thin: ≥ 1 px
    return img


EVAL_RECT_PAD = 0.5  # test.py's rect shapes: a further half stride of border (the reference's val loader pad)


def evaluation_grid(stride: int) -> int:
    """The grid test.py's rect shapes round to: the model's largest stride, at least 32 (the reference's gs)."""
    return max(int(stride), 32)


def evaluation_square(img_size: int, stride: int) -> tuple[int, int]:
    """The (h, w) test.py letterboxes a square image to at img_size: its rect shape at batch 1."""
    side = int(rect_batch_shapes(np.array([1.0]), 1, img_size, evaluation_grid(stride), EVAL_RECT_PAD)[0][0])
    return side, side


def rect_batch_shapes(aspect_hw: np.ndarray, batch_size: int, img_size: int, stride: int,
                      pad: float = 0.0) -> np.ndarray:
    """Per-batch (h, w) input shapes for images already sorted by aspect ratio h/w.

    A batch whose images are all wider than tall gets [max ratio, 1]·img_size, all taller than wide
    [1, 1/min ratio]·img_size, else square; each side becomes ceil(side / stride + pad) · stride.
    """
    aspect_hw = np.asarray(aspect_hw, dtype=np.float64)
    n_batches = math.ceil(len(aspect_hw) / batch_size)
    shapes = np.ones((n_batches, 2))
    for i in range(n_batches):
        ratios = aspect_hw[i * batch_size:(i + 1) * batch_size]
        if ratios.max() < 1:
            shapes[i] = [ratios.max(), 1]
        elif ratios.min() > 1:
            shapes[i] = [1, 1 / ratios.min()]
    return np.ceil(shapes * img_size / stride + pad).astype(int) * stride
