"""Autoanchor (the reference's train_step1.py): BPR metric, k-means + evolution, and adoption into both detection
layers."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import Model
from tests.helpers import tiny_config
from utils.train.autoanchor import anchor_metric, anchor_stats, check_anchors, kmean_anchors, label_wh

TINY_ANCHORS = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119]], dtype=np.float64)


def stub_dataset(wh_px: np.ndarray, per_image: int = 4, size: int = 640) -> SimpleNamespace:
    """Square size×size images holding the given pixel boxes, per_image labels each."""
    labels = [np.column_stack([np.zeros(len(c)), np.full((len(c), 2), 0.5), c / size])
              for c in np.array_split(wh_px, max(1, len(wh_px) // per_image))]
    return SimpleNamespace(shapes=np.full((len(labels), 2), float(size)), labels=labels)


def pixel_anchors(model: Model) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(anchors, anchor_grid, stride) copies of both detection layers."""
    return [(d.anchors.clone(), d.anchor_grid.clone(), d.stride.clone()) for d in model.detect_layers]


@pytest.fixture
def model() -> Model:
    """The tiny two-level model (3 anchors per level, strides 8 and 16)."""
    return Model(tiny_config(dynamic=False, nc=3))


def test_hand_computed_metric() -> None:
    anchors = np.array([[10, 10], [20, 40]], dtype=np.float32)
    wh = np.array([[10, 10], [40, 10], [30, 50]], dtype=np.float32)
    # (10,10): 1 vs a1, min(.5,.25) vs a2; (40,10): min(1/4, 1) = .25 vs a1, min(1/2, 1/4) vs a2;
    # (30,50): min(1/3, 1/5) vs a1, min(2/3, 4/5) vs a2
    x, best = anchor_metric(wh, anchors)
    np.testing.assert_allclose(x, [[1, .25], [.25, .25], [.2, 2 / 3]], rtol=1e-6)
    np.testing.assert_allclose(best, [1, .25, 2 / 3], rtol=1e-6)
    bpr, aat = anchor_stats(wh, anchors, thr=4.0)  # 0.25 exactly is not past 1/thr (strict >)
    assert bpr == pytest.approx(2 / 3) and aat == pytest.approx(2 / 3)
    assert anchor_stats(wh, anchors, thr=6.0) == pytest.approx((1.0, 2.0))  # every metric > 1/6


def test_label_wh_scales_by_each_image_long_side() -> None:
    ds = SimpleNamespace(shapes=np.array([[1280., 640.], [320., 640.]]),
                         labels=[np.array([[0, .5, .5, .5, .5]]), np.zeros((0, 5))])
    np.testing.assert_allclose(label_wh(ds, 640), [[320, 160]])
    ds.labels[1] = np.array([[1, .5, .5, .25, 1.]])
    scaled = label_wh(ds, 640, np.random.default_rng(0))
    ratio = scaled / np.array([[320, 160], [80, 640]])
    assert np.all((ratio > .9) & (ratio < 1.1)) and np.allclose(ratio[:, 0], ratio[:, 1])


def test_good_anchors_are_kept(model: Model, caplog: pytest.LogCaptureFixture) -> None:
    before = pixel_anchors(model)
    ds = stub_dataset(np.repeat(TINY_ANCHORS, 5, axis=0))
    with caplog.at_level(logging.INFO, logger='utils.train.autoanchor'):
        assert check_anchors(ds, model) is False
    assert 'Best Possible Recall (BPR) = 1.0000' in caplog.text and 'current anchors are a good fit' in caplog.text
    for (a0, g0, _), (a1, g1, _) in zip(before, pixel_anchors(model)):
        assert torch.equal(a0, a1) and torch.equal(g0, g1)


