"""Training speed and peak memory: step-1 steps (forward, OTA dual loss, backward, SGD step, EMA) of Dy-YOLOv7 on
coco128 batches with the p5 recipe's augmentation, side by side for memory formats and mixed precision (fp32, and
the trainer's autocast: float16 on CUDA, bfloat16 on the CPU as `--amp` forces it; each row in a fresh process,
so peak memory is its own).

    python benchmarks/bench_train.py                               # CPU, 320 px, batch 2
    python benchmarks/bench_train.py --device 0 --img 640 --batch 16   # CUDA with AMP

Columns: images/s of the training step alone, images/s including the data loader, peak memory (CPU: process
peak RSS; CUDA: peak allocated).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from utils.cli import HelpFormatter  # noqa: E402


def measure(opt: argparse.Namespace) -> dict:
    """Time opt.steps training steps after opt.warmup ones; returns the figures."""
    from bench_data import DEFAULT_DATA, writable_view

    from models.yolo import Model
    from utils.data.dataloaders import create_dataloader
    from utils.hyp import scale_hyp
    from utils.loss import ComputeLossOTADual
    from utils.torch_utils import select_device, time_sync
    from utils.train.ema import ModelEMA
    from utils.train.optim import build_optimizer
    device = select_device(opt.device)
    hyp = yaml.safe_load((ROOT / 'hyp' / 'hyp.scratch.p5.yaml').read_text())
    torch.manual_seed(0)
    model = Model(opt.cfg, nc=80).to(device).train()
    fmt = torch.channels_last if opt.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.hyp, model.gr, model.nc = scale_hyp(hyp, 3, 80, opt.img, 0.0), 1.0, 80
    loss_fn, optimizer, ema = ComputeLossOTADual(model), build_optimizer(model, hyp, False, opt.batch), ModelEMA(model)
    from utils.torch_utils import amp_dtype
    dtype = amp_dtype(device, disabled=not opt.amp, forced=True)
    amp = dtype is not None
    scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
    with tempfile.TemporaryDirectory() as tmp:
        data = writable_view(DEFAULT_DATA.resolve(), Path(tmp) / 'data')
        loader, _ = create_dataloader(str(data), opt.img, opt.batch, 32, hyp=hyp, augment=True, workers=opt.workers)
        batches = iter(loader)
        step_s, t_start = 0.0, 0.0
        for i in range(opt.warmup + opt.steps):
            if i == opt.warmup:
                t_start = time.perf_counter()
            imgs, targets, *_ = next(batches)
            imgs = imgs.to(device).float().div(255).contiguous(memory_format=fmt)
            t0 = time_sync(device)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss, _ = loss_fn(model(imgs), targets.to(device), imgs)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ema.update(model)
            if i >= opt.warmup:
                step_s += time_sync(device) - t0
        total = time.perf_counter() - t_start
    n = opt.steps * opt.batch
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {'step_img_s': n / step_s, 'total_img_s': n / total, 'peak_gb': peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfg', default=str(ROOT / 'cfg' / 'dy-yolov7-step1.yaml'))
    p.add_argument('--img', type=int, default=320)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--steps', type=int, default=8)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--channels-last', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--amp', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--one', action='store_true', help=argparse.SUPPRESS)
    opt = p.parse_args()
    if opt.one:
        print(json.dumps(measure(opt)))
        return
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {opt.device}, {Path(opt.cfg).name}, '
          f'{opt.img} px, batch {opt.batch}, {opt.steps} timed steps')
    from utils.torch_utils import native_bf16
    mixed = 'fp16 autocast' if opt.device not in ('cpu', '') else \
        f'bf16 autocast ({"native" if native_bf16() else "emulated"})'
    print(f'{"memory format":>16}{"precision":>26}{"step img/s":>12}{"total img/s":>13}{"peak GB":>9}')
    for channels_last, amp in ((False, False), (True, False), (False, True), (True, True)):
        args = [a for a in sys.argv[1:]] + ['--one'] + (['--channels-last'] if channels_last else []) + \
            (['--amp'] if amp else [])
        out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = 'channels_last' if channels_last else 'NCHW'
        print(f'{name:>16}{mixed if amp else "fp32":>26}{r["step_img_s"]:>12.2f}{r["total_img_s"]:>13.2f}'
              f'{r["peak_gb"]:>9.2f}')


if __name__ == '__main__':
    main()
