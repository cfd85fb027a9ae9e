r"""Step 1: train the cascaded detector (both backbones, both heads) with the recipe of the reference's train_step1.py.

    python train_step1.py --workers 8 --device 0 --batch-size 16 --epochs 300 --img 640 \
        --cfg cfg/dy-yolov7-step1.yaml --weight '' --data data/coco.yaml --hyp hyp/hyp.scratch.p5.yaml \
        --name dy-yolov7-step1
    torchrun --nproc_per_node 8 train_step1.py --device 0,1,2,3,4,5,6,7 --sync-bn --batch-size 128 ...

Outputs under runs/train/NAME: weights/last.pt, best.pt (weights_only-loadable, written atomically),
results.txt/.csv/.png, opt.yaml, hyp.yaml, cfg.yaml, labels.png, LR.png, train/test batch images, TensorBoard
events. `--resume` (alone: the newest run) continues where a run stopped.
"""
from __future__ import annotations

import argparse
import logging
import sys

from utils.cli import run_cli
from utils.train.distributed import per_device
from utils.train.options import parse_train_options
from utils.train.trainer import train

LOGGER = logging.getLogger('train_step1')


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's step-1 flags and our extensions."""
    return parse_train_options('train_step1.py', 1, __doc__, argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback; Ctrl-C says how to --resume."""
    argv = sys.argv[1:] if argv is None else argv
    run_cli(per_device(train, __file__, argv), parse_opt(argv), LOGGER)


if __name__ == '__main__':
    main()
