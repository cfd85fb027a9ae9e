"""YOLO label files: the image→label path rule, parsing (boxes or polygons) and repair of dirty rows (the reference's
utils/datasets.py).

Faithful: the path rule, the polygon rule (a line with more than 8 fields makes the whole file polygons), and
the checks. Extensions: files of triangles only are polygons too (the reference rejects them), box rows in a
polygon file are warned about, a UTF-8 byte-order mark is ignored, and instead of discarding a whole image for
one bad row, rows are repaired or dropped one by one with a warning naming the file and the reason
(slightly-out coordinates clipped, wild ones and bad class ids dropped, duplicates removed); a file whose rows
cannot be parsed at all is still corrupt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMG_FORMATS = ('bmp', 'jpg', 'jpeg', 'png', 'tif', 'tiff', 'dng', 'webp', 'mpo')
VID_FORMATS = ('mov', 'avi', 'mp4', 'mpg', 'mpeg', 'm4v', 'wmv', 'mkv')
CLIP_TOLERANCE = 0.01  # coordinates within [-0.01, 1.01] are rounding noise and get clipped; beyond is wild


def img2label_paths(img_paths: list[str]) -> list[str]:
    """Label path per image: the first '/images/' becomes '/labels/' and the extension '.txt'."""
    sa, sb = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    return [sb.join(p.split(sa, 1)).rsplit('.', 1)[0] + '.txt' for p in img_paths]


def topleft_box_to_yolo(box: list[float], width: float, height: float) -> list[float]:
    """Pixel box [x, y, w, h] (top-left corner) → normalised [cx, cy, w, h], rounded to 6 decimals."""
    x, y, w, h = box
    return [round(v, 6) for v in ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)]


def segments2boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons (k, 2) normalised → (n, 4) boxes [cx, cy, w, h] (their bounding boxes)."""
    boxes = []
    for s in segments:
        x, y = s.T
        boxes.append([x.min(), y.min(), x.max(), y.max()])
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), 1)


@dataclass
class LabelFile:
    """Parsed labels of one image: (n, 5) `class cx cy w h`, polygons, and what was repaired."""
    labels: np.ndarray
    segments: list[np.ndarray] = field(default_factory=list)
    status: str = 'found'  # found | missing | empty | corrupt
    messages: list[str] = field(default_factory=list)


def _is_polygon_file(rows: list[list[str]], messages: list[str]) -> bool:
    """The reference's rule (any row over 8 fields), plus files of triangles only (7 fields each, which the
    reference rejects as corrupt); warns about box rows in a polygon file, read as the reference reads them."""
    if rows and all(len(r) >= 7 and len(r) % 2 for r in rows):
        return True
    if not any(len(r) > 8 for r in rows):
        return False
    boxes = [i + 1 for i, r in enumerate(rows) if len(r) == 5]
    if boxes:
        messages.append(f'lines {boxes[:5]} have 5 fields in a polygon file: read as the 2-point polygons '
                        f'(x, y), (w, h) as the reference does; write boxes there as 4-corner polygons')
    return True


def _parse_rows(text: str, messages: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    rows = [line.split() for line in text.strip().splitlines() if line.strip()]
    if _is_polygon_file(rows, messages):
        classes = np.array([r[0] for r in rows], dtype=np.float32)
        segments = [np.array(r[1:], dtype=np.float32).reshape(-1, 2) for r in rows]
        return np.concatenate((classes.reshape(-1, 1), segments2boxes(segments)), 1), segments
    if any(len(r) != 5 for r in rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != 5)
        raise ValueError(f'line {bad + 1} has {len(rows[bad])} columns, expected 5 (class cx cy w h)')
    return np.array(rows, dtype=np.float32).reshape(-1, 5), []


def _repair(labels: np.ndarray, segments: list[np.ndarray], nc: int | None,
            messages: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    cls, xywh = labels[:, 0], labels[:, 1:]
    bad_cls = ~np.isfinite(cls) | (cls < 0) | (cls != np.round(cls)) | ((cls >= nc) if nc else False)
    wild = ((xywh < -CLIP_TOLERANCE) | (xywh > 1 + CLIP_TOLERANCE) | ~np.isfinite(xywh)).any(1)
    if bad_cls.any():
        allowed = f'outside 0..{nc - 1}' if nc else 'that are not non-negative integers'
        messages.append(f'dropped {int(bad_cls.sum())} rows with class ids {allowed}: '
                        f'{sorted(set(cls[bad_cls].tolist()))}')
    if (wild & ~bad_cls).any():
        messages.append(f'dropped {int((wild & ~bad_cls).sum())} rows with coordinates far outside [0, 1]')
    keep = ~(bad_cls | wild)
    out_of_range = ((xywh < 0) | (xywh > 1)).any(1) & keep
    if out_of_range.any():
        messages.append(f'clipped {int(out_of_range.sum())} rows slightly outside [0, 1]')
    labels = labels[keep].copy()
    labels[:, 1:] = labels[:, 1:].clip(0, 1)
    flat = (labels[:, 3:5] == 0).any(1)
    if flat.any():  # kept as the reference keeps them; training's box filter drops them after augmentation
        messages.append(f'{int(flat.sum())} rows have zero width or height: no prediction can match them '
                        f'in evaluation')
    segments = [s.clip(0, 1) for s, k in zip(segments, keep) if k]
    _, first = np.unique(labels, axis=0, return_index=True)
    if len(first) < len(labels):
        messages.append(f'removed {len(labels) - len(first)} duplicate rows')
        first = np.sort(first)
        labels = labels[first]
        segments = [segments[i] for i in first] if segments else segments
    return labels, segments


def read_label_file(path: str | Path, nc: int | None = None) -> LabelFile:
    """Read and repair one label file; never raises for bad content (status 'corrupt' and a message)."""
    path = Path(path)
    if not path.is_file():
        return LabelFile(np.zeros((0, 5), np.float32), status='missing')
    messages: list[str] = []
    try:  # utf-8-sig: a byte-order mark (Windows Notepad) is not part of the first class id
        labels, segments = _parse_rows(path.read_text(encoding='utf-8-sig', errors='strict'), messages)
    except (ValueError, UnicodeDecodeError, OSError) as e:  # OSError: unreadable (permissions, I/O)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return LabelFile(np.zeros((0, 5), np.float32), status='corrupt', messages=[f'unreadable labels: {reason}'])
    labels, segments = _repair(labels, segments, nc, messages)
    return LabelFile(labels, segments, 'found' if len(labels) else 'empty', messages)


def append_label_rows(path: str | Path, detections: list[list[float]], width: int, height: int,
                      save_conf: bool = False) -> None:
    """Append detections [x1, y1, x2, y2, conf, cls] (pixels) as `class cx cy w h [conf]` rows normalised by
    the image size, in %g format (the reference's --save-txt)."""
    with open(path, 'a') as f:
        for x1, y1, x2, y2, conf, cls in detections:
            xywh = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(('%g ' * len(line)).rstrip() % line + '\n')
