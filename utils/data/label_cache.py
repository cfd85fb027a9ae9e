"""Scanning images and labels once, and the label cache that saves doing it again (the reference's utils/datasets.py).

Faithful: the checks (image opens, both sides ≥ 10 px, known format, EXIF-rotated size), the statuses (found,
missing, empty, corrupt), the cache location and the summary line. Fixed reference defects: the cache is rebuilt
when any path, size or modification time changes or its version differs (the reference never rebuilt it), it is a
pickle-free `.npz` written atomically (the reference's `torch.save` cache fails to load on torch ≥ 2.6), and an
unwritable location only warns. Extension: truncated JPEGs are caught, bad label rows are repaired one by one.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.data.labels import IMG_FORMATS, read_label_file
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = '0.4-npz'  # 0.4: triangle files, zero-size box and byte-order-mark handling
STATUSES = ('found', 'missing', 'empty', 'corrupt')
MIN_IMAGE_SIDE = 10
SCAN_THREADS = min(8, os.cpu_count() or 1)
MAX_LOGGED_WARNINGS = 30
EXIF_ORIENTATION = 274


@dataclass
class ScanResult:
    """Labels of the usable images in order, their EXIF-rotated sizes (w, h), polygons and the scan tallies."""
    files: list[str]
    labels: list[np.ndarray]
    shapes: np.ndarray
    segments: list[list[np.ndarray]]
    counts: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


class DatasetError(UserError, ValueError):
    """A split that cannot be used (no images, no usable images, no labels for training): one line."""


def _jpeg_complete(path: str) -> bool:
    """Whether a JPEG's image data ends with an end-of-image marker; bytes after it (a phone's motion-photo video,
    padding) are allowed. Entropy-coded data stuffs every 0xFF byte, so the first FF D9 after the first
    start-of-scan marker is the end of the image (an EXIF thumbnail's own FF D9 comes before it)."""
    with open(path, 'rb') as f:
        f.seek(-2, 2)
        if f.read() == b'\xff\xd9':  # the usual case: nothing after the image
            return True
        f.seek(0)
        data = f.read()
    pos = 2  # after the start-of-image marker
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan
            return data.find(b'\xff\xd9', pos) != -1
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
    return False


def _image_size(path: str) -> tuple[int, int]:
    """(w, h) after EXIF rotation; raises ValueError naming the problem."""
    if not os.path.isfile(path):
        raise ValueError('image not found' if not os.path.exists(path) else 'not a file')
    if os.path.getsize(path) == 0:
        raise ValueError('zero-byte file')
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:  # a verified image cannot be read further: reopen (header only) for size/EXIF
        w, h = im.size
        fmt = (im.format or '').lower()
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    if fmt not in IMG_FORMATS:
        raise ValueError(f'unsupported image format {fmt or "unknown"}')
    if fmt in ('jpeg', 'mpo') and not _jpeg_complete(path):
        raise ValueError('truncated JPEG (no end-of-image marker)')
    if orientation in (6, 8):  # rotated by 90°: OpenCV applies it when reading
        w, h = h, w
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f'image size {w}x{h} is below {MIN_IMAGE_SIDE} px')
    return w, h


def scan_one(img_path: str, label_path: str, nc: int | None) -> tuple:
    """Check one image and read its labels → (labels, (w, h), segments, status, messages)."""
    try:
        size = _image_size(img_path)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError, RuntimeError,
            Image.DecompressionBombError) as e:  # a corrupt header can claim a huge size
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, UnidentifiedImageError):
            reason = 'not a readable image'
        return None, None, [], 'corrupt', [f'{img_path}: skipped, {reason}']
    result = read_label_file(label_path, nc)
    messages = [f'{label_path}: {m}' for m in result.messages]
    if result.status == 'corrupt':
        messages = [f'{label_path}: {m}; image {img_path} skipped' for m in result.messages]
    elif result.status == 'missing':  # an empty file is the YOLO way to mark a background image: counted only
        messages.append(f'{label_path}: no label file, image kept as a background image')
    return result.labels, size, result.segments, result.status, messages


