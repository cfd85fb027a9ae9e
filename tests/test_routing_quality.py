"""The one-pass sweep, its random and oracle baselines, the router-quality figures and the threshold by budget.

The equality test needs mAPs that move with the routing: a tiny model with a spread router labels half of the
val images with its easy path's detections and half with its hard path's, so each routing scores differently."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.checkpoint import half_state_dict, save_checkpoint
from models.inference import prepare_for_inference
from tests.helpers import lively_tiny_model, spread_router
from utils.data.synthetic import generate_dataset
from utils.evaluation.path_records import PathRecords, collect_path_records, routed_map
from utils.evaluation.router_budget import (
    RouterBudgetError,
    budget_file_for,
    load_router_budget,
    resolve_dy_thres,
    save_router_budget,
    share_for_gflops,
    threshold_for_share,
)
from utils.evaluation.routing_quality import add_gains, baseline_columns, router_quality
from utils.evaluation.sweep import evaluate_each_threshold, sweep_rows, thresholds_from_scores
from utils.evaluation.validator import split_loader
from utils.general import non_max_suppression, xyxy2xywh

IMG = 64
NAMES = ['a', 'b', 'c']


def _pseudo_label(data: Path, model) -> None:
    """Rewrite the val labels: image k gets the top detections of the easy path (k even) or the hard path (odd)."""
    val = [line.strip() for line in (data.parent / 'val.txt').read_text().splitlines()]
    for k, rel in enumerate(val):
        image = cv2.imread(str(data.parent / rel))
        x = torch.from_numpy(cv2.resize(image, (IMG, IMG))[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            decoded, _ = model.forward_path(x, 'easy' if k % 2 == 0 else 'hard')
        det = non_max_suppression(decoded, 0.001, 0.3)[0][:4]
        boxes = xyxy2xywh(det[:, :4].clamp(0, IMG - 1)) / IMG
        label = rel.replace('images', 'labels').rsplit('.', 1)[0] + '.txt'
        (data.parent / label).write_text(''.join(f'{int(c)} {" ".join(f"{v:.6f}" for v in b)}\n'
                                                 for c, b in zip(det[:, 5].tolist(), boxes.tolist())))
    for cache in data.parent.glob('*.cache'):
        cache.unlink()


@pytest.fixture(scope='module')
def routed_val(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(inference model, data.yaml, cfg-less checkpoint path): 12 synthetic val images pseudo-labelled by path."""
    folder = tmp_path_factory.mktemp('routed')
    data = generate_dataset(folder / 'data', 16, img_size=IMG, val_fraction=0.75, seed=0)
    model = lively_tiny_model(nc=3)
    spread_router(model)
    model = prepare_for_inference(model, 'cpu')
    _pseudo_label(data, model)
    save_checkpoint({'model': half_state_dict(model)}, folder / 'tiny.pt')
    return model, data, folder / 'tiny.pt'


def _loader(model, data: Path, batch_size: int):
    from utils.data.data_config import load_data_config
    opt = argparse.Namespace(img_size=IMG, batch_size=batch_size, task='val', single_cls=False, workers=0)
    return split_loader(model, opt, load_data_config(data), 3, torch.device('cpu'))[0]


@pytest.mark.parametrize('batch_size', [1, 5])
def test_one_pass_sweep_equals_an_evaluation_per_threshold(routed_val, batch_size: int) -> None:
    """The 11 rows computed from one pass over both paths give the easy shares and mAPs of 11 routed evaluations:
    identical at batch 1, within float noise when images of a batch take different paths."""
    model, data, _ = routed_val
    loader = _loader(model, data, batch_size)
    records = collect_path_records(model, loader)
    thresholds = thresholds_from_scores(records.scores.float().numpy())
    fast, _ = sweep_rows(records, thresholds, model.flops(IMG), random_orders=3)
    slow = evaluate_each_threshold(model, loader, thresholds, NAMES)
    assert len({r['mAP@.5:.95'] for r in slow}) >= 3  # the routing moves the mAP: the comparison means something
    for a, b in zip(fast, slow):
        assert a['easy_share'] == b['easy_share']
        for metric in ('mAP@.5', 'mAP@.5:.95'):
            assert a[metric] == b[metric] if batch_size == 1 else a[metric] == pytest.approx(b[metric], abs=1e-6)


def _records(per_image: list[tuple[bool, bool]], loss_diff: list[float], scores: list[float]) -> PathRecords:
    """Hand-made records: image k has one label of class 0 and, per path, one detection that hits it or not."""
    records = PathRecords(scores=torch.tensor(scores), loss_diff=list(loss_diff), files=[str(k) for k in range(len(scores))])
    for hits in per_image:
        for path, hit in zip(('easy', 'hard'), hits):
            correct = torch.full((1, 10), hit)
            records.stats[path].append((correct, torch.tensor([0.9]), torch.tensor([0.0]), [0.0]))
    return records


def test_routed_map_takes_each_images_path() -> None:
    """4 images; the hard path hits all, the easy path only images 0 and 1: routing 0, 1 easy keeps mAP 1."""
    records = _records([(True, True), (True, True), (False, True), (False, True)], [0, 0, 1, 1], [.9, .8, .2, .1])
    assert routed_map(records, np.array([True, True, False, False])) == (1.0, 1.0)
    assert routed_map(records, np.ones(4, bool))[1] < 1.0 == routed_map(records, np.zeros(4, bool))[1]


