"""Image weights and multi-scale batches (the reference's utils/datasets.py and train_step1.py): hand-computed weights
and the sampler's draws."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from utils.sampling import (ImageWeightSampler, epoch_image_weights, labels_to_class_weights,
                            labels_to_image_weights, multi_scale_resize)

LABELS = [np.array([[0, .5, .5, .1, .1], [0, .2, .2, .1, .1]], np.float32),  # two of class 0
          np.array([[2, .5, .5, .1, .1]], np.float32),  # one of class 2
          np.zeros((0, 5), np.float32)]  # background


def test_class_weights_hand_computed() -> None:
    # counts [2, 0, 1] → absent class counts 1 → 1/[2, 1, 1] = [.5, 1, 1] / 2.5
    np.testing.assert_allclose(labels_to_class_weights(LABELS, 3).numpy(), [0.2, 0.4, 0.4])


def test_image_weights_hand_computed() -> None:
    np.testing.assert_allclose(labels_to_image_weights(LABELS, 3, np.array([1., 10., 100.])), [2, 100, 0])
    # class weights [.2, .4, .4] · (1 − mAP)² / nc with mAP [.5, 0, 1]: [.05/3, .4/3, 0]
    w = epoch_image_weights(LABELS, np.array([.2, .4, .4]), np.array([.5, 0., 1.]), 3)
    np.testing.assert_allclose(w, [2 * .05 / 3, 0, 0])


def test_sampler_follows_weights_and_splits_ranks() -> None:
    full = ImageWeightSampler(4, seed=7)
    full.set_weights([0, 1, 3, 0])
    full.set_epoch(2)
    draw = list(full)
    assert len(draw) == 4 and set(draw) <= {1, 2}  # zero weight: never drawn
    ranks = []
    for rank in range(2):
        s = ImageWeightSampler(4, rank=rank, world_size=2, seed=7)
        s.set_weights([0, 1, 3, 0])
        s.set_epoch(2)
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s) == 2
    assert ranks[0] + ranks[1] != [] and sorted(ranks[0] + ranks[1]) == sorted(draw)
    many = ImageWeightSampler(4000, seed=0)
    many.set_weights(np.r_[np.ones(2000), 3 * np.ones(2000)])
    share = np.mean(np.array(list(many)) >= 2000)
    assert share == pytest.approx(0.75, abs=0.03)


def test_multi_scale_sizes_are_stride_multiples_in_range() -> None:
    random.seed(0)
    imgs = torch.zeros(2, 3, 64, 48)
    seen = set()
    for _ in range(50):
        out = multi_scale_resize(imgs, 64, 16)
        h, w = out.shape[2:]
        assert h % 16 == 0 and w % 16 == 0 and 32 <= h <= 96
        assert w == int(np.ceil(48 * h / 64 / 16) * 16)  # aspect kept, rounded up to the stride
        seen.add(h)
    assert seen == {32, 48, 64, 80, 96}
