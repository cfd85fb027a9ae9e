"""Forward latency of the easy and hard paths, fused, side by side: the reference's way of running
(NCHW, torch.no_grad) and ours (channels_last, torch.inference_mode). Prints ms/image and GFLOP/s.

    python benchmarks/bench_forward.py                       # Dy-YOLOv7, 320 and 640, batch 1 and 8, CPU
    python benchmarks/bench_forward.py --device 0 --half     # CUDA, adds fp16 rows
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.inference import prepare_for_inference, prepare_input  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.torch_utils import select_device, time_sync  # noqa: E402


def measure(model: Model, x: torch.Tensor, path: str, reps: int, inference_mode: bool) -> float:
    """Median seconds per forward of one path (after one warm-up pass)."""
    ctx = torch.inference_mode if inference_mode else torch.no_grad
    device = x.device
    times = []
    with ctx():
        model.forward_path(x, path)
        for _ in range(reps):
            t0 = time_sync(device)
            model.forward_path(x, path)
            times.append(time_sync(device) - t0)
    return statistics.median(times)


def variants(device: torch.device, half: bool) -> list[tuple[str, bool, bool, bool]]:
    """(label, channels_last, inference_mode, fp16) per column."""
    cols = [('plain NCHW no_grad', False, False, False), ('ours channels_last inference_mode', True, True, False)]
    if half and device.type == 'cuda':
        cols.append(('ours fp16', True, True, True))
    return cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', default='cfg/dy-yolov7-step2.yaml')
    parser.add_argument('--sizes', type=int, nargs='+', default=[320, 640])
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions per cell (median reported)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    parser.add_argument('--half', action='store_true', help='also time fp16 (CUDA only)')
    opt = parser.parse_args()
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = select_device(opt.device)
    base = Model(opt.cfg)
    flops = {size: base.flops(size) for size in opt.sizes}
    cols = variants(device, opt.half)
    models = {}
    for label, channels_last, _, fp16 in cols:
        models[label] = prepare_for_inference(copy.deepcopy(base), device, half=fp16, channels_last=channels_last)
    print(f'{opt.cfg} on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; '
          f'ms/image (GFLOP/s)')
    print(f"{'size':>5} {'batch':>5} {'path':>5} {'GFLOPs':>7} | " + ' | '.join(f'{c[0]:>34}' for c in cols) + ' | speed-up')
    for size in opt.sizes:
        for batch in opt.batches:
            for path in ('easy', 'hard'):
                cells, per_image = [], []
                for label, _, inference_mode, _ in cols:
                    model = models[label]
                    x = prepare_input(torch.rand(batch, 3, size, size), model)
                    sec = measure(model, x, path, opt.reps, inference_mode) / batch
                    per_image.append(sec)
                    cells.append(f'{sec * 1e3:>20.1f} ms ({flops[size][path] / sec:>6.1f})')
                print(f'{size:>5} {batch:>5} {path:>5} {flops[size][path]:>7.1f} | ' + ' | '.join(cells)
                      + f' | {per_image[0] / per_image[-1]:.2f}x')
    if device.type == 'cpu':
        print('speed-up: plain / ours, this run. Side by side on one machine the reference\'s easy path took the '
              'plain model\'s time and its hard path 1.58x it; times from other machines are not comparable')


if __name__ == '__main__':
    main()
