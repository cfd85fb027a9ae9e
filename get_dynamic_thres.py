r"""Router score percentiles on a split → the 11 dynamic thresholds (as the reference's get_dynamic_thres.py), optionally a
speed/accuracy sweep.

    python get_dynamic_thres.py --device 0 --batch-size 1 --img-size 640 --cfg cfg/dy-yolov7-step2.yaml \
        --weight weights/dy-yolov7.pt --data data/coco.yaml --task val

Threshold k sends about (100 - 10k)% of the images down the easy path (score >= threshold). Any batch size works
(the reference only handled batch 1). Extensions: the scores' percentiles are saved as `router.json` in the run
folder and as `<weights stem>.router.json` beside the weights, so that test.py and detect.py can take
`--easy-share P` or `--gflops G` instead of a threshold. `--sweep` runs every image once through both paths and
computes, at each threshold, the router's mAP, random routing's (mean ± sd over --random-orders draws) and the
oracle's (images ranked by head 1's minus head 2's detection loss, with --hyp's gains): `sweep.csv`, `sweep.png`
and `router_quality.txt` (the gain over random, the share of the oracle's gain captured, the rank correlation).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from utils.cli import HelpFormatter, add_split_flags, check_split_flags, run_cli
from utils.evaluation.sweep import dynamic_thresholds, format_thresholds

LOGGER = logging.getLogger('get_dynamic_thres')
ROOT = Path(__file__).resolve().parent


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's flags plus --sweep, --hyp and --random-orders."""
    p = argparse.ArgumentParser(prog='get_dynamic_thres.py', description=__doc__, formatter_class=HelpFormatter)
    add_split_flags(p, ': router.json always; sweep.csv, sweep.png, router_quality.txt with --sweep')
    p.add_argument('--augment', action='store_true', help='accepted for compatibility; scores come from one pass')
    p.add_argument('--sweep', action='store_true',
                   help='evaluate every threshold, random and oracle routing in one pass: sweep.csv, sweep.png')
    p.add_argument('--hyp', default=str(ROOT / 'hyp' / 'hyp.finetune.dynamic.adam.yaml'),
                   help='--sweep: the step-2 hyp whose loss gains rank images for the oracle')
    p.add_argument('--random-orders', type=int, default=20, help='--sweep: random routings drawn per easy share')
    p.add_argument('--time-paths', action='store_true',
                   help='also time the easy path, the hard path and their parts at batch 1 on this engine, threads '
                        'and size, and log medians and p95 (the deployment latency; the sweep\'s eval_ms_per_image '
                        'is the evaluation pass\'s)')
    opt = p.parse_args(argv)
    check_split_flags(p, opt)
    if opt.random_orders < 2:
        p.error(f'--random-orders must be at least 2 (a mean and a spread), got {opt.random_orders}')
    return opt


def run(opt: argparse.Namespace) -> list[str]:
    """Scores → thresholds (printed) and the percentiles file; with --sweep, the one-pass sweep."""
    return dynamic_thresholds(opt, lambda thresholds: print(format_thresholds(thresholds))).thresholds


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run, parse_opt(argv), LOGGER)


if __name__ == '__main__':
    main()