@pytest.mark.parametrize('low, high', [(2, 4), (380, 600)])
def test_bad_anchors_are_replaced_in_both_heads(model: Model, caplog: pytest.LogCaptureFixture,
                                                low: float, high: float) -> None:
    wh = np.random.default_rng(5).uniform(low, high, size=(60, 2))
    ds = stub_dataset(wh)
    scaled = label_wh(ds, 640, np.random.default_rng(0))  # what check_anchors(seed=0) sees
    bpr_before = anchor_stats(scaled, TINY_ANCHORS)[0]
    assert bpr_before < 0.98
    with caplog.at_level(logging.INFO, logger='utils.train.autoanchor'):
        assert check_anchors(ds, SimpleNamespace(module=model), seed=0) is True  # DDP-style wrapper unwrapped
    assert 'new anchors saved to model' in caplog.text.lower()
    (a1, g1, s1), (a2, g2, s2) = pixel_anchors(model)
    assert torch.equal(a1, a2) and torch.equal(g1, g2) and torch.equal(s1, s2)
    torch.testing.assert_close(g2.view_as(a2), a2 * s2.view(-1, 1, 1))
    new = g2.view(-1, 2).numpy().astype(np.float64)
    assert not np.allclose(new, TINY_ANCHORS)
    assert anchor_stats(scaled, new)[0] > bpr_before
    area = new.prod(1)
    assert np.all(np.diff(area) >= 0) and np.all(np.diff(s2.numpy()) > 0)  # small anchors on fine strides


def test_same_seed_same_anchors() -> None:
    wh = np.random.default_rng(1).uniform(5, 300, size=(200, 2))
    first = kmean_anchors(wh, n=6, gen=50, seed=3, verbose=False)
    assert first.shape == (6, 2) and np.all(np.diff(first.prod(1)) >= 0)
    np.testing.assert_array_equal(first, kmean_anchors(wh, n=6, gen=50, seed=3, verbose=False))
    assert not np.array_equal(first, kmean_anchors(wh, n=6, gen=50, seed=4, verbose=False))


def test_check_anchors_repeats_with_seed() -> None:
    ds = stub_dataset(np.random.default_rng(2).uniform(300, 600, size=(40, 2)))
    models = [Model(tiny_config(dynamic=False, nc=3)) for _ in range(2)]
    assert all(check_anchors(ds, m, seed=7) for m in models)
    torch.testing.assert_close(models[0].detect_layers[1].anchor_grid, models[1].detect_layers[1].anchor_grid,
                               rtol=0, atol=0)


def test_kmeans_falls_back_to_random_init(caplog: pytest.LogCaptureFixture) -> None:
    wh = np.full((20, 2), 50.0)  # one distinct point: k-means cannot return 6 centroids
    with caplog.at_level(logging.WARNING, logger='utils.train.autoanchor'):
        k = kmean_anchors(wh, n=6, gen=50, seed=0, verbose=False)
    assert 'random init' in caplog.text and k.shape == (6, 2) and np.all(k >= 2.0)
    assert anchor_stats(wh, k)[0] == 1.0


def test_training_draws_the_reference_scales_from_numpys_global_stream(model: Model, caplog) -> None:
    """Without a seed (training) the check draws each image's ×U(0.9, 1.1) scale from numpy's global generator as
    the reference does: its report is computed from those draws, and the next global draw (the first augmentation's
    HSV jitter) is the one the reference's stream gives after them. A private generator left the global stream
    unmoved, so every later augmentation drew differently from the reference's run with the same seed."""
    ds = stub_dataset(np.random.default_rng(5).uniform(8, 200, size=(40, 2)))
    np.random.seed(2)  # init_seeds(0 + 2), rank 0
    reference_scale = np.random.uniform(0.9, 1.1, size=(len(ds.shapes), 1))  # the reference's check_anchors
    reference_next = np.random.uniform(-1, 1, 3)
    shapes = 640 * ds.shapes / ds.shapes.max(1, keepdims=True) * reference_scale
    wh = np.concatenate([lb[:, 3:5] * s for s, lb in zip(shapes, ds.labels)]).astype(np.float32)
    aat = anchor_stats(wh, TINY_ANCHORS)[1]
    np.random.seed(2)
    with caplog.at_level(logging.INFO, logger='utils.train.autoanchor'):
        check_anchors(ds, model, refit=False)
    assert f'anchors/target = {aat:.2f}' in caplog.text
    np.testing.assert_array_equal(np.random.uniform(-1, 1, 3), reference_next)
