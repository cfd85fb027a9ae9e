r"""Router score percentiles on a split → the 11 dynamic thresholds (SPEC §10), optionally a speed/accuracy sweep.

    python get_dynamic_thres.py --device 0 --batch-size 1 --img-size 640 --cfg cfg/dy-yolov7-step2.yaml \
        --weight weights/dy-yolov7.pt --data data/coco.yaml --task val

Threshold k sends about (100 - 10k)% of the images down the easy path (score >= threshold). Any batch size works
(the reference only handled batch 1). `--sweep` (extension) also evaluates at each threshold and writes
`sweep.csv` and `sweep.png` (mAP against mean GFLOPs per image) to pick a threshold from.
"""
from __future__ import annotations

import argparse
import logging

from utils.cli import add_split_flags, check_split_flags, run_cli
from utils.sweep import dynamic_thresholds, format_thresholds

LOGGER = logging.getLogger('get_dynamic_thres')


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's flags plus --sweep."""
    p = argparse.ArgumentParser(prog='get_dynamic_thres.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_flags(p, ' (--sweep only)')
    p.add_argument('--augment', action='store_true', help='accepted for compatibility; scores come from one pass')
    p.add_argument('--sweep', action='store_true', help='evaluate at every threshold: sweep.csv and sweep.png')
    opt = p.parse_args(argv)
    check_split_flags(p, opt)
    return opt


def run(opt: argparse.Namespace) -> list[str]:
    """Scores → thresholds (printed); with --sweep, evaluation at each threshold."""
    return dynamic_thresholds(opt, lambda thresholds: print(format_thresholds(thresholds))).thresholds


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run, parse_opt(argv), LOGGER)


if __name__ == '__main__':
    main()
