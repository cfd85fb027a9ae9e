"""Drawing detections on images (the reference's detect.py): a box per detection and a filled label with `name conf`."""
from __future__ import annotations

import os
import sys

import cv2
import numpy as np

LABEL_TEXT_COLOUR = (225, 255, 255)


def class_colours(nc: int, seed: int | None = None) -> list[tuple[int, int, int]]:
    """A random colour per class (the reference's were unseeded; a seed makes drawings repeat)."""
    rng = np.random.default_rng(seed)
    return [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(nc)]


def draw_detection(img: np.ndarray, xyxy: list[float], label: str, colour: tuple[int, int, int],
                   thickness: int = 1) -> None:
    """Rectangle and a filled label box above its top-left corner, in place."""
    c1, c2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(img, c1, c2, colour, thickness=thickness, lineType=cv2.LINE_AA)
    if label:
        font_thickness = max(thickness - 1, 1)
        w, h = cv2.getTextSize(label, 0, fontScale=thickness / 3, thickness=font_thickness)[0]
        top = (c1[0] + w, c1[1] - h - 3)
        cv2.rectangle(img, c1, top, colour, -1, cv2.LINE_AA)
        cv2.putText(img, label, (c1[0], c1[1] - 2), 0, thickness / 3, LABEL_TEXT_COLOUR,
                    thickness=font_thickness, lineType=cv2.LINE_AA)


def draw_status(img: np.ndarray, text: str) -> None:
    """A status line (route, FPS) in white on a dark box at the top-left corner, in place."""
    scale = max(img.shape[0] / 720, 0.4)
    thickness = max(int(round(2 * scale)), 1)
    (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(img, (0, 0), (w + 8, h + baseline + 8), (0, 0, 0), -1)
    cv2.putText(img, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def display_available() -> bool:
    """Whether cv2.imshow works here (headless OpenCV builds and servers without a display cannot show windows)."""
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        return False  # Qt would abort the whole process rather than raise
    try:
        cv2.imshow('test', np.zeros((8, 8, 3), np.uint8))
        cv2.waitKey(1)
        cv2.destroyAllWindows()
        return True
    except cv2.error:
        return False
