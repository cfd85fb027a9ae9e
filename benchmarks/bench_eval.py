"""End-to-end evaluation speed: test.py's loop on coco128 (load, forward with routing, NMS, matching, metrics),
batch 1 vs batch 8, images/s and NMS ms/image. Absolute figures only: the reference's test.py was timed on another
machine, and no ratio divides times from two machines.

    python benchmarks/bench_eval.py                     # Dy-YOLOv7, 640, CPU, random weights made busy
    python benchmarks/bench_eval.py --weight weights/dy-yolov7.pt --device 0

Without --weight the model is randomly initialised with objectness biases raised and class biases lowered, so
NMS sees many candidates as with a trained model at --conf-thres 0.001 (an untrained model produces none); the
NMS figure is then only indicative. The rows use the inference preparation of test.py (fused, channels_last, on
the CPU oneDNN-packed convolutions); `--unpacked` adds the same rows without packed convolutions, each right after
its packed row (`--repeat 3` to see the spread).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from bench_data import DEFAULT_DATA, writable_view  # noqa: E402

from models.checkpoint import load_weights  # noqa: E402
from models.inference import prepare_for_inference  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.data.dataloaders import create_dataloader  # noqa: E402
from utils.evaluation.validator import EvalOptions, evaluate, summarize  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402


def build_model(cfg: str, weight: str, device: torch.device, packed: bool = True) -> Model:
    """Fused eval model as test.py prepares it (`packed` False: without oneDNN-packed convolutions): the
    checkpoint's weights, or random ones with busy objectness."""
    torch.manual_seed(0)  # the router's random weights decide the routes: keep them the same run to run
    model = Model(cfg, nc=80)
    if weight:
        load_weights(model, weight)
    else:
        for det in model.detect_layers:
            for conv in det.m:
                bias = conv.bias.data.view(det.na, -1)
                bias[:, 4] += 3.0  # most anchors pass the objectness pre-filter ...
                bias[:, 5:] -= 6.0  # ... but few classes pass conf 0.001, as with a trained model
    return prepare_for_inference(model, device, packed=packed, retain_memory=True)  # as test.py runs it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--cfg', default=str(ROOT / 'cfg' / 'dy-yolov7-step2.yaml'))
    parser.add_argument('--weight', default='')
    parser.add_argument('--img-size', type=int, default=640)
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dy-thres', type=float, nargs='+', default=[0.0, 2.0],
                        help='thresholds to run (0: every image easy, 2: every image hard, else routed by score)')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--unpacked', action='store_true',
                        help='also run each row without the oneDNN-packed convolutions (CPU), right after it')
    parser.add_argument('--repeat', type=int, default=1, help='run the whole list this many times')
    opt = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = select_device(opt.device)
    models = {'packed': build_model(opt.cfg, opt.weight, device)}
    if opt.unpacked:
        models['unpacked'] = build_model(opt.cfg, opt.weight, device, packed=False)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, {opt.img_size} px, '
          f'{"weights " + opt.weight if opt.weight else "random weights (busy objectness)"}')
    print(f'{"dy_thres":>9}{"batch":>6}{"images":>8}{"total s":>10}{"img/s":>8}{"model ms/img":>14}{"NMS ms/img":>12}'
          f'{"easy %":>8}  model')
    with tempfile.TemporaryDirectory() as tmp:
        data = writable_view(opt.data.resolve(), Path(tmp) / 'data')
        rows = [(t, b, name) for _ in range(opt.repeat) for t in opt.dy_thres for b in opt.batches for name in models]
        for dy_thres, batch, name in rows:
            model = models[name]
            model.dy_thres = dy_thres
            t0 = time.perf_counter()
            loader, _ = create_dataloader(str(data), opt.img_size, batch, 32, pad=0.5, rect=True, workers=8)
            eval_opt = EvalOptions(names=[str(i) for i in range(80)], plots=False, save_dir=Path(tmp))
            out, confusion = evaluate(model, loader, eval_opt)
            summarize(out, eval_opt, confusion)
            total = time.perf_counter() - t0
            n = max(out.seen, 1)
            print(f'{dy_thres:>9g}{batch:>6}{out.seen:>8}{total:>10.1f}{n / total:>8.2f}{1e3 * out.t_inference / n:>14.0f}'
                  f'{1e3 * out.t_nms / n:>12.1f}{100 * out.n_easy / max(out.n_routed, 1):>8.0f}  {name}', flush=True)


if __name__ == '__main__':
    main()