def test_oracle_ranks_by_loss_difference_and_random_spreads() -> None:
    records = _records([(True, True), (False, True), (True, True), (False, True)], [0.0, 2.0, -1.0, 3.0],
                       [.5, .5, .5, .5])
    columns = baseline_columns(records, n_easy=2, orders=40)
    # the oracle sends the two smallest differences (images 2 and 0) easy, where the easy path is as good
    assert columns['oracle_mAP@.5:.95'] == 1.0
    assert columns['random_mAP@.5:.95'] < 1.0 and columns['random_mAP@.5:.95_sd'] > 0
    ends = [baseline_columns(records, n_easy=n, orders=5) for n in (0, 4)]
    assert all(c['random_mAP@.5:.95_sd'] == 0 and c['random_mAP@.5:.95'] == c['oracle_mAP@.5:.95'] for c in ends)
    row = add_gains({'mAP@.5:.95': 1.0, **columns})
    assert row['oracle_gain_captured'] == 1.0 and row['gain_over_random'] > 0


def test_router_with_the_oracles_order_captures_all_of_its_gain() -> None:
    """Scores ordered as -loss difference: rank correlation 1 and the whole oracle area; reversed: -1."""
    hits = [(True, True), (False, True), (True, True), (False, True), (True, True), (False, True)]
    diffs = [0.0, 2.0, -1.0, 3.0, 0.5, 1.0]
    for scores, correlation in (([-d for d in diffs], 1.0), (diffs, -1.0)):
        records = _records(hits, diffs, [1 / (1 + math.exp(-s)) for s in scores])
        rows = []
        for n_easy in range(7):
            easy = np.zeros(6, bool)
            easy[np.argsort(-records.scores.numpy(), kind='stable')[:n_easy]] = True
            m50, m = routed_map(records, easy)
            rows.append(add_gains({'easy_share': n_easy / 6, 'mAP@.5': m50, 'mAP@.5:.95': m,
                                   **baseline_columns(records, n_easy, orders=20)}))
        quality = router_quality(records, rows)
        assert quality.rank_correlation == pytest.approx(correlation)
        assert (quality.area_captured == pytest.approx(1.0)) == (correlation == 1.0)
    assert quality.area_captured < 0 and quality.all_hard == (1.0, 1.0)


def test_threshold_for_share_lands_within_one_image(tmp_path: Path) -> None:
    """On the images the percentiles came from, --easy-share P sends P·N images easy, give or take one."""
    scores = np.random.default_rng(0).beta(0.5, 0.5, 137).astype(np.float32)
    weights = tmp_path / 'w.pt'
    weights.write_bytes(b'weights')
    (path,) = save_router_budget([tmp_path / 'r.json'], scores, str(weights), 64, {'easy': 1.0, 'hard': 3.0}, 'val')
    budget = load_router_budget(path, str(weights))
    for share in np.linspace(0, 1, 41):
        t = threshold_for_share(budget, float(share))
        assert abs(int((torch.from_numpy(scores) >= t).sum()) - share * len(scores)) <= 1, share
    assert share_for_gflops(budget, 1.5) == 0.75 and share_for_gflops(budget, 3.0) == 0.0


def test_bad_budgets_are_one_line_errors(tmp_path: Path) -> None:
    weights, other = tmp_path / 'w.pt', tmp_path / 'other.pt'
    weights.write_bytes(b'weights')
    other.write_bytes(b'other weights')
    save_router_budget([budget_file_for(weights)], np.linspace(0, 1, 10), str(weights), 64,
                       {'easy': 1.0, 'hard': 3.0}, 'val')
    budget_file_for(weights).rename(budget_file_for(other))  # a file made for other weights
    cases = [(dict(weight=str(weights), easy_share=0.5), 'no router percentiles for'),
             (dict(weight=str(other), easy_share=0.5), 'was made for other weights'),
             (dict(weight=str(other), router_json=str(tmp_path / 'missing.json'), easy_share=0.5), 'missing.json')]
    for flags, message in cases:
        opt = argparse.Namespace(**{'dy_thres': 0.5, 'easy_share': None, 'gflops': None, 'router_json': '',
                                    'img_size': 64, **flags})
        with pytest.raises(RouterBudgetError, match=message):
            resolve_dy_thres(opt)
    save_router_budget([budget_file_for(weights)], np.linspace(0, 1, 10), str(weights), 64,
                       {'easy': 1.0, 'hard': 3.0}, 'val')
    for flags, message in ((dict(gflops=5.0), 'must lie between'), (dict(easy_share=1.5), 'between 0 and 1')):
        opt = argparse.Namespace(**{'dy_thres': 0.5, 'easy_share': None, 'gflops': None, 'router_json': '',
                                    'img_size': 64, 'weight': str(weights), **flags})
        with pytest.raises(RouterBudgetError, match=message):
            resolve_dy_thres(opt)
    assert json.loads(budget_file_for(weights).read_text())['images'] == 10


def test_captured_share_is_undefined_where_the_oracle_gains_only_rounding() -> None:
    """At 100 % easy the router, random's mean of equal draws and the oracle agree up to the last bit of a float
    mean: a random mean one bit below the others is no gain, and the captured share is n/a, not 100 %."""
    row = add_gains({'mAP@.5:.95': 0.086, 'random_mAP@.5:.95': float(np.nextafter(0.086, 0)),
                     'oracle_mAP@.5:.95': 0.086})
    assert math.isnan(row['oracle_gain_captured'])
    row = add_gains({'mAP@.5:.95': 0.09, 'random_mAP@.5:.95': 0.08, 'oracle_mAP@.5:.95': 0.1})
    assert row['oracle_gain_captured'] == pytest.approx(0.5)
