"""Batched detection for detect.py: letterboxed batches, routed forward, NMS, and what a run writes (the reference's
detect.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from models.inference import prepare_input
from utils.data.labels import append_label_rows
from utils.data.letterbox import EVAL_RECT_PAD, evaluation_grid, letterbox, rect_batch_shapes, resize_to_fit
from utils.detection.sources import Frame
from utils.errors import UserError
from utils.general import non_max_suppression, scale_coords
from utils.torch_utils import time_sync

CUDA_WARMUP_PASSES = 3
IMAGE_WRITE_CAUSES = 'folder not writable, disk full, or an extension OpenCV cannot encode'
VIDEO_WRITE_CAUSES = 'folder not writable, disk full, or no mp4v encoder in this OpenCV build'


class OutputWriteError(UserError, OSError):
    """A drawn image, crop or video that could not be written: one line naming the file."""


def write_failed(path: Path, cause: str) -> OutputWriteError:
    """The one-line error for a result file OpenCV did not write."""
    return OutputWriteError(f'{path}: could not be written ({cause}); free space, make that folder writable, or '
                            f'choose another --project')


def write_image(path: Path, image: np.ndarray) -> None:
    """cv2.imwrite that raises OutputWriteError instead of returning False or raising cv2.error, so that no result
    is reported saved when it was not."""
    try:
        written, cause = cv2.imwrite(str(path), image), IMAGE_WRITE_CAUSES
    except cv2.error as e:  # e.g. 'could not find a writer for the specified extension'
        written, cause = False, str(e).strip().splitlines()[-1]
    if not written:
        raise write_failed(path, cause)


def savable_name(name: str) -> str:
    """The file name, with .jpg for formats OpenCV reads but cannot write (.mpo, .dng)."""
    return name if cv2.haveImageWriter(name) else f'{Path(name).stem}.jpg'


@dataclass
class DetectOptions:
    """NMS and forward settings of a detection run (the reference's flags)."""
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    classes: list[int] | None = None
    agnostic_nms: bool = False
    augment: bool = False


@dataclass
class BatchResult:
    """Per frame: detections [x1, y1, x2, y2, conf, cls] in frame pixels, the route and the router score ('' and
    None without a router); batch timings."""
    detections: list[np.ndarray]
    routes: list[str]
    inference_s: float
    nms_s: float
    scores: list[float | None] = field(default_factory=list)


def letterbox_batch(images: list[np.ndarray], img_size: int | tuple[int, int], stride: int, auto: bool = True
                    ) -> np.ndarray:
    """(B, 3, H, W) RGB uint8: each image letterboxed with auto padding, padded further to the batch's largest shape
    (auto False: every image to img_size, (h, w) or a square, as exported graphs of one size take them).

    Every image keeps the scale it has alone (the batch shape never exceeds img_size), so only borders differ.
    """
    boxed = [letterbox(im, img_size, stride=stride, auto=auto)[0] for im in images]
    shape = tuple(max(b.shape[i] for b in boxed) for i in (0, 1))
    boxed = [b if b.shape[:2] == shape else letterbox(im, shape, auto=False)[0] for b, im in zip(boxed, images)]
    return np.ascontiguousarray(np.stack(boxed).transpose(0, 3, 1, 2)[:, ::-1])


def evaluation_letterbox(img: np.ndarray, img_size: int, stride: int) -> tuple[np.ndarray, tuple]:
    """img as test.py feeds it at batch 1 (the loader's resize, then its own rect shape with EVAL_RECT_PAD): the
    letterboxed BGR image and its ratio_pad for scale_coords."""
    h0, w0 = img.shape[:2]
    resized = resize_to_fit(img, img_size)
    h, w = resized.shape[:2]
    shape = rect_batch_shapes(np.array([h0 / w0]), 1, img_size, evaluation_grid(stride), EVAL_RECT_PAD)[0]
    boxed, _, pad = letterbox(resized, (int(shape[0]), int(shape[1])), auto=False, scaleup=False)
    return boxed, ((h / h0, w / w0), pad)


@dataclass
class Group:
    """Frames of a batch that run through the model together: their indices, the uint8 B×3×H×W tensor and, for
    evaluation letterboxing, each frame's ratio_pad (None: scale_coords derives it from the shapes)."""
    indices: list[int]
    boxed: torch.Tensor
    ratio_pads: list[tuple] | None = None


@dataclass
class Detector:
    """A loaded model run over batches of frames; warms up on CUDA whenever the input shape changes.

    A dynamic model's batch runs as groups of frames of one letterboxed shape: its router reads pooled features, so
    padding a frame to another's shape (the reference's batches) would change its route with the batch. With
    `evaluation_boxes` (--easy-share / --gflops) frames are letterboxed as test.py and get_dynamic_thres.py letterbox
    them, so that the share of easy images asked from their percentiles is the share obtained on such images."""
    model: torch.nn.Module
    img_size: int | tuple[int, int]  # (h, w): exported graphs of one non-square size
    stride: int
    options: DetectOptions = field(default_factory=DetectOptions)
    last_shape: tuple | None = None
    evaluation_boxes: bool = False
    controller: object | None = None  # --target-ms: a utils.detection.latency.LatencyController moving dy_thres

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x, augment=self.options.augment)[0]

    def letterbox(self, frames: list[Frame]) -> list[Group]:
        """The batch as the model takes it (in pinned memory for a CUDA model, so that the copy to the device does not
        block); may run ahead in another thread."""
        images, auto = [f.image for f in frames], getattr(self.model, 'fixed_size', None) is None
        pin = next(self.model.parameters()).is_cuda
        if not getattr(self.model, 'dynamic', False):  # the reference's batch: one shape, the largest
            boxed = torch.from_numpy(letterbox_batch(images, self.img_size, self.stride, auto))
            return [Group(list(range(len(frames))), boxed.pin_memory() if pin else boxed)]
        if self.evaluation_boxes and auto:
            boxed, ratio_pads = zip(*(evaluation_letterbox(im, self.img_size, self.stride) for im in images))
        else:
            boxed, ratio_pads = [letterbox(im, self.img_size, stride=self.stride, auto=auto)[0] for im in images], None
        by_shape: dict[tuple, list[int]] = {}
        for i, b in enumerate(boxed):
            by_shape.setdefault(b.shape, []).append(i)
        groups = []
        for indices in by_shape.values():
            stacked = np.stack([boxed[i] for i in indices]).transpose(0, 3, 1, 2)[:, ::-1]
            tensor = torch.from_numpy(np.ascontiguousarray(stacked))
            groups.append(Group(indices, tensor.pin_memory() if pin else tensor,
                                [ratio_pads[i] for i in indices] if ratio_pads else None))
        return groups

    def _run_group(self, group: Group, frames: list[Frame]) -> tuple[list, list, list, float, float]:
        x = prepare_input(group.boxed, self.model) / 255.0
        if x.device.type == 'cuda' and x.shape != self.last_shape:
            for _ in range(CUDA_WARMUP_PASSES):
                self._forward(x)
            self.last_shape = x.shape
        self.model.last_easy = self.model.last_score = None
        t0 = time_sync(x.device)
        decoded = self._forward(x)
        t1 = time_sync(x.device)
        o = self.options
        output = non_max_suppression(decoded.float(), o.conf_thres, o.iou_thres, classes=o.classes,
                                     agnostic=o.agnostic_nms)
        t2 = time_sync(x.device)
        detections = []
        for k, (det, i) in enumerate(zip(output, group.indices)):
            ratio_pad = group.ratio_pads[k] if group.ratio_pads else None
            det[:, :4] = scale_coords(x.shape[2:], det[:, :4], frames[i].image.shape, ratio_pad).round()
            detections.append(det.cpu().numpy())
        easy, score = self.model.last_easy, self.model.last_score
        routes = [''] * len(group.indices) if easy is None else ['easy' if e else 'hard' for e in easy.tolist()]
        scores = [None] * len(group.indices) if score is None else score.float().tolist()
        return detections, routes, scores, t1 - t0, t2 - t1

    def __call__(self, frames: list[Frame], groups: list[Group] | None = None) -> BatchResult:
        """Detect on a batch of frames (letterboxed here unless `groups`, from letterbox(), is given); each image is
        routed by its own router score."""
        groups = self.letterbox(frames) if groups is None else groups
        detections, routes, scores = [np.zeros((0, 6))] * len(frames), [''] * len(frames), [None] * len(frames)
        inference_s = nms_s = 0.0
        for group in groups:
            dets, group_routes, group_scores, t_inf, t_nms = self._run_group(group, frames)
            for i, det, route, score in zip(group.indices, dets, group_routes, group_scores):
                detections[i], routes[i], scores[i] = det, route, score
            inference_s, nms_s = inference_s + t_inf, nms_s + t_nms
        if self.controller is not None:  # each frame's time as detect.py logs it: the batch's, per image
            per_frame = (inference_s + nms_s) / len(frames)
            for route, score in zip(routes, scores):
                self.model.dy_thres = self.controller.update(per_frame, route, score)
        return BatchResult(detections, routes, inference_s, nms_s, scores)


