"""Inputs of detect.py: image files, folders, globs, videos, and webcams/streams/.txt stream lists (the reference's
detect.py)."""
from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import TypeVar

import cv2
import numpy as np

from utils.data.labels import IMG_FORMATS, VID_FORMATS
from utils.errors import UserError

T = TypeVar('T')
U = TypeVar('U')

LOGGER = logging.getLogger(__name__)
STREAM_PREFIXES = ('rtsp://', 'rtmp://', 'http://', 'https://')


class SourceError(UserError, ValueError):
    """A --source that does not exist or cannot be opened: one line."""


@dataclass
class Frame:
    """One image to detect on: where it came from and its BGR pixels."""
    path: str
    image: np.ndarray
    kind: str  # image | video | stream
    index: int = 0  # frame number within a video or stream
    frames: int = 0  # frames in the video (0 when unknown)
    position: str = ''  # 'video k/n' for videos, the stream's number for streams
    fps: float = 30.0  # frame rate a saved video keeps


def is_stream(source: str) -> bool:
    """A webcam index, a network address or a .txt list of them."""
    return source.isnumeric() or source.lower().startswith(STREAM_PREFIXES) or source.lower().endswith('.txt')


def read_stream_list(source: str) -> list[str]:
    """The addresses of a live source: the source itself, or the non-empty lines of a .txt list."""
    if not source.lower().endswith('.txt'):
        return [source]
    if not os.path.isfile(source):
        raise SourceError(f'--source {source}: no such stream list')
    addresses = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
    if not addresses:
        raise SourceError(f'--source {source}: the stream list is empty (one address or webcam index per line)')
    return addresses


def list_sources(source: str) -> list[str]:
    """Files of a path, folder (sorted) or glob: images first, then videos; SourceError when nothing usable."""
    p = str(Path(source).expanduser())
    if os.path.isdir(p):  # an existing folder or file first: its name may hold glob characters ('run [v1]')
        files = sorted(glob.glob(os.path.join(glob.escape(p), '*.*')))
    elif os.path.isfile(p):
        files = [p]
    elif any(c in p for c in '*?['):
        files = sorted(glob.glob(p, recursive=True))
    else:
        raise SourceError(f'--source {source}: no such file or folder')
    ext = [f.rsplit('.', 1)[-1].lower() for f in files]
    images = [f for f, e in zip(files, ext) if e in IMG_FORMATS]
    videos = [f for f, e in zip(files, ext) if e in VID_FORMATS]
    if not images and not videos:
        raise SourceError(f'--source {source}: no images or videos found (images: {", ".join(IMG_FORMATS)}; '
                          f'videos: {", ".join(VID_FORMATS)})')
    return images + videos


def _open_capture(path: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(int(path) if path.isnumeric() else path)
    if not capture.isOpened():
        raise SourceError(f'{path}: cannot open this video or stream (unsupported codec, missing device or bad address)')
    return capture


def _video_frames(path: str, position: str) -> Iterator[Frame]:
    capture = _open_capture(path)
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            index += 1
            yield Frame(path, image, 'video', index, frames, position, fps)
    finally:
        capture.release()


class LiveStreams:
    """Threaded capture of several live sources; each step yields the newest unseen frame of every live stream."""

    def __init__(self, addresses: list[str], wait_s: float = 30.0) -> None:
        self.addresses, self.wait_s = addresses, wait_s
        self.captures = [_open_capture(a) for a in addresses]
        self.latest: list[np.ndarray | None] = [None] * len(addresses)
        self.counts = [0] * len(addresses)
        self.ended = [False] * len(addresses)
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(len(addresses))]
        for thread in self.threads:
            thread.start()

    def _read(self, i: int) -> None:
        capture = self.captures[i]
        while True:
            ok, image = capture.read()
            with self.changed:
                if not ok:
                    self.ended[i] = True
                else:
                    self.latest[i], self.counts[i] = image, self.counts[i] + 1
                self.changed.notify_all()
            if not ok:
                capture.release()
                return

    def __iter__(self) -> Iterator[list[Frame]]:
        seen = [0] * len(self.addresses)
        while True:
            with self.changed:
                # a batch holds every stream that has a new frame once all live streams have one (or the wait ends)
                self.changed.wait_for(lambda: all(self.ended[i] or self.counts[i] > seen[i]
                                                  for i in range(len(seen))), timeout=self.wait_s)
                fresh = [i for i in range(len(seen)) if self.counts[i] > seen[i]]
                batch = [Frame(self.addresses[i], self.latest[i], 'stream', self.counts[i], 0, f'{i}') for i in fresh]
                for i in fresh:
                    seen[i] = self.counts[i]
                if not batch and all(self.ended):
                    return
            if batch:
                yield batch
            else:
                time.sleep(0.001)


def iterate_batches(source: str, batch_size: int = 1) -> Iterator[list[Frame]]:
    """Frames in batches: up to batch_size consecutive file frames, or one frame per live stream."""
    if is_stream(source):
        yield from LiveStreams(read_stream_list(source))
        return
    batch: list[Frame] = []
    for frame in iterate_frames(source):
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def iterate_frames(source: str) -> Iterator[Frame]:
    """Every frame of a file source (file, folder, glob); corrupt images and videos among several files are
    skipped with a warning (a single unreadable video is a SourceError)."""
    files = list_sources(source)
    videos = [f for f in files if f.rsplit('.', 1)[-1].lower() in VID_FORMATS]
    for path in files:
        if path in videos:
            try:
                yield from _video_frames(path, f'video {videos.index(path) + 1}/{len(videos)}')
            except SourceError as e:
                if len(files) == 1:
                    raise
                LOGGER.warning(f'WARNING: {e}; skipped')
            continue
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) if os.path.getsize(path) else None
        if image is None:
            LOGGER.warning(f'WARNING: {path}: cannot be decoded as an image, skipped')
            continue
        yield Frame(path, image, 'image')


def prefetch(items: Iterator[T], prepare: Callable[[T], U], depth: int = 2) -> Iterator[tuple[T, U]]:
    """(item, prepare(item)) pairs, read and prepared up to `depth` items ahead in a thread, so that reading and
    letterboxing overlap the model; errors raised there are raised here, in order."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(('item', (item, prepare(item))))
            queue.put(('end', None))
        except Exception as e:  # noqa: BLE001  (handed to the consumer, which raises it)
            queue.put(('error', e))

    thread = threading.Thread(target=work, daemon=True, name='prefetch')
    thread.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == 'end':
                return
            if kind == 'error':
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # a worker blocked on a full queue needs room to see the stop
            try:
                queue.get_nowait()
            except Empty:
                thread.join(0.05)
