"""The detector from Python (extension: the reference stops at its scripts): images in, boxes in each image's own
pixels out, with the route each image took and its router score. detect.py loads its model through the same
function and runs the same Detector, so a Predictor gives what detect.py saves.

    from utils.detection.predictor import Predictor
    predictor = Predictor('runs/train/exp/weights/last.pt', cfg='cfg/dy-yolov7-step2.yaml', num_classes=80,
                          easy_share=0.5)          # or dy_thres=, gflops=; an export manifest as the weight
    for p in predictor('path/to/images'):         # a path, folder, glob, BGR np.ndarray, or a list of them
        print(p.source, p.route, p.score, p.boxes, p.confidences, p.names)
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from utils.cli import DEFAULT_DY_THRES, check_img_size
from utils.data.data_config import DataConfigError, load_data_config
from utils.detection.detector import DetectOptions, Detector
from utils.detection.sources import Frame, SourceError, iterate_batches
from utils.evaluation.router_budget import apply_routing_flags
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parents[2]
Source = str | Path | np.ndarray


@dataclass
class Prediction:
    """One image's result: boxes xyxy in its own pixels with their confidences, class ids and names; the path it
    took ('easy' / 'hard', '' without a router) and its router score (None without one); seconds per stage (its
    batch's preprocess, inference and NMS time divided by the batch's size)."""
    source: str
    boxes: np.ndarray
    confidences: np.ndarray
    class_ids: np.ndarray
    names: list[str]
    route: str
    score: float | None
    times: dict[str, float] = field(default_factory=dict)


def class_names(num_classes: int, data: str = '') -> list[str]:
    """Names from a data YAML (its nc must be num_classes), else COCO's for 80 classes, else numbers."""
    if data:
        config = load_data_config(data, required=())
        if config['nc'] != num_classes:  # its names would label the boxes with another dataset's classes
            raise DataConfigError(f'--data {data}: has {config["nc"]} classes but --num-classes is {num_classes}; '
                                  'pass the data YAML the checkpoint was trained on, or drop --data')
        names = [str(n) for n in config['names']]
    elif num_classes == 80:
        names = [str(n) for n in yaml.safe_load((ROOT / 'data' / 'coco.yaml').read_text())['names']]
    else:
        names = [str(i) for i in range(num_classes)]
    return names + [str(i) for i in range(len(names), num_classes)]


def load_detector(opt: argparse.Namespace) -> Detector:
    """The strict-loaded, fused model (or export manifest) with the routing flags applied, fp16 on CUDA, wrapped
    with the NMS settings: what detect.py and Predictor run."""
    from models.exported_model import load_inference_model  # models import utils: imported when first needed
    device = select_device(opt.device)
    model = load_inference_model(opt, opt.num_classes, device)
    apply_routing_flags(model, opt)
    if device.type == 'cuda':
        model.half()
    stride = int(model.stride.max())
    options = DetectOptions(opt.conf_thres, opt.iou_thres, opt.classes, opt.agnostic_nms, opt.augment)
    fixed = getattr(model, 'fixed_size', None) is not None  # exported graphs take one (h, w)
    size = model.input_size(opt.img_size) if fixed else check_img_size(opt.img_size, stride)
    # a share of easy images from test.py's percentiles holds for images letterboxed as test.py letterboxes them
    budget = getattr(model, 'dynamic', False) and any(getattr(opt, k, None) is not None
                                                      for k in ('easy_share', 'gflops', 'target_ms'))
    return Detector(model, size, stride, options, evaluation_boxes=budget, controller=getattr(opt, 'controller', None))


class Predictor:
    """A step-2 checkpoint (with its cfg) or an export manifest, ready to detect on images (see the module doc).
    Routing: dy_thres, or easy_share / gflops from the percentiles get_dynamic_thres.py saved beside the weight, or
    target_ms: the paths timed here, then the threshold moved frame by frame to hold that time per image (inference
    + NMS; `controller` has the record: summary(), save(folder))."""

    def __init__(self, weight: str | Path, cfg: str | Path = '', num_classes: int = 80, data: str = '',
                 img_size: int = 640, dy_thres: float = DEFAULT_DY_THRES, easy_share: float | None = None,
                 gflops: float | None = None, target_ms: float | None = None, router_json: str = '',
                 conf_thres: float = 0.25,
                 iou_thres: float = 0.45, classes: list[int] | None = None, agnostic_nms: bool = False,
                 device: str = 'cpu', engine: str | None = None, threads: int = 0, ov_mode: str = 'latency',
                 bf16: str | None = None, batch_size: int = 1) -> None:
        opt = argparse.Namespace(weight=str(weight), cfg=str(cfg), num_classes=num_classes, data=data,
                                 img_size=img_size, dy_thres=dy_thres, easy_share=easy_share, gflops=gflops,
                                 target_ms=target_ms,
                                 router_json=router_json, conf_thres=conf_thres, iou_thres=iou_thres,
                                 classes=classes, agnostic_nms=agnostic_nms, augment=False, device=device,
                                 engine=engine, threads=threads, ov_mode=ov_mode, bf16=bf16, compile=None)
        self.names = class_names(num_classes, data)
        self.detector = load_detector(opt)
        self.controller = getattr(opt, 'controller', None)
        self.batch_size = max(1, int(batch_size))

    @property
    def dy_thres(self) -> float:
        """The routing threshold in use (score >= it: easy path)."""
        return float(self.detector.model.dy_thres)

    def _batches(self, sources: Sequence[Source]) -> Iterator[list[Frame]]:
        batch: list[Frame] = []
        for k, source in enumerate(sources):
            if isinstance(source, np.ndarray):
                if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
                    raise SourceError(f'array {k}: expected an H x W x 3 uint8 BGR image (OpenCV\'s), got '
                                      f'{source.dtype} {source.shape}')
                frames = [[Frame(f'<array {k}>', source, 'image')]]
            else:
                frames = iterate_batches(str(source), self.batch_size)
            for group in frames:
                for frame in group:
                    batch.append(frame)
                    if len(batch) == self.batch_size:
                        yield batch
                        batch = []
        if batch:
            yield batch

    def __call__(self, source: Source | Sequence[Source]) -> list[Prediction]:
        """Predictions for every image (and video frame) of source, in order."""
        sources = source if isinstance(source, (list, tuple)) else [source]
        results = []
        for frames in self._batches(sources):
            t0 = time.perf_counter()
            groups = self.detector.letterbox(frames)
            preprocess = (time.perf_counter() - t0) / len(frames)
            out = self.detector(frames, groups)
            times = {'preprocess': preprocess, 'inference': out.inference_s / len(frames),
                     'nms': out.nms_s / len(frames)}
            for frame, det, route, score in zip(frames, out.detections, out.routes, out.scores):
                classes = det[:, 5].astype(int)
                results.append(Prediction(frame.path, det[:, :4].copy(), det[:, 4].copy(), classes,
                                          [self.names[c] for c in classes], route, score, dict(times)))
        return results
