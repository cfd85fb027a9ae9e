"""What bounds a routed path's speed: a torch.profiler run of one path at one batch, its time split into kinds of
work (convolutions, element-wise, memory moves, ...), the busy share of the device and the top operators.

    python benchmarks/profile_speed.py                                         # CPU: Dy-YOLOv7 hard path, 640, batch 8
    python benchmarks/profile_speed.py --device 0 --precision fp16 --batch 32   # GPU: the fp16 batched hard path

On a GPU, a kernel-busy share well below 100 % of the wall time means the path is bound by launches and Python
(what CUDA graphs, `--compile reduce-overhead`, remove); a busy device with convolutions far below the peak
TFLOP/s of bench_speed.py means memory-bound layers (element-wise, concatenation, copies) or small convolutions.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import batches_for, build, torch_forward  # noqa: E402

from utils.cli import HelpFormatter  # noqa: E402
from utils.torch_utils import select_device, time_sync  # noqa: E402

# Operator name fragments → kind of work (first match wins; aten and CUDA kernel names).
KINDS = (('convolution', ('conv', 'gemm', 'mkldnn', 'cudnn', 'sm80_', 'sm90_', 'xmma', 'cutlass')),
         ('memory (cat, copy, layout)', ('cat', 'copy', 'contiguous', 'clone', 'to_', 'empty', 'fill', 'index',
                                         'nchw', 'nhwc', 'transpose', 'permute')),
         ('element-wise / activation', ('silu', 'sigmoid', 'relu', 'add', 'mul', 'elementwise', 'vectorized',
                                        'pow', 'sub', 'div', 'exp')),
         ('pooling / resize', ('pool', 'upsample', 'mean', 'reduce', 'nearest')))


def kind_of(name: str) -> str:
    """The kind of work an operator or kernel name stands for."""
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), 'other')


def self_time_us(event, cuda: bool) -> float:
    """An aggregated event's own time (device time on CUDA, CPU time otherwise), microseconds."""
    return float(getattr(event, 'self_device_time_total', 0.0) if cuda else event.self_cpu_time_total)


def profile_path(forward, batch: torch.Tensor, thres: float, cuda: bool, reps: int):
    """(wall seconds per call, aggregated profiler events) over `reps` calls after two warm-up calls."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode():
        for _ in range(2):
            forward(batch, thres)
        with profile(activities=activities) as prof:
            t0 = time_sync(batch.device)
            for _ in range(reps):
                forward(batch, thres)
            wall = (time_sync(batch.device) - t0) / reps
    return wall, prof.key_averages()


def report(events, wall: float, cuda: bool, reps: int, top: int) -> list[str]:
    """Printed lines: busy share of the wall time, time per kind of work, the top operators by own time."""
    leaves = [e for e in events if self_time_us(e, cuda) > 0]
    busy = sum(self_time_us(e, cuda) for e in leaves) / reps / 1e6
    by_kind: dict[str, float] = defaultdict(float)
    for e in leaves:
        by_kind[kind_of(e.key)] += self_time_us(e, cuda) / reps / 1e6
    where = 'GPU kernels' if cuda else 'CPU operators (own time)'
    lines = [f'wall {1e3 * wall:.1f} ms per call; {where} busy {1e3 * busy:.1f} ms = {100 * busy / wall:.0f} % of it']
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f'  {kind:<28} {1e3 * seconds:9.1f} ms  {100 * seconds / busy:5.1f} %')
    lines.append(f'top {top} operators by own time:')
    for e in sorted(leaves, key=lambda e: -self_time_us(e, cuda))[:top]:
        seconds = self_time_us(e, cuda) / reps / 1e6
        lines.append(f'  {e.key[:60]:<60} {1e3 * seconds:9.2f} ms  {e.count // reps:5d} calls  {kind_of(e.key)}')
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfg', default='cfg/dy-yolov7-step2.yaml')
    p.add_argument('--size', type=int, default=640)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--path', choices=('easy', 'hard', 'mixed'), default='hard')
    p.add_argument('--reps', type=int, default=3, help='profiled calls')
    p.add_argument('--top', type=int, default=15, help='operators listed')
    p.add_argument('--device', default='cpu')
    p.add_argument('--precision', choices=('fp32', 'fp16', 'bf16'), default='fp32', help='fp16: CUDA; bf16: CPU (--bf16)')
    opt = p.parse_args()
    device = select_device(opt.device)
    cuda = device.type == 'cuda'
    model = build(opt.cfg, device, opt.precision)
    batches, thres = batches_for(model, opt.path, opt.batch, opt.size)
    wall, events = profile_path(torch_forward(model), batches[0], thres, cuda, opt.reps)
    gflops = model.flops(opt.size)
    gflops = (gflops['easy'] + gflops['hard']) / 2 if opt.path == 'mixed' else gflops[opt.path]
    print(f'{Path(opt.cfg).stem} {opt.path} path, {opt.size} px, batch {opt.batch}, '
          f'{opt.precision}, {device}: {gflops * opt.batch / wall / 1e3:.3f} TFLOP/s')
    print('\n'.join(report(events, wall, cuda, opt.reps, opt.top)))


if __name__ == '__main__':
    main()