class FpsMeter:
    """Frames per second over recent batches (exponential average), for the video/webcam overlay."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing, self.fps, self.last = smoothing, 0.0, time.perf_counter()

    def update(self, frames: int) -> float:
        """Count frames processed since the last call; returns the smoothed rate."""
        now = time.perf_counter()
        rate = frames / max(now - self.last, 1e-9)
        self.fps = rate if self.fps == 0 else self.smoothing * self.fps + (1 - self.smoothing) * rate
        self.last = now
        return self.fps


def crop_box(image: np.ndarray, xyxy: list[float], gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """The box enlarged by gain and pad pixels (a square-ish margin), clipped to the image."""
    x1, y1, x2, y2 = xyxy
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * gain + pad, (y2 - y1) * gain + pad
    height, width = image.shape[:2]
    left, top = int(max(cx - w / 2, 0)), int(max(cy - h / 2, 0))
    right, bottom = int(min(cx + w / 2, width)), int(min(cy + h / 2, height))
    return image[top:bottom, left:right]


class DetectionOutputs:
    """Saved images, video writers, label files and crops of one run folder."""

    def __init__(self, save_dir: Path, save_img: bool, save_txt: bool, save_conf: bool, save_crop: bool) -> None:
        self.save_dir, self.save_img, self.save_txt = save_dir, save_img, save_txt
        self.save_conf, self.save_crop = save_conf, save_crop
        self.writers: dict[tuple[str, str], tuple[cv2.VideoWriter, Path]] = {}

    @staticmethod
    def source_name(frame: Frame) -> str:
        """webcam<N> for a webcam index, else the file or address stem."""
        return f'webcam{frame.path}' if frame.path.isnumeric() else (Path(frame.path).stem or 'stream')

    def stem(self, frame: Frame) -> str:
        """File stem for a frame's labels and crops (videos and streams add the frame number)."""
        name = self.source_name(frame)
        return name if frame.kind == 'image' else f'{name}_{frame.index}'

    def labels(self, frame: Frame, det: np.ndarray) -> None:
        """Append `class cx cy w h [conf]` rows normalised by the frame size."""
        h, w = frame.image.shape[:2]
        append_label_rows(self.save_dir / 'labels' / f'{self.stem(frame)}.txt', det.tolist(), w, h, self.save_conf)

    def crops(self, frame: Frame, det: np.ndarray, names: list[str]) -> None:
        """Each detection's crop of the undrawn frame under crops/<class name>/<stem>_<k>.jpg."""
        for k, (*xyxy, _, cls) in enumerate(det.tolist()):
            folder = self.save_dir / 'crops' / names[int(cls)]
            folder.mkdir(parents=True, exist_ok=True)
            write_image(folder / f'{self.stem(frame)}_{k}.jpg', crop_box(frame.image, xyxy))

    def _video_path(self, frame: Frame) -> Path:
        name = self.source_name(frame)
        taken = {p.name for _, p in self.writers.values()}
        path, k = self.save_dir / f'{name}.mp4', 1
        while path.name in taken:  # two streams with the same name keep separate files
            k += 1
            path = self.save_dir / f'{name}_{k}.mp4'
        return path

    def _open_writer(self, frame: Frame, shape: tuple) -> tuple[cv2.VideoWriter, Path]:
        path = self._video_path(frame)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), frame.fps, (shape[1], shape[0]))
        if not writer.isOpened():  # VideoWriter never raises: every later write() would be lost silently
            raise write_failed(path, VIDEO_WRITE_CAUSES)
        return writer, path

    def image(self, frame: Frame, drawn: np.ndarray) -> str:
        """Write the drawn frame (image file, or the source's mp4); returns the path written."""
        if frame.kind == 'image':
            path = self.save_dir / savable_name(Path(frame.path).name)
            write_image(path, drawn)
            return str(path)
        key = (frame.path, frame.position)  # a stream listed twice still gets two files
        if key not in self.writers:
            self.writers[key] = self._open_writer(frame, drawn.shape)
        writer, path = self.writers[key]
        writer.write(drawn)
        return str(path)

    def close(self) -> None:
        """Finish every video file."""
        for writer, _ in self.writers.values():
            writer.release()