def dataset_hash(img_files: list[str], label_files: list[str], nc: int | None) -> str:
    """Digest of every path with its size and modification time (missing files included), the version and nc."""
    h = hashlib.sha256(f'{CACHE_VERSION}|{nc}'.encode())
    for p in (*img_files, *label_files):
        try:
            st = os.stat(p)
            h.update(f'{p}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
        except OSError:
            h.update(f'{p}|-\n'.encode())
    return h.hexdigest()


def scan_dataset(img_files: list[str], label_files: list[str], nc: int | None, desc: str = '') -> ScanResult:
    """Scan all images and labels in parallel threads; corrupt images drop out."""
    from tqdm import tqdm
    counts = dict.fromkeys(STATUSES, 0)
    out = ScanResult([], [], np.zeros((0, 2), np.int64), [], counts)
    shapes = []
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        results = pool.map(scan_one, img_files, label_files, [nc] * len(img_files))
        bar = tqdm(zip(img_files, results), total=len(img_files), desc=desc, disable=len(img_files) < 1000)
        for img_path, (labels, size, segments, status, messages) in bar:
            counts[status] += 1
            out.messages += messages
            if status != 'corrupt':
                out.files.append(img_path)
                out.labels.append(labels)
                shapes.append(size)
                out.segments.append(segments)
    out.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
    return out


def save_cache(path: Path, scan: ScanResult, digest: str) -> None:
    """Write the scan as a pickle-free .npz, atomically (temp file + rename); warn if the folder is read-only."""
    seg_counts = [len(s) for s in scan.segments]
    polygons = [p for segs in scan.segments for p in segs]
    arrays = dict(
        version=np.array(CACHE_VERSION), hash=np.array(digest), files=np.array(scan.files, dtype=str),
        shapes=scan.shapes, label_counts=np.array([len(x) for x in scan.labels], np.int64),
        labels=np.concatenate(scan.labels or [np.zeros((0, 5), np.float32)], 0).astype(np.float32),
        segment_counts=np.array(seg_counts, np.int64), point_counts=np.array([len(p) for p in polygons], np.int64),
        points=np.concatenate(polygons or [np.zeros((0, 2), np.float32)], 0).astype(np.float32),
        counts=np.array([scan.counts[k] for k in STATUSES], np.int64), messages=np.array(scan.messages, dtype=str))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
    except OSError as e:
        LOGGER.warning(f'WARNING: cache not saved, {path.parent} is not writeable ({e.strerror}); '
                       f'the next run scans again')
        return
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: other users of a shared dataset could not read it
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        LOGGER.warning(f'WARNING: cache not saved to {path} ({e.strerror}); the next run scans again')


def _split(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def load_cache(path: Path, digest: str) -> ScanResult | None:
    """The cached scan when it exists, parses, and matches this version and digest; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z['version']) != CACHE_VERSION or str(z['hash']) != digest:
                return None
            labels = _split(z['labels'], z['label_counts'])
            polygons = _split(z['points'], z['point_counts'])
            per_image = np.cumsum(z['segment_counts'])
            segments = [polygons[a:b] for a, b in zip(np.r_[0, per_image[:-1]], per_image)]
            counts = dict(zip(STATUSES, z['counts'].tolist()))
            return ScanResult(z['files'].tolist(), labels, z['shapes'], segments, counts, z['messages'].tolist())
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # truncated/foreign file: rebuild
        return None


def cache_path_for(paths: list[str], label_files: list[str]) -> Path:
    """`<list>.cache` beside the (last) txt list, else `<labels folder of the first image>.cache`."""
    last = Path(paths[-1])
    return last.with_suffix('.cache') if last.is_file() else Path(label_files[0]).parent.with_suffix('.cache')


def log_scan(scan: ScanResult, source: str, prefix: str, from_cache: bool) -> None:
    """Warnings (capped) and the one summary line 'N found, M missing, E empty, C corrupt'."""
    for m in scan.messages[:MAX_LOGGED_WARNINGS]:
        LOGGER.warning(f'{prefix}WARNING: {m}')
    if len(scan.messages) > MAX_LOGGED_WARNINGS:
        LOGGER.warning(f'{prefix}WARNING: ... and {len(scan.messages) - MAX_LOGGED_WARNINGS} more warnings')
    c = scan.counts
    how = 'Scanned cache' if from_cache else 'Scanning'
    LOGGER.info(f"{prefix}{how} '{source}' images and labels... {c['found']} found, {c['missing']} missing, "
                f"{c['empty']} empty, {c['corrupt']} corrupt")
