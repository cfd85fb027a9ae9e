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
from pathlib import Path

import numpy as np
import torch

from models.graph import ConfigError
from models.inference import load_for_inference
from utils.cli import add_split_flags, check_split_flags, increment_path, run_cli
from utils.data_config import load_data_config
from utils.evaluation import split_loader
from utils.torch_utils import select_device

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


def thresholds_from_scores(scores: np.ndarray) -> list[str]:
    """'0', the 10th … 90th percentiles (numpy linear interpolation), '1': 11 strings, as the reference prints."""
    return ['0'] + [str(np.percentile(scores, q)) for q in range(10, 100, 10)] + ['1']


def format_thresholds(thresholds: list[str]) -> str:
    """The reference's printout: stars, the thresholds on one line, one line per easy/hard share, stars."""
    lines = ['', '*' * 51, ' '.join(thresholds)]
    lines += [f'First: {100 - 10 * k}%\tSecond: {10 * k}%\tThreshold: {t}' for k, t in enumerate(thresholds)]
    return '\n'.join(lines + ['*' * 51])


def collect_scores(model, loader, device: torch.device, half: bool) -> np.ndarray:
    """Router scores of every image of the loader (all B of each batch)."""
    from tqdm import tqdm
    model.get_score = True
    scores = []
    with torch.inference_mode():
        for imgs, *_ in tqdm(loader, desc='Router scores'):
            imgs = imgs.to(device, non_blocking=True)
            imgs = (imgs.half() if half else imgs.float()) / 255.0
            scores.append(model(imgs).float().view(-1).cpu())
    model.get_score = False
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def run(opt: argparse.Namespace) -> list[str]:
    """Scores → thresholds (printed); with --sweep, evaluation at each threshold."""
    data = load_data_config(opt.data, required=(opt.task,))
    device = select_device(opt.device, opt.batch_size)
    model = load_for_inference(opt.cfg, opt.weight, data['nc'], device)
    if not model.dynamic:
        raise ConfigError(f'{opt.cfg}: has no router (not a step-2 config); use e.g. cfg/dy-yolov7-step2.yaml')
    loader, _, img_size, half = split_loader(model, opt, data, data['nc'], device)
    thresholds = thresholds_from_scores(collect_scores(model, loader, device, half))
    print(format_thresholds(thresholds))
    if opt.sweep:
        from utils.sweep import sweep_thresholds
        save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)
        sweep_thresholds(model, loader, thresholds, data, img_size, half, save_dir)
    return thresholds


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run, parse_opt(argv), LOGGER)

if __name__ == '__main__':
    main()
