"""How good a router is: its mAP against random and oracle routing at the same easy shares (extension).

- random: at each easy share, `orders` random choices of which images go easy (seeded); mean and spread.
- oracle: images ranked by L1 - L2, head 1's minus head 2's detection loss on the image's labels (the SimOTA
  loss of training, with the step-2 hyp's gains). That difference is what the reference's step-2 loss
  (`utils/loss.py::ComputeLossOTADy`) teaches the router to rank: the adaptive loss s·(L1 - m/2) + (1 - s)·(L2 + m/2)
  pushes the score s up exactly when L1 - L2 is below its running median m. The images with the smallest
  difference go easy first: the best any router trained with that objective can do.
- quality: at each share the router's gain over random and the share of the oracle's gain it captures; over the
  whole curve, the area between router and random as a fraction of the area between oracle and random; and the
  Spearman rank correlation between the router's score and the oracle's order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from utils.evaluation.path_records import PathRecords, routed_map
from utils.metrics import trapezoid

METRICS = ('mAP@.5', 'mAP@.5:.95')


@dataclass
class RouterQuality:
    """The curve-wide figures of a router (nan where the oracle was not computed)."""
    all_easy: tuple[float, float]
    all_hard: tuple[float, float]
    area_captured: float
    rank_correlation: float


def baseline_columns(records: PathRecords, n_easy: int, orders: int, seed: int = 0) -> dict[str, float]:
    """Random (mean, sd over `orders` draws) and oracle mAPs with n_easy images on the easy path."""
    n = len(records)
    rng = np.random.default_rng(seed)
    draws = np.array([routed_map(records, _first(rng.permutation(n), n_easy, n)) for _ in range(orders)])
    columns = {}
    for k, metric in enumerate(METRICS):
        columns[f'random_{metric}'] = float(draws[:, k].mean())
        columns[f'random_{metric}_sd'] = float(draws[:, k].std(ddof=1)) if orders > 1 else 0.0
    oracle = (routed_map(records, _first(np.argsort(records.loss_diff, kind='stable'), n_easy, n))
              if records.loss_diff else (math.nan, math.nan))
    columns.update({f'oracle_{metric}': float(v) for metric, v in zip(METRICS, oracle)})
    return columns


def _first(order: np.ndarray, n_easy: int, n: int) -> np.ndarray:
    """The easy mask that sends the first n_easy images of `order` down the easy path."""
    easy = np.zeros(n, bool)
    easy[order[:n_easy]] = True
    return easy


# at 0 % and 100 % easy every routing is the same, but the mean of 20 equal mAPs can differ from them in the last
# bit: a "gain" below this is none, and no share of it is captured
_NO_GAIN = 1e-9


def add_gains(row: dict, metric: str = 'mAP@.5:.95') -> dict:
    """The router's gain over random at this row, and the share of the oracle's gain over random it captures."""
    gain = row[metric] - row[f'random_{metric}']
    oracle_gain = row[f'oracle_{metric}'] - row[f'random_{metric}']
    row['gain_over_random'] = gain
    row['oracle_gain_captured'] = gain / oracle_gain if oracle_gain > _NO_GAIN else math.nan
    return row


def router_quality(records: PathRecords, rows: list[dict], metric: str = 'mAP@.5:.95') -> RouterQuality:
    """Curve-wide figures: both ends, the area captured (trapezoids over the easy share) and the rank correlation."""
    n = len(records)
    ends = routed_map(records, np.ones(n, bool)), routed_map(records, np.zeros(n, bool))
    by_share = sorted(rows, key=lambda r: r['easy_share'])
    share = np.array([r['easy_share'] for r in by_share])
    router, random, oracle = (np.array([r[f'{prefix}{metric}'] for r in by_share])
                              for prefix in ('', 'random_', 'oracle_'))
    oracle_area = float(trapezoid(oracle - random, share)) if len(share) > 1 else 0.0
    area = float(trapezoid(router - random, share)) / oracle_area if oracle_area > 0 else math.nan
    correlation = math.nan
    if records.loss_diff and n > 1:
        scores = records.scores.float().numpy()
        if np.ptp(scores) > 0 and np.ptp(records.loss_diff) > 0:
            correlation = float(spearmanr(scores, -np.asarray(records.loss_diff)).statistic)
    return RouterQuality(ends[0], ends[1], float(area), correlation)


def format_quality(quality: RouterQuality, rows: list[dict]) -> str:
    """The printed summary: both ends, per share the router against random and oracle, the curve-wide figures."""
    lines = [f'All easy: mAP@.5 {quality.all_easy[0]:.4f}, mAP@.5:.95 {quality.all_easy[1]:.4f}; '
             f'all hard: mAP@.5 {quality.all_hard[0]:.4f}, mAP@.5:.95 {quality.all_hard[1]:.4f} '
             f'(the hard path {"pays" if quality.all_hard[1] > quality.all_easy[1] else "does not pay"})',
             f'{"easy share":>10} {"router":>8} {"random":>15} {"oracle":>8} {"gain":>8} {"captured":>9}  '
             f'(mAP@.5:.95)']
    for r in sorted(rows, key=lambda r: -r['easy_share']):
        lines.append(f'{100 * r["easy_share"]:>9.0f}% {r["mAP@.5:.95"]:>8.4f} '
                     f'{r["random_mAP@.5:.95"]:>8.4f}±{r["random_mAP@.5:.95_sd"]:.4f} {r["oracle_mAP@.5:.95"]:>8.4f} '
                     f'{r["gain_over_random"]:>+8.4f} {_percent(r["oracle_gain_captured"]):>9}')
    lines.append(f'Area between router and random curves: {_percent(quality.area_captured)} of the oracle\'s; '
                 f'rank correlation of score and oracle order: {quality.rank_correlation:.3f}')
    return '\n'.join(lines)


def _percent(x: float) -> str:
    return 'n/a' if math.isnan(x) else f'{100 * x:.0f}%'
