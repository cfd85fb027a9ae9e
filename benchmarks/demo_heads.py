"""Both heads of the demo's step 1 as it trains: mAP@.5:.95 of the easy path (backbone 1 + head 1) and of the hard
path (both backbones + head 2) on the demo's held-out images, all of them and per synthetic kind, every K epochs.

    python benchmarks/demo_heads.py                                  # seed 0, the demo's defaults, every 10 epochs
    python benchmarks/demo_heads.py --seed 1 --every 5 -- --epochs 45 --img 96   # flags after -- go to demo.py

It answers what the demo's sweep cannot: when head 2 passes head 1, and on which kind of image (the synthetic
"easy" images: one or two clear shapes; "hard": many faint ones on clutter). Step 1 runs exactly as `demo.py`
runs it (same data, flags and seed); each evaluation is of the EMA weights, as the trainer validates them.
Writes OUT/heads.csv (one row per evaluated epoch) and prints each row as it comes.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402
import train_step1  # noqa: E402
from utils.data.synthetic import generate_dataset, render_image  # noqa: E402
from utils.evaluation.validator import EvalOptions, validate  # noqa: E402
from utils.train.setup import val_loader  # noqa: E402
from utils.train.trainer import Trainer, train  # noqa: E402

SPLITS = ('all', 'easy', 'hard')


class OnePath(nn.Module):
    """A dynamic detector that sends every image down one path, seen by validate() as a plain detector."""

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.model, self.path = model, path
        self.model_b = model.model_b  # prepare_input reads the first layer's device and dtype
        self.input_format = model.input_format

    def forward(self, x: torch.Tensor, augment: bool = False):
        """(decoded, raw maps) of the chosen path for the whole batch."""
        return self.model.forward_path(x, self.path)


def kind_lists(data: Path, seed: int, img: int, nc: int) -> dict[str, Path]:
    """val.txt split by the kind each image was drawn as (background images are left out of both kinds)."""
    root = data.parent
    lines = (root / 'val.txt').read_text().split()
    kinds = {line: render_image(seed, int(Path(line).stem), img, nc).kind for line in lines}
    lists = {'all': root / 'val.txt'}
    for kind in SPLITS[1:]:
        lists[kind] = root / f'val_{kind}.txt'
        lists[kind].write_text(''.join(f'{line}\n' for line in lines if kinds[line] == kind))
    return lists


def heads_trainer(lists: dict[str, Path], every: int, rows: list[dict]) -> type[Trainer]:
    """The step-1 Trainer, evaluating both paths on every list after each `every`-th epoch and the last."""
    class HeadsTrainer(Trainer):
        def end_epoch(self, epoch, mloss, line):
            stop = super().end_epoch(epoch, mloss, line)
            if self.ctx.main and ((epoch + 1) % every == 0 or epoch + 1 == self.epochs):
                rows.append(self.evaluate_heads(epoch + 1))
                print(' '.join(f'{k} {v}' for k, v in rows[-1].items()), flush=True)
            return stop

        def evaluate_heads(self, epoch: int) -> dict:
            self.ema.update_attr(self.model)
            row = {'epoch': epoch}
            opt = EvalOptions(iou_thres=0.65, save_dir=self.save_dir, names=self.names, training=True, plots=False)
            if not hasattr(self, 'kind_loaders'):  # built at the first evaluation, kept for the rest of the run
                self.kind_loaders = {split: val_loader(self.opt, {**self.data, 'val': str(path)}, self.hyp,
                                                       self.img_size_test, self.gs, self.val_batch_size())
                                     for split, path in lists.items()}
            for split, loader in self.kind_loaders.items():
                for name in ('easy', 'hard'):
                    results, _, _ = validate(OnePath(self.ema.ema, name), loader, opt)
                    row[f'{name}_path_{split}'] = round(results[3], 4)
            return row
    return HeadsTrainer


def main(argv: list[str] | None = None) -> None:
    """Generate the demo's data, run its step 1 with the heads evaluated, write heads.csv."""
    argv = sys.argv[1:] if argv is None else argv
    demo_flags = argv[argv.index('--') + 1:] if '--' in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0, help='the demo seed (data and training)')
    p.add_argument('--every', type=int, default=10, help='evaluate after every this many epochs (and the last)')
    p.add_argument('--out', default='runs/demo_heads', help='output folder (a new numbered one if it exists)')
    opt = p.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    demo_opt = demo.parse_opt(['--seed', str(opt.seed), *demo_flags])
    out = demo.increment_path(opt.out).resolve()
    data = generate_dataset(out / 'data', demo_opt.images, demo_opt.img, demo.VAL_FRACTION, opt.seed)
    step1_argv, _ = demo.training_argv(demo_opt, data, out)
    rows: list[dict] = []
    start = time.perf_counter()
    trainer = heads_trainer(kind_lists(data, opt.seed, demo_opt.img, 3), max(opt.every, 1), rows)
    train(train_step1.parse_opt(step1_argv), trainer, configure_logging=False)
    with open(out / 'heads.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f'{out / "heads.csv"} ({time.perf_counter() - start:.0f} s)')


if __name__ == '__main__':
    main()
