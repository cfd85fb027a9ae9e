"""Both heads of the --from-scratch demo's step 1 as it trains: mAP@.5:.95 of the easy path (backbone 1 + head 1)
and of the hard path (both backbones + head 2) on the demo's held-out images, all of them and per synthetic kind,
every K epochs.

    python benchmarks/demo_heads.py                                  # seed 0, the demo's defaults, every 5 epochs
    python benchmarks/demo_heads.py --seed 1 --every 5 -- --epochs 45 --img 96   # flags after -- go to demo.py

It answers what the demo's sweep cannot: when head 2 passes head 1, and on which kind of image (the synthetic
"easy" images: one or two clear shapes; "hard": many faint ones on clutter). Step 1 runs exactly as
`demo.py --from-scratch` runs it (same data, flags and seed); each evaluation is of the EMA weights, as the trainer
validates them. `demo.py --build-detector` records the same curve for the shipped detector (its manifest's
`curve`). Writes OUT/train/step1/heads.csv (one row per evaluated epoch) and prints each row as it comes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402
import train_step1  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.data.synthetic import generate_dataset  # noqa: E402
from utils.demo_detector import NUM_CLASSES, VAL_FRACTION, BuildRecipe, curve_trainer  # noqa: E402
from utils.train.trainer import Trainer, train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Generate the demo's data, run its step 1 with both heads evaluated, write heads.csv."""
    argv = sys.argv[1:] if argv is None else argv
    demo_flags = argv[argv.index('--') + 1:] if '--' in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--seed', type=int, default=0, help='the demo seed (data and training)')
    p.add_argument('--every', type=int, default=5, help='evaluate after every this many epochs (and the last)')
    p.add_argument('--out', default='runs/demo_heads', help='output folder (a new numbered one if it exists)')
    opt = p.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    logging.getLogger('utils.demo_detector').setLevel(logging.INFO)  # the curve's rows
    demo_opt = demo.parse_opt(['--from-scratch', '--seed', str(opt.seed), *demo_flags])
    out = demo.increment_path(opt.out).resolve()
    data = generate_dataset(out / 'data', demo_opt.images, demo_opt.img, VAL_FRACTION, opt.seed, NUM_CLASSES)
    recipe = BuildRecipe(images=demo_opt.images, img=demo_opt.img, epochs=demo_opt.epochs,
                         batch_size=demo_opt.batch_size, seed=opt.seed, every=max(opt.every, 1))
    start = time.perf_counter()
    run = train(train_step1.parse_opt(demo.step1_argv(demo_opt, data, out)), curve_trainer(Trainer, recipe, []),
                configure_logging=False)
    print(f'{run / "heads.csv"} ({time.perf_counter() - start:.0f} s)')


if __name__ == '__main__':
    main()
