"""Image weights and multi-scale batches (the reference's utils/datasets.py and train_step1.py): hand-computed weights
and the sampler's draws."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import ROOT
from utils.data.data_config import load_data_config
from utils.data.sampling import (
    PARTNERS_PER_SAMPLE,
    ImageWeightSampler,
    epoch_image_weights,
    labels_to_class_weights,
    labels_to_image_weights,
    multi_scale_resize,
)
from utils.data.synthetic import generate_dataset
from utils.datasets import LoadImagesAndLabels

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
    assert len(draw) == 4 and {d.index for d in draw} <= {1, 2}  # zero weight: never drawn
    assert all(set(d.partners) <= {1, 2} and len(d.partners) == PARTNERS_PER_SAMPLE for d in draw)
    ranks = []
    for rank in range(2):
        s = ImageWeightSampler(4, rank=rank, world_size=2, seed=7)
        s.set_weights([0, 1, 3, 0])
        s.set_epoch(2)
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s) == 2
    assert sorted(ranks[0] + ranks[1]) == sorted(draw)
    many = ImageWeightSampler(4000, seed=0)
    many.set_weights(np.r_[np.ones(2000), 3 * np.ones(2000)])
    samples = list(many)
    assert np.mean([d.index >= 2000 for d in samples]) == pytest.approx(0.75, abs=0.03)
    assert np.mean([p >= 2000 for d in samples for p in d.partners]) == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize('n,world', [(5, 2), (7, 3), (10, 4), (3, 4), (8, 2)])
def test_ddp_ranks_get_equal_lengths(n: int, world: int) -> None:
    """Every rank gets ceil(n / world) samples, the draw padded by its own first samples (as DistributedSampler
    pads), so no rank waits in a collective; before the fix ranks got n // world or one more."""
    ranks = []
    for rank in range(world):
        sampler = ImageWeightSampler(n, rank=rank, world_size=world, seed=3)
        ranks.append(list(sampler))
        assert len(ranks[-1]) == len(sampler) == -(-n // world)
    full = list(ImageWeightSampler(n, seed=3))
    dealt = [s for k in range(len(ranks[0])) for s in (r[k] for r in ranks if k < len(r))]
    assert dealt == (full * 2)[:len(dealt)]  # round-robin over the draw, wrapping around for the padding


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


def test_image_weights_weight_the_mosaic_partners_too(tmp_path: Path) -> None:
    """101 images, one of them the only one with class 1 (100x rarer than class 0): by the reference's class
    weights it is drawn as often as all the others together, and since its partners are drawn by the same weights
    it fills about half of all mosaic tiles. Before the fix partners were uniform: about 1 tile in 8."""
    data = load_data_config(generate_dataset(tmp_path / 'data', 101, img_size=64, val_fraction=0.0, seed=0))
    hyp = yaml.safe_load((ROOT / 'hyp' / 'hyp.scratch.p5.yaml').read_text())
    hyp.update(mosaic=1.0, mixup=0.0, paste_in=0.0)
    dataset = LoadImagesAndLabels(data['train'], 64, augment=True, hyp=hyp)
    dataset.labels = [np.array([[float(i == 0), .5, .5, .2, .2]], np.float32) for i in range(len(dataset))]
    dataset.segments = [[] for _ in range(len(dataset))]
    tiles: list[int] = []
    load_images = dataset.load_images
    dataset.load_images = lambda indices: tiles.extend(indices) or load_images(indices)
    sampler = ImageWeightSampler(len(dataset), seed=0)
    class_weights = labels_to_class_weights(dataset.labels, 2).numpy()
    sampler.set_weights(epoch_image_weights(dataset.labels, class_weights, np.zeros(2), 2))
    random.seed(0)
    for sample in sampler:
        dataset[sample]
    assert len(tiles) > 4 * len(dataset)
    assert 0.4 < np.mean(np.array(tiles) == 0) < 0.6


def test_partners_past_the_pre_drawn_ones_follow_the_image_weights(tmp_path: Path) -> None:
    """Paste-in builds more mosaics than the sampler pre-draws partners for; those extra partners are drawn by the
    epoch's image weights too (as the reference's weighted `dataset.indices`), not uniformly: with image 0 weighted
    99x every other image, about half of them are image 0 (uniform: 1 in 101). The sampler shares its weights
    with the dataset (and so with loader workers) through a shared-memory tensor."""
    from utils.data.dataloaders import create_dataloader
    data = load_data_config(generate_dataset(tmp_path / 'data', 101, img_size=64, val_fraction=0.0, seed=0))
    hyp = yaml.safe_load((ROOT / 'hyp' / 'hyp.scratch.p5.yaml').read_text())
    loader, dataset = create_dataloader(data['train'], 64, 4, 32, hyp=hyp, augment=True, image_weights=True,
                                        workers=0)
    weights = np.ones(len(dataset))
    weights[0] = 99.0
    loader.sampler.set_weights(weights)
    assert dataset.share_image_weights().is_shared() and float(dataset.share_image_weights()[0]) == 99.0
    random.seed(0)
    drawn = dataset.draw_partners(2000)  # no pre-drawn partners left: the fallback
    assert 0.4 < np.mean(np.array(drawn) == 0) < 0.6
