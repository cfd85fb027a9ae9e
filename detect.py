r"""Detect objects in images, folders, globs, videos or a webcam with a DynamicDet checkpoint.

    python detect.py --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --num-classes 80 \
        --source inference/images --device 0 --dy-thres 0.5

Flags are the reference's (SPEC §12). Each image is routed by its own router score (>= --dy-thres: easy path);
the log line says which path it took. Class names come from --data when given, else COCO's for 80 classes.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from models.inference import load_for_inference
from utils.cli import check_img_size, increment_path, run_cli
from utils.data_config import load_data_config
from utils.drawing import class_colours, draw_detection
from utils.general import non_max_suppression, scale_coords
from utils.labels import append_label_rows
from utils.letterbox import letterbox
from utils.sources import Frame, is_stream, iterate_frames, list_sources
from utils.torch_utils import select_device, time_sync

LOGGER = logging.getLogger('detect')
ROOT = Path(__file__).resolve().parent


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's flags plus an optional --data for class names."""
    p = argparse.ArgumentParser(prog='detect.py', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', type=str, default='', help='model.yaml path')
    p.add_argument('--weight', '--weights', type=str, default='', help='model.pt path')
    p.add_argument('--num-classes', type=int, default=80, help='number of classes the checkpoint was trained for')
    p.add_argument('--source', type=str, default='inference/images', help='file, folder, glob, video, 0 for webcam')
    p.add_argument('--img-size', type=int, default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=float, default=0.25, help='object confidence threshold')
    p.add_argument('--iou-thres', type=float, default=0.45, help='IOU threshold for NMS')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--view-img', action='store_true', help='display results')
    p.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    p.add_argument('--nosave', action='store_true', help='do not save images/videos')
    p.add_argument('--classes', nargs='+', type=int, help='filter by class: --classes 0, or --classes 0 2 3')
    p.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    p.add_argument('--augment', action='store_true', help='augmented inference')
    p.add_argument('--project', default='runs/detect', help='save results to project/name')
    p.add_argument('--name', default='exp', help='save results to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--dy-thres', type=float, default=0.5,
                   help='router threshold: score >= T takes the easy path (T <= 0: all easy, T > 1: all hard)')
    p.add_argument('--data', type=str, default='', help='optional data.yaml whose names label the drawings')
    opt = p.parse_args(argv)
    if opt.num_classes < 1 or opt.img_size < 1:
        p.error('--num-classes and --img-size must be positive')
    return opt


def class_names(opt: argparse.Namespace) -> list[str]:
    """--data names, else COCO names for 80 classes, else numbers."""
    if opt.data:
        names = [str(n) for n in load_data_config(opt.data, required=())['names']]
    elif opt.num_classes == 80:
        names = [str(n) for n in yaml.safe_load((ROOT / 'data' / 'coco.yaml').read_text())['names']]
    else:
        names = [str(i) for i in range(opt.num_classes)]
    return names + [str(i) for i in range(len(names), opt.num_classes)]


class Outputs:
    """Saved images, video writers and label files of one run."""

    def __init__(self, save_dir: Path, save_img: bool, save_txt: bool, save_conf: bool) -> None:
        self.save_dir, self.save_img, self.save_txt, self.save_conf = save_dir, save_img, save_txt, save_conf
        self.writers: dict[str, cv2.VideoWriter] = {}

    def labels(self, frame: Frame, det: np.ndarray) -> None:
        """Append `class cx cy w h [conf]` rows normalised by the frame size."""
        stem = Path(frame.path).stem + (f'_{frame.index}' if frame.kind != 'image' else '')
        h, w = frame.image.shape[:2]
        append_label_rows(self.save_dir / 'labels' / f'{stem}.txt', det.tolist(), w, h, self.save_conf)

    def image(self, frame: Frame, drawn: np.ndarray, capture_fps: float = 30.0) -> str:
        """Write the drawn frame (image file, or the source's video); returns the path written."""
        name = Path(frame.path).name if not frame.path.isnumeric() else f'webcam{frame.path}'
        path = self.save_dir / name
        if frame.kind == 'image':
            cv2.imwrite(str(path), drawn)
            return str(path)
        if frame.path not in self.writers:
            path = path.with_suffix('.mp4')
            h, w = drawn.shape[:2]
            self.writers[frame.path] = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), capture_fps, (w, h))
        self.writers[frame.path].write(drawn)
        return str(path.with_suffix('.mp4'))

    def close(self) -> None:
        """Finish every video file."""
        for writer in self.writers.values():
            writer.release()


