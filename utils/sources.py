"""Inputs of detect.py: image files, folders, globs, videos and webcams/streams, frame by frame (SPEC §12)."""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from utils.labels import IMG_FORMATS, VID_FORMATS

LOGGER = logging.getLogger(__name__)
STREAM_PREFIXES = ('rtsp://', 'rtmp://', 'http://', 'https://')


class SourceError(ValueError):
    """A --source that does not exist or cannot be opened: one line."""


@dataclass
class Frame:
    """One image to detect on: where it came from and its BGR pixels."""
    path: str
    image: np.ndarray
    kind: str  # image | video | stream
    index: int = 0  # frame number within a video or stream
    frames: int = 0  # frames in the video (0 when unknown)
    position: str = ''  # 'video k/n' prefix for the log


def is_stream(source: str) -> bool:
    """A webcam index or a network address."""
    return source.isnumeric() or source.lower().startswith(STREAM_PREFIXES)


def list_sources(source: str) -> list[str]:
    """Files of a path, folder (sorted) or glob: images first, then videos; SourceError when nothing usable."""
    p = str(Path(source).expanduser())
    if any(c in p for c in '*?['):
        files = sorted(glob.glob(p, recursive=True))
    elif os.path.isdir(p):
        files = sorted(glob.glob(os.path.join(p, '*.*')))
    elif os.path.isfile(p):
        files = [p]
    else:
        raise SourceError(f'--source {source}: no such file or folder')
    ext = [f.rsplit('.', 1)[-1].lower() for f in files]
    images = [f for f, e in zip(files, ext) if e in IMG_FORMATS]
    videos = [f for f, e in zip(files, ext) if e in VID_FORMATS]
    if not images and not videos:
        raise SourceError(f'--source {source}: no images or videos found (images: {", ".join(IMG_FORMATS)}; '
                          f'videos: {", ".join(VID_FORMATS)})')
    return images + videos


def _video_frames(path: str, position: str, kind: str) -> Iterator[Frame]:
    capture = cv2.VideoCapture(int(path) if path.isnumeric() else path)
    if not capture.isOpened():
        raise SourceError(f'{path}: cannot open this video or stream (unsupported codec, missing device or bad address)')
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == 'video' else 0
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            index += 1
            yield Frame(path, image, kind, index, frames, position)
    finally:
        capture.release()


def iterate_frames(source: str) -> Iterator[Frame]:
    """Every frame of the source; corrupt images are skipped with a warning."""
    if is_stream(source):
        yield from _video_frames(source, '', 'stream')
        return
    files = list_sources(source)
    videos = [f for f in files if f.rsplit('.', 1)[-1].lower() in VID_FORMATS]
    for path in files:
        if path in videos:
            yield from _video_frames(path, f'video {videos.index(path) + 1}/{len(videos)}', 'video')
            continue
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) if os.path.getsize(path) else None
        if image is None:
            LOGGER.warning(f'WARNING: {path}: cannot be decoded as an image, skipped')
            continue
        yield Frame(path, image, 'image')
