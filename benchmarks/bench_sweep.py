"""The threshold sweep two ways, side by side in one run: one pass over both paths (get_dynamic_thres.py --sweep)
against one routed evaluation per threshold (what the sweep did before), on the same model, loader and machine.

    python benchmarks/bench_sweep.py                                  # Dy-YOLOv7-tiny, coco128 at 320, CPU
    python benchmarks/bench_sweep.py --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --img-size 640

Without --weight the model is randomly initialised with objectness biases raised (NMS then sees many candidates,
as with a trained model at conf 0.001) and a random router; its mAPs are near 0, the times are what
counts. Prints both times, their ratio, whether the 11 rows' mAPs agree, and the one pass's split into the
collection (forward of both paths, NMS, matching) and the metrics of the 11 routings with their random baselines.
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from bench_data import DEFAULT_DATA, writable_view  # noqa: E402
from bench_eval import build_model  # noqa: E402

from utils.cli import HelpFormatter  # noqa: E402
from utils.data.dataloaders import create_dataloader  # noqa: E402
from utils.evaluation.path_records import collect_path_records  # noqa: E402
from utils.evaluation.sweep import evaluate_each_threshold, sweep_rows, thresholds_from_scores  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--cfg', default=str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'))
    parser.add_argument('--weight', default='')
    parser.add_argument('--img-size', type=int, default=320)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--random-orders', type=int, default=20)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='a coco128-style folder (train2017.txt)')
    opt = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = select_device(opt.device)
    model = build_model(opt.cfg, opt.weight, device)
    print(f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'{Path(opt.cfg).name} at {opt.img_size} px, batch {opt.batch_size}, '
          f'{"weights " + opt.weight if opt.weight else "random weights (busy objectness)"}')
    with tempfile.TemporaryDirectory() as tmp:
        data = writable_view(opt.data.resolve(), Path(tmp) / 'data')
        loader, _ = create_dataloader(str(data), opt.img_size, opt.batch_size, 32, pad=0.5, rect=True, workers=0)
        list(loader)  # the label cache and the page cache warm for both ways
        t0 = time.perf_counter()
        records = collect_path_records(model, loader)
        t1 = time.perf_counter()
        thresholds = thresholds_from_scores(records.scores.float().numpy())
        rows, _ = sweep_rows(records, thresholds, model.flops(opt.img_size), opt.random_orders)
        t2 = time.perf_counter()
        slow = evaluate_each_threshold(model, loader, thresholds, [str(i) for i in range(80)])
        t3 = time.perf_counter()
    agree = all(a['easy_share'] == b['easy_share'] and abs(a[m] - b[m]) <= 1e-6
                for a, b in zip(rows, slow) for m in ('mAP@.5', 'mAP@.5:.95'))
    print(f'{len(records)} images, 11 thresholds (easy shares {rows[0]["easy_share"]:.0%} … {rows[-1]["easy_share"]:.0%})')
    print(f'one pass:               {t2 - t0:7.1f} s  (collection {t1 - t0:.1f} s, 11 routings + '
          f'{opt.random_orders} random draws each + oracle {t2 - t1:.1f} s)')
    print(f'one evaluation each:    {t3 - t2:7.1f} s')
    print(f'one pass is {(t3 - t2) / (t2 - t0):.1f}x faster; the 11 rows\' mAPs {"agree" if agree else "DIFFER"}')


if __name__ == '__main__':
    main()
