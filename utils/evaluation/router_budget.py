"""Pick a threshold by budget (extension): the router-score quantiles get_dynamic_thres.py saves, and the threshold
that sends a chosen share of images (or a chosen mean GFLOPs per image) down the easy path.

The file (JSON, `<weights stem>.router.json` beside the weights and in the run folder) holds the scores' quantiles
on the split they came from (every score when there are at most MAX_QUANTILES), the per-path GFLOPs at the size
used, and the weights file's SHA-256 so that it is never applied to other weights.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from utils.cli import DEFAULT_DY_THRES
from utils.data.letterbox import evaluation_square
from utils.detection.latency import ALL_HARD_THRESHOLD, controller_for
from utils.errors import UserError
from utils.general import file_digest

LOGGER = logging.getLogger(__name__)
MAX_QUANTILES = 10001  # 0.01 % steps: within one image of any share on splits of up to 10,000 images


class RouterBudgetError(UserError, ValueError):
    """A missing, unreadable or mismatched router-percentiles file, or an impossible budget; one-line message."""


def budget_file_for(weights: str | Path) -> Path:
    """The file get_dynamic_thres.py writes beside a checkpoint: weights/x.pt → weights/x.router.json."""
    return Path(weights).with_suffix('.router.json')


def save_router_budget(paths: list[Path], scores: np.ndarray, weights: str, img_size: int,
                       flops: dict[str, float], task: str) -> list[Path]:
    """Write the quantiles file to each path (a path that cannot be written is warned about and skipped)."""
    scores = np.asarray(scores, dtype=np.float64)
    count = min(len(scores), MAX_QUANTILES)
    content = {'weights': str(weights), 'sha256': file_digest(weights), 'img_size': int(img_size), 'task': task,
               'images': int(len(scores)), 'gflops': {k: float(v) for k, v in flops.items()},
               'quantiles': np.quantile(scores, np.linspace(0, 1, count)).tolist() if count else []}
    written = []
    for path in paths:
        try:
            path.write_text(json.dumps(content, indent=1) + '\n')
            written.append(path)
        except OSError as e:
            LOGGER.warning(f'WARNING: router percentiles not written to {path} ({e.strerror})')
    return written


def load_router_budget(path: str | Path, weights: str) -> dict:
    """The quantiles file made for these weights; RouterBudgetError naming what to do otherwise."""
    path = Path(path)
    rerun = f'run get_dynamic_thres.py --weight {weights} (same --cfg, --data, --img-size) first'
    if not path.is_file():
        raise RouterBudgetError(f'{path}: no router percentiles for {weights}; {rerun}, or pass --router-json FILE')
    try:
        content = json.loads(path.read_text())
        quantiles, flops, digest = content['quantiles'], content['gflops'], content['sha256']
    except (ValueError, KeyError, TypeError) as e:
        raise RouterBudgetError(f'{path}: not a router percentiles file ({e}); {rerun}') from None
    if not quantiles or not {'easy', 'hard'} <= set(flops):
        raise RouterBudgetError(f'{path}: no scores or GFLOPs recorded; {rerun}')
    if digest != file_digest(weights):
        raise RouterBudgetError(f'{path} was made for other weights ({content.get("weights")}), not {weights}; {rerun}')
    return content


def threshold_for_share(budget: dict, easy_share: float) -> float:
    """The threshold sending `easy_share` (0..1) of the recorded images down the easy path (score >= threshold)."""
    if not 0 <= easy_share <= 1:
        raise RouterBudgetError(f'--easy-share must be between 0 and 1, got {easy_share}')
    if easy_share == 0:
        return ALL_HARD_THRESHOLD
    if easy_share == 1:
        return 0.0
    quantiles = np.asarray(budget['quantiles'])
    return float(np.interp(1 - easy_share, np.linspace(0, 1, len(quantiles)), quantiles))


def share_for_gflops(budget: dict, gflops: float) -> float:
    """The easy share whose mean GFLOPs per image is `gflops` (between the easy and the hard path's)."""
    easy, hard = budget['gflops']['easy'], budget['gflops']['hard']
    if not easy <= gflops <= hard:
        raise RouterBudgetError(f'--gflops {gflops}: must lie between the easy path\'s {easy:.4g} and the hard '
                                f'path\'s {hard:.4g} GFLOPs per image (at --img-size {budget["img_size"]})')
    return (hard - gflops) / (hard - easy)


def resolve_dy_thres(opt, run_size: int | str | None = None) -> float:
    """opt.dy_thres, or the threshold --easy-share / --gflops ask for, from --router-json or the percentiles file
    beside --weight; `run_size` is the size the model will run at (exported graphs: their own), else --img-size."""
    share, gflops = getattr(opt, 'easy_share', None), getattr(opt, 'gflops', None)
    if share is None and gflops is None:
        return opt.dy_thres
    budget = budget_for(opt)
    size = run_size or getattr(opt, 'img_size', budget['img_size'])
    if budget['img_size'] != size:
        LOGGER.warning(f'WARNING: the router percentiles were taken at --img-size {budget["img_size"]}, not '
                       f'{size}: the easy share will differ from the one asked')
    if gflops is not None:
        share = share_for_gflops(budget, gflops)
    threshold = threshold_for_share(budget, share)
    mean = share * budget['gflops']['easy'] + (1 - share) * budget['gflops']['hard']
    LOGGER.info(f'dy_thres {threshold:.6g}: {100 * share:.1f}% easy on the {budget["images"]} {budget["task"]} '
                f'images the percentiles came from, {mean:.4g} GFLOPs per image')
    return threshold


def budget_for(opt) -> dict:
    """The percentiles file --router-json names, or the one beside --weight."""
    return load_router_budget(getattr(opt, 'router_json', '') or budget_file_for(opt.weight), opt.weight)


def apply_routing_flags(model, opt) -> None:
    """Set the model's threshold from --dy-thres / --easy-share / --gflops / --target-ms (opt.dy_thres follows); a
    model without a router ignores them, with one warning when any was given. --target-ms here is the static share
    the paths' measured times give (detect.py's stream then keeps holding it: utils/detection/latency.py)."""
    if model.dynamic and getattr(opt, 'target_ms', None) is not None:
        # frames are letterboxed as test.py does under a budget (utils.detection.predictor.load_detector): a square
        # image's shape is the image size plus its half-stride border; exported graphs run their own size
        size = getattr(model, 'fixed_size', None) or evaluation_square(opt.img_size, int(model.stride.max()))
        budget = budget_for(opt)
        opt.controller = controller_for(model, tuple(size), opt.target_ms,
                                        lambda share: threshold_for_share(budget, share))
        model.dy_thres = opt.dy_thres = opt.controller.threshold
        times = opt.controller.times
        LOGGER.info(f'--target-ms {opt.target_ms:g}: {100 * opt.controller.share:.1f}% easy expected here '
                    f'({1e3 * times.expected(opt.controller.share):.1f} ms per image; easy path '
                    f'{1e3 * times.path("easy"):.1f}, hard {1e3 * times.path("hard"):.1f}), dy_thres {model.dy_thres:.6g}')
        return
    if model.dynamic:
        fixed = getattr(model, 'fixed_size', None)  # exported graphs run at their own size whatever --img-size says
        run_size = (fixed[0] if fixed[0] == fixed[1] else f'{fixed[0]}x{fixed[1]}') if fixed else None
        model.dy_thres = opt.dy_thres = resolve_dy_thres(opt, run_size)
        return
    given = [flag for flag, value, default in (('--dy-thres', opt.dy_thres, DEFAULT_DY_THRES),
                                               ('--easy-share', getattr(opt, 'easy_share', None), None),
                                               ('--gflops', getattr(opt, 'gflops', None), None),
                                               ('--target-ms', getattr(opt, 'target_ms', None), None))
             if value != default]
    if given:
        LOGGER.warning(f'WARNING: {" ".join(given)} has no effect: {getattr(opt, "cfg", "the model")} has no router '
                       f'(a step-1 config); every image takes the hard path. Use the step-2 config and checkpoint')
