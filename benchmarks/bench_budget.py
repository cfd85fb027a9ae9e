"""Hold a latency budget on a stream: --target-ms's controller against a fixed threshold chosen for the same target,
with and without a load step, on the PyTorch engine and OpenVINO int8.

    python demo.py && python benchmarks/bench_budget.py              # the demo's model, 320 px, 500 frames
    python benchmarks/bench_budget.py --frames 600 --img 320 --engines torch openvino-int8

The stream is the demo's 128 held-out images, cycled, at batch 1 (each frame one Predictor call; the time held is
the per-frame inference + NMS detect.py logs). Targets lie 25 %, 50 % and 75 % of the way from the easy path's time
to the hard path's, as measured here first. For each engine and target, four runs one after another: the controller
and the fixed threshold, each without load and with a load step (from frame --load-at on, a second process keeps one
core busy until the run ends). Columns: mean / p50 / p95 ms; the worst 100-frame window's error against the target
after frame 30 (no load) or after the step's first 50 frames (load); the frames the controller took to come back
within 10 % after the step (mean of 20 frames); the easy share at the end.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import HelpFormatter  # noqa: E402

DEMO = ROOT / 'runs' / 'demo'


def busy(seconds: float) -> None:
    """Keep one core busy for `seconds` (bounded: it stops by itself)."""
    if hasattr(os, 'sched_setaffinity'):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def stream(predictor, frames: list[np.ndarray], load_at: int | None) -> list[float]:
    """Per-frame ms (inference + NMS) of the frames through the predictor, a load step from frame load_at."""
    times, load = [], None
    for i, frame in enumerate(frames):
        if load_at is not None and i == load_at:
            load = multiprocessing.get_context('spawn').Process(target=busy, args=(3600,), daemon=True)
            load.start()
        p = predictor([frame])[0]
        times.append(1e3 * (p.times['inference'] + p.times['nms']))
    if load is not None:
        load.terminate()
        load.join()
    return times


def row(name: str, ms: list[float], target: float, load_at: int | None, share: float) -> str:
    """One printed line of the table."""
    ms_a = np.asarray(ms)
    start = 30 if load_at is None else load_at + 50
    windows = [ms_a[i:i + 100].mean() for i in range(start, len(ms_a) - 99, 50)] or [ms_a[start:].mean()]
    worst = max(abs(w / target - 1) for w in windows)
    back = '-'
    if load_at is not None:
        back = next((str(i - load_at) for i in range(load_at, len(ms_a) - 19)
                     if abs(ms_a[i:i + 20].mean() / target - 1) < 0.1), 'never')
    return (f'{name:<34} {target:>7.1f} {ms_a.mean():>7.1f} {np.median(ms_a):>7.1f} {np.percentile(ms_a, 95):>7.1f} '
            f'{100 * worst:>9.1f}% {back:>6} {100 * share:>6.0f}%')


def engines(opt: argparse.Namespace, folder: Path) -> dict[str, dict]:
    """Per engine: Predictor keyword arguments (weight, cfg, ...) with the percentiles at --img saved beside them."""
    import export
    import get_dynamic_thres
    weights = folder / 'demo.pt'
    shutil.copy(opt.weight, weights)
    common = ['--img-size', str(opt.img), '--device', 'cpu', '--data', opt.data, '--project', str(folder / 'runs')]
    found = {}
    if 'torch' in opt.engines:
        get_dynamic_thres.run(get_dynamic_thres.parse_opt(['--cfg', opt.cfg, '--weight', str(weights), *common]))
        found['torch'] = {'weight': weights, 'cfg': opt.cfg}
    if 'openvino-int8' in opt.engines:
        export.run(export.parse_opt(['--cfg', opt.cfg, '--weight', str(weights), '--num-classes', '3', '--img-size',
                                     str(opt.img), '--include', 'openvino', '--int8', '--data', opt.data,
                                     '--calib-images', '100']))
        manifest = folder / 'demo_int8_export.yaml'
        get_dynamic_thres.run(get_dynamic_thres.parse_opt(['--weight', str(manifest), *common]))
        found['openvino-int8'] = {'weight': manifest}
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfg', default=str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'))
    p.add_argument('--weight', default=str(DEMO / 'train' / 'step2' / 'weights' / 'last.pt'))
    p.add_argument('--data', default=str(DEMO / 'data' / 'data.yaml'))
    p.add_argument('--img', type=int, default=320)
    p.add_argument('--frames', type=int, default=500)
    p.add_argument('--load-at', type=int, default=250, help='frame at which the load step starts')
    p.add_argument('--threads', type=int, default=0, help='the engines\' threads (0: their own choice)')
    p.add_argument('--engines', nargs='+', default=['torch', 'openvino-int8'], choices=('torch', 'openvino-int8'))
    opt = p.parse_args()
    if not Path(opt.weight).is_file():
        sys.exit(f'{opt.weight}: no such checkpoint; run python demo.py first (or pass --weight/--cfg/--data)')
    import logging

    from utils.data.data_config import list_image_files, load_data_config
    from utils.data.letterbox import evaluation_square
    from utils.detection.latency import measure_paths
    from utils.detection.predictor import Predictor
    logging.disable(logging.INFO)  # the scripts' progress lines; warnings still show
    images = [cv2.imread(f) for f in list_image_files(load_data_config(opt.data)['val'])]
    frames = [images[i % len(images)] for i in range(opt.frames)]
    folder = Path(tempfile.mkdtemp())
    print(f'{opt.frames} frames at {opt.img} px, batch 1; load step at frame {opt.load_at}; {os.cpu_count()} cores; '
          f'threads {opt.threads or "left to the engine"}')
    print(f'{"engine / routing / load":<34} {"target":>7} {"mean":>7} {"p50":>7} {"p95":>7} {"worst err":>10} '
          f'{"back":>6} {"easy":>7}')
    for name, kwargs in engines(opt, folder).items():
        base = Predictor(num_classes=3, img_size=opt.img, threads=opt.threads, **kwargs)
        model = base.detector.model
        shape = tuple(model.fixed_size) if getattr(model, 'fixed_size', None) else \
            evaluation_square(opt.img, int(model.stride.max()))  # the frames' shape under a budget
        times = measure_paths(model, shape, reps=20)
        # the targets come from each path's time on this stream (what a frame really costs, 60 frames each)
        stream_ms = {}
        for route, thres in (('easy', 0.0), ('hard', 2.0)):
            fixed = Predictor(num_classes=3, img_size=opt.img, dy_thres=thres, threads=opt.threads, **kwargs)
            fixed.detector.evaluation_boxes = True  # the frames' shape under a budget
            stream_ms[route] = float(np.median(stream(fixed, frames[:60], None)[10:]))
        easy, hard = stream_ms['easy'], stream_ms['hard']
        print(f'{name}: easy path {easy:.1f} ms, hard path {hard:.1f} ms on the stream (medians); measured by '
              f'--target-ms before a stream: {1e3 * times.path("easy"):.1f} / {1e3 * times.path("hard"):.1f} ms')
        for share in (0.25, 0.5, 0.75):
            target = easy + share * (hard - easy)
            for load_at in (None, opt.load_at):
                held = Predictor(num_classes=3, img_size=opt.img, target_ms=target, threads=opt.threads, **kwargs)
                fixed_thres = held.dy_thres  # the controller's starting threshold, chosen for T: fixed beside it
                ms = stream(held, frames, load_at)
                label = 'load step' if load_at is not None else 'no load'
                print(row(f'{name} controller, {label}', ms, target, load_at, held.controller.share), flush=True)
                fixed = Predictor(num_classes=3, img_size=opt.img, dy_thres=fixed_thres, threads=opt.threads,
                                  **kwargs)
                fixed.detector.evaluation_boxes = True  # letterboxed as under the budget: the same frames
                ms = stream(fixed, frames, load_at)
                print(row(f'{name} fixed threshold, {label}', ms, target, load_at, share), flush=True)


if __name__ == '__main__':
    main()
