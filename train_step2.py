r"""Step 2: train the adaptive router on the frozen step-1 detector (the reference's train_step2.py).

    python train_step2.py --workers 4 --device 0 --batch-size 1 --epochs 2 --img 640 --adam \
        --cfg cfg/dy-yolov7-step2.yaml --weight runs/train/dy-yolov7-step1/weights/last.pt \
        --data data/coco.yaml --hyp hyp/hyp.finetune.dynamic.adam.yaml --name dy-yolov7-step2

--batch-size 1 is the reference's (faithful) mode. Extension: --batch-size B > 1 computes both heads' losses
and the adaptive formula per image, so a batch of B trains the router like B batch-1 steps, B times faster on a GPU.
--weight takes a step-1 checkpoint of ours (last.pt, best.pt, epoch_*.pt) or a released one; only its weights are
used (never its optimizer, epoch or EMA). --resume continues a step-2 run.
"""
from __future__ import annotations

import argparse
import logging
import sys

from utils.cli import run_cli
from utils.train.distributed import per_device
from utils.train.options import parse_train_options
from utils.train.step2 import Step2Trainer
from utils.train.trainer import train

LOGGER = logging.getLogger('train_step2')


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's step-2 flags (defaults: 2 epochs, batch 1) and our extensions."""
    return parse_train_options('train_step2.py', 2, __doc__, argv)


def run(opt: argparse.Namespace):
    """Train the router; returns the run folder."""
    return train(opt, Step2Trainer)


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback; Ctrl-C says how to --resume."""
    argv = sys.argv[1:] if argv is None else argv
    run_cli(per_device(run, __file__, argv), parse_opt(argv), LOGGER)


if __name__ == '__main__':
    main()
