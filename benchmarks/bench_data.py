"""Data loading throughput, images/s with 0 and 2 workers on coco128 (absolute figures: the reference's loader
was timed on another machine, and no ratio divides times from two machines): the step-1 train loader (hyp.scratch.p5.yaml recipe: mosaic 4/9, mixup,
paste-in, perspective, HSV, flips; paste-in acts only on polygon labels, so those get a row of their own) and the
val loader (rect, pad 0.5).

    python benchmarks/bench_data.py                   # 640 px, batch 8, coco128 from ../shared/data
    python benchmarks/bench_data.py --data DIR/train2017.txt --batches 30
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import HelpFormatter  # noqa: E402
from utils.data.dataloaders import create_dataloader  # noqa: E402

DEFAULT_DATA = ROOT.parent / 'shared' / 'data' / 'coco128'


def writable_view(dataset_dir: Path, folder: Path, labels: str = 'labels') -> Path:
    """Symlinked images and labels (from `labels`: 'labels' boxes or 'segments' polygons) and a copied list in
    `folder`, so the label cache is not written into ../shared."""
    folder.mkdir(parents=True)
    (folder / 'images').symlink_to(dataset_dir / 'images', target_is_directory=True)
    (folder / 'labels').symlink_to(dataset_dir / labels, target_is_directory=True)
    (folder / 'train2017.txt').write_text((dataset_dir / 'train2017.txt').read_text())
    return folder / 'train2017.txt'


def images_per_second(loader, n_batches: int) -> float:
    """Images/s over n_batches after one warm-up batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(n_batches):
        try:
            imgs = next(it)[0]
        except StopIteration:
            it = iter(loader)
            imgs = next(it)[0]
        n += len(imgs)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='a coco128-style folder (train2017.txt)')
    parser.add_argument('--hyp', default=str(ROOT / 'hyp' / 'hyp.scratch.p5.yaml'))
    parser.add_argument('--img-size', type=int, default=640)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--batches', type=int, default=24, help='timed batches per row')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    opt = parser.parse_args()
    if not (opt.data / 'train2017.txt').is_file():
        sys.exit(f'bench_data: {opt.data}/train2017.txt not found; pass --data with a coco128-style folder')
    logging.basicConfig(level=logging.ERROR)
    hyp = yaml.safe_load(Path(opt.hyp).read_text())
    print(f'torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, {opt.img_size} px, '
          f'batch {opt.batch_size}, {opt.batches} batches per row')
    print(f'{"loader":<28}{"workers":>8}{"img/s":>9}')
    rows = [('train (p5 recipe)', 'labels', True), ('val (rect, pad 0.5)', 'labels', False)]
    if (opt.data / 'segments').is_dir():  # polygon labels switch paste-in on
        rows.insert(1, ('train, polygons (paste-in)', 'segments', True))
    with tempfile.TemporaryDirectory() as tmp:
        for name, labels, augment in rows:
            data = writable_view(opt.data.resolve(), Path(tmp) / f'{labels}-{augment}', labels)
            for nw in opt.workers:
                random.seed(0)
                np.random.seed(0)
                loader, _ = create_dataloader(str(data), opt.img_size, opt.batch_size, 32, hyp=hyp, augment=augment,
                                              rect=not augment, pad=0.0 if augment else 0.5, workers=nw)
                rate = images_per_second(loader, opt.batches)
                print(f'{name:<28}{nw:>8}{rate:>9.1f}')
                del loader

if __name__ == '__main__':
    main()
