r"""Detect objects in images, folders, globs, videos, webcams or network streams with a DynamicDet checkpoint.

    python detect.py --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --num-classes 80 \
        --source path/to/images --device 0 --dy-thres 0.5
    python detect.py --cfg cfg/dy-yolov7-tiny-step1.yaml --weight data/demo/dy-yolov7-tiny-demo.pt \
        --num-classes 3 --img-size 128    # no download: the demo's detector on the sample images in data/images

--source takes an image, a folder (its images, then its videos), a glob ('dir/*.jpg', quoted), a video file, a webcam
index (0), an rtsp:// rtmp:// http:// https:// stream address, or a .txt file listing streams or webcam indexes
(one per line; they are read live, side by side). Its default, data/images, holds four synthetic sample images
(two easy, two hard) held out from the demo detector's training data.

Flags are those of the reference's detect.py. Each image is routed by its own router score (>= --dy-thres: easy path);
the log line says which path it took. Beyond the reference: class names from --data (else COCO's for 80 classes),
--batch-size for images and video frames, --save-crop, and a route + FPS line drawn on videos and webcams.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from utils.cli import (
    HelpFormatter,
    add_detection_flags,
    add_engine_flags,
    check_detection_flags,
    check_engine_flags,
    check_writable,
    increment_path,
    run_cli,
    warn_existing_labels,
)
from utils.detection.detector import DetectionOutputs, FpsMeter
from utils.detection.drawing import class_colours, display_available, draw_detection, draw_status
from utils.detection.predictor import class_names, load_detector
from utils.detection.sources import (
    Frame,
    SourceError,
    is_stream,
    iterate_batches,
    list_sources,
    prefetch,
    read_stream_list,
)

LOGGER = logging.getLogger('detect')
DEFAULT_SOURCE = 'data/images'  # shipped sample images (relative to the working directory, as --data's default)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's flags plus an optional --data for class names."""
    p = argparse.ArgumentParser(prog='detect.py', description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfg', type=str, default='', help='model.yaml path')
    p.add_argument('--weight', '--weights', type=str, default='', help='model.pt path')
    p.add_argument('--num-classes', type=int, default=80, help='number of classes the checkpoint was trained for')
    p.add_argument('--source', type=str, default=DEFAULT_SOURCE,
                   help='image, folder, glob, video, webcam index (0), rtsp/rtmp/http(s) stream address, or a .txt '
                        'list of streams (see above)')
    p.add_argument('--img-size', type=int, default=640, help='inference size (pixels)')
    add_detection_flags(p, 0.25, 0.45)
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--view-img', action='store_true', help='display results')
    p.add_argument('--nosave', action='store_true', help='do not save images/videos')
    p.add_argument('--classes', nargs='+', type=int, help='filter by class: --classes 0, or --classes 0 2 3')
    p.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    p.add_argument('--project', default='runs/detect', help='save results to project/name')
    p.add_argument('--name', default='exp', help='save results to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    add_engine_flags(p)
    p.add_argument('--data', type=str, default='', help='optional data.yaml whose names label the drawings')
    p.add_argument('--batch-size', type=int, default=1,
                   help='images (or video frames) per forward pass; live streams batch one frame per stream')
    p.add_argument('--save-crop', action='store_true', help='save each detection cropped under crops/<class>/')
    opt = p.parse_args(argv)
    if opt.num_classes < 1 or opt.img_size < 1 or opt.batch_size < 1:
        p.error('--num-classes, --img-size and --batch-size must be positive')
    outside = sorted({c for c in opt.classes or [] if not 0 <= c < opt.num_classes})
    if outside:  # NMS would drop every box of these ids without a word
        p.error(f'--classes {" ".join(map(str, outside))}: outside 0..{opt.num_classes - 1} '
                f'(--num-classes {opt.num_classes}); give class ids the model detects')
    check_detection_flags(p, opt)
    check_engine_flags(p, opt)
    return opt


def log_line(frame: Frame, det: np.ndarray, route: str, t_inf: float, t_nms: float, names: list[str]) -> str:
    """The reference's per-image line (stream/video prefix, class counts, timings) with the route taken."""
    counts = np.bincount(det[:, 5].astype(int), minlength=len(names)) if len(det) else []
    summary = ''.join(f'{n} {names[c]}{"s" if n > 1 else ""}, ' for c, n in enumerate(counts) if n)
    prefix = {'video': f'{frame.position} ({frame.index}/{frame.frames}) ', 'stream': f'{frame.position}: '}
    return f'{prefix.get(frame.kind, "")}{frame.path}: {summary}{route + " path, " if route else ""}' \
           f'Done. ({1e3 * t_inf:.1f}ms) Inference, ({1e3 * t_nms:.1f}ms) NMS'


def draw(frame: Frame, det: np.ndarray, route: str, fps: float, names: list[str], colours: list, status: str = ''
         ) -> np.ndarray:
    """The frame with every detection boxed and labelled; videos and streams get a route + FPS line."""
    drawn = frame.image.copy()
    for *xyxy, conf, cls in reversed(det.tolist()):
        draw_detection(drawn, xyxy, f'{names[int(cls)]} {conf:.2f}', colours[int(cls)])
    if frame.kind != 'image':
        draw_status(drawn, f'{route + " path | " if route else ""}{fps:.1f} FPS{status}')
    return drawn


def budget_status(detector) -> str:
    """--target-ms on a video's status line: the target, the recent mean and the easy share."""
    c = detector.controller
    if c is None or not c.rows:
        return ''
    return f' | target {1e3 * c.target_s:g} ms, mean {1e3 * c.rows[-1][2]:.0f} ms, {100 * c.share:.0f}% easy'


def run_detect(opt: argparse.Namespace) -> Path:
    """Detect on every frame of --source; returns the run folder."""
    names = class_names(opt.num_classes, opt.data)
    (read_stream_list if is_stream(opt.source) else list_sources)(opt.source)  # fail before creating anything
    check_writable(Path(opt.project) / opt.name)
    detector = load_detector(opt)  # before the run folder: a checkpoint that does not fit leaves nothing behind
    save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    if opt.save_txt:
        warn_existing_labels(save_dir)
    if opt.view_img and not display_available():
        LOGGER.warning('WARNING: --view-img: this OpenCV build or machine cannot open windows; results are only saved')
        opt.view_img = False
    colours = class_colours(len(names))
    outputs = DetectionOutputs(save_dir, not opt.nosave, opt.save_txt, opt.save_conf, opt.save_crop)
    fps_meter, t_start, seen = FpsMeter(), time.perf_counter(), 0
    try:
        batches = iterate_batches(opt.source, opt.batch_size)
        # files: read and letterbox the next batches while the model runs; live streams: always the newest frame
        prepared = ((frames, None) for frames in batches) if is_stream(opt.source) else \
            prefetch(batches, detector.letterbox)
        for frames, boxed in prepared:
            result = detector(frames, boxed)
            fps, seen = fps_meter.update(len(frames)), seen + len(frames)
            t_inf, t_nms = result.inference_s / len(frames), result.nms_s / len(frames)  # per image
            for frame, det, route in zip(frames, result.detections, result.routes):
                message = log_line(frame, det, route, t_inf, t_nms, names)
                if opt.save_txt and len(det):
                    outputs.labels(frame, det)
                if opt.save_crop and len(det):
                    outputs.crops(frame, det, names)
                if outputs.save_img or opt.view_img:
                    drawn = draw(frame, det, route, fps, names, colours, budget_status(detector))
                    if outputs.save_img:
                        message += f' The image with the result is saved in: {outputs.image(frame, drawn)}'
                    if opt.view_img:
                        cv2.imshow(frame.path, drawn)
                        cv2.waitKey(1)
                LOGGER.info(message)
    finally:
        outputs.close()
    if not seen:
        for folder in (save_dir / 'labels', save_dir):  # nothing was written: leave no empty run folder
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise SourceError(f'--source {opt.source}: no image or video frame could be read (see the warnings above)')
    if detector.controller is not None:
        LOGGER.info(f'Latency budget: {detector.controller.summary()}; frame by frame in '
                    f'{detector.controller.save(save_dir)} and budget.png')
    LOGGER.info(f'Done. ({time.perf_counter() - t_start:.3f}s)')
    return save_dir


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run_detect, parse_opt(argv), LOGGER)


if __name__ == '__main__':
    main()