def detect_frame(model, frame: Frame, opt: argparse.Namespace, img_size: int, stride: int,
                 device: torch.device, half: bool) -> tuple[np.ndarray, str, float, float]:
    """Detections [x1, y1, x2, y2, conf, cls] in frame pixels, the route taken, inference and NMS seconds."""
    img = letterbox(frame.image, img_size, stride=stride)[0]
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[::-1])).to(device)
    x = (x.half() if half else x.float())[None] / 255.0
    t0 = time_sync(device)
    model.last_easy = None
    with torch.inference_mode():
        decoded = model(x, augment=opt.augment)[0]
    t1 = time_sync(device)
    det = non_max_suppression(decoded.float(), opt.conf_thres, opt.iou_thres, classes=opt.classes,
                              agnostic=opt.agnostic_nms)[0]
    t2 = time_sync(device)
    det[:, :4] = scale_coords(x.shape[2:], det[:, :4], frame.image.shape).round()
    route = '' if model.last_easy is None else ('easy' if bool(model.last_easy[0]) else 'hard')
    return det.cpu().numpy(), route, t1 - t0, t2 - t1


def run_detect(opt: argparse.Namespace) -> Path:
    """Detect on every frame of --source; returns the run folder."""
    names = class_names(opt)
    if not is_stream(opt.source):
        list_sources(opt.source)  # a bad --source fails before anything is created
    save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    device = select_device(opt.device)
    model = load_for_inference(opt.cfg, opt.weight, opt.num_classes, device)
    if model.dynamic:
        model.dy_thres = opt.dy_thres
    stride = int(model.stride.max())
    img_size = check_img_size(opt.img_size, stride)
    half = device.type == 'cuda'
    if half:
        model.half()
    colours = class_colours(len(names))
    outputs = Outputs(save_dir, not opt.nosave, opt.save_txt, opt.save_conf)
    t_start = time.perf_counter()
    try:
        for frame in iterate_frames(opt.source):
            det, route, t_inf, t_nms = detect_frame(model, frame, opt, img_size, stride, device, half)
            counts = np.bincount(det[:, 5].astype(int), minlength=len(names)) if len(det) else []
            summary = ''.join(f'{n} {names[c]}{"s" if n > 1 else ""}, ' for c, n in enumerate(counts) if n)
            prefix = f'{frame.position} ({frame.index}/{frame.frames}) ' if frame.kind == 'video' else ''
            message = f'{prefix}{frame.path}: {summary}{route + " path, " if route else ""}' \
                      f'Done. ({1e3 * t_inf:.1f}ms) Inference, ({1e3 * t_nms:.1f}ms) NMS'
            if opt.save_txt and len(det):
                outputs.labels(frame, det)
            if outputs.save_img or opt.view_img:
                drawn = frame.image.copy()
                for *xyxy, conf, cls in reversed(det.tolist()):
                    draw_detection(drawn, xyxy, f'{names[int(cls)]} {conf:.2f}', colours[int(cls)])
                if outputs.save_img:
                    message += f' The image with the result is saved in: {outputs.image(frame, drawn)}'
                if opt.view_img:
                    cv2.imshow(frame.path, drawn)
                    cv2.waitKey(1)
            LOGGER.info(message)
    finally:
        outputs.close()
    LOGGER.info(f'Done. ({time.perf_counter() - t_start:.3f}s)')
    return save_dir


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run_detect, parse_opt(argv), LOGGER)


if __name__ == '__main__':
    main()
