"""The embedded default job: build every DynamicDet config and print its size and cost per path.

Needs no download. (The full demo — synthetic data, both training steps, threshold sweep, evaluation and
detection — replaces this once those pieces land.)
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from models.graph import ConfigError
from models.yolo import Model

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger('demo')
NATIVE_SIZE = {'dy-yolov7': 640, 'dy-yolov7x': 640, 'dy-yolov7-w6': 1280}


def summarize(cfg: Path) -> str:
    """One table row: config, size, parameters, state_dict entries, router parameters, GFLOPs per path."""
    model = Model(cfg)
    size = NATIVE_SIZE[cfg.stem.rsplit('-step', 1)[0]]
    flops = model.flops(size)
    params = sum(p.numel() for p in model.parameters())
    router = sum(p.numel() for p in model.router.parameters()) if model.dynamic else 0
    return (f'{cfg.stem:<20} {size:>5} {params:>12,} {len(model.state_dict()):>8} {router:>10,} '
            f"{flops['easy']:>9.1f} {flops['hard']:>9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--cfg', nargs='*', default=None, help='model configs (default: every cfg/dy-*.yaml)')
    opt = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    configs = [Path(c) for c in opt.cfg] if opt.cfg else sorted((ROOT / 'cfg').glob('dy-*.yaml'))
    LOGGER.info('%-20s %5s %12s %8s %10s %9s %9s', 'config', 'size', 'parameters', 'tensors', 'router',
                'GF easy', 'GF hard')
    start = time.perf_counter()
    logging.getLogger('models').setLevel(logging.WARNING)
    for cfg in configs:
        try:
            LOGGER.info(summarize(cfg))
        except ConfigError as e:
            LOGGER.error('ConfigError: %s', e)
            return 1
    LOGGER.info('GFLOPs per image of the fused model at the given size, counted as the reference counts '
                '(thop, multiply-adds x 2). Easy = backbone 1 + router + head 1; hard = backbone 1 + router + '
                'backbone 2 + head 2. Done in %.1f s.', time.perf_counter() - start)
    return 0


if __name__ == '__main__':
    sys.exit(main())
