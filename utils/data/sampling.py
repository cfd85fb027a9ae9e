"""Image weights (class-frequency and per-class mAP sampling) and multi-scale batches (the reference's
utils/datasets.py and train_step1.py).

Faithful: the weight formulas, mosaic partners weighted like the images they join, and the multi-scale size rule.
Fixes: `np.int` (removed in numpy ≥ 1.24) and `random.randrange` with float bounds (an error on Python ≥ 3.12).
Extension: the weighted draw (each sample with its mosaic partners) lives in a sampler in the main process, so
persistent workers and DDP ranks see each epoch's draw; the reference redrew `dataset.indices` before re-creating
its workers each epoch. Under DDP the draw is padded so that every rank gets as many samples (unequal lengths
would leave one rank waiting in a collective).
"""
from __future__ import annotations

import itertools
import math
import random
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler


def labels_to_class_weights(labels: list[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse class frequencies over all labels, normalised to sum 1 (absent classes count as 1)."""
    if not len(labels):
        return torch.Tensor()
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    counts = np.bincount(classes, minlength=nc).astype(np.float64)
    counts[counts == 0] = 1
    weights = 1 / counts
    return torch.from_numpy(weights / weights.sum())


def labels_to_image_weights(labels: list[np.ndarray], nc: int = 80,
                            class_weights: np.ndarray | None = None) -> np.ndarray:
    """Per image: the sum over its labels of their class weight."""
    class_weights = np.ones(nc) if class_weights is None else np.asarray(class_weights)
    class_counts = np.array([np.bincount(x[:, 0].astype(int), minlength=nc) for x in labels]).reshape(-1, nc)
    return (class_weights.reshape(1, nc) * class_counts).sum(1)


def epoch_image_weights(labels: list[np.ndarray], class_weights: np.ndarray, maps: np.ndarray,
                        nc: int) -> np.ndarray:
    """The reference's per-epoch weights: class_weights·(1 − per-class mAP)²/nc summed over each image's labels."""
    return labels_to_image_weights(labels, nc, class_weights * (1 - maps) ** 2 / nc)


class WeightedDraw(NamedTuple):
    """One --image-weights sample: the image and the mosaic partners drawn for it, all by weight."""
    index: int
    partners: tuple[int, ...]


PARTNERS_PER_SAMPLE = 16  # a 9-image mosaic takes 8, a mixup's second mosaic up to 8 more


class ImageWeightSampler(Sampler[WeightedDraw]):
    """Draws len(dataset) samples with replacement by image weight, each with its mosaic partners drawn by the same
    weights (the reference redraws `dataset.indices`, from which partners are picked, every epoch); DDP ranks
    share the draw and split it, padded to equal lengths as DistributedSampler pads."""

    def __init__(self, n: int, rank: int = -1, world_size: int = 1, seed: int = 0,
                 shared: torch.Tensor | None = None) -> None:
        self.n, self.rank, self.world_size, self.seed = n, max(rank, 0), world_size, seed
        self.weights = np.ones(n)
        self.shared = shared  # the dataset's shared-memory copy, for the partners drawn in its workers
        self.epoch = 0

    def set_weights(self, weights: np.ndarray) -> None:
        """Weights for the next epochs (one per image, any positive scale)."""
        self.weights = np.asarray(weights, dtype=np.float64)
        if self.shared is not None:
            self.shared.copy_(torch.from_numpy(self.weights))

    def set_epoch(self, epoch: int) -> None:
        """Same draw on every rank for a given epoch."""
        self.epoch = epoch

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        cum_weights = list(itertools.accumulate(self.weights.tolist()))
        drawn = rng.choices(range(self.n), cum_weights=cum_weights, k=self.n)
        partners = rng.choices(range(self.n), cum_weights=cum_weights, k=self.n * PARTNERS_PER_SAMPLE)
        samples = [WeightedDraw(i, tuple(partners[k * PARTNERS_PER_SAMPLE:(k + 1) * PARTNERS_PER_SAMPLE]))
                   for k, i in enumerate(drawn)]
        samples += samples[:len(self) * self.world_size - self.n]  # every rank the same number of steps
        return iter(samples[self.rank::self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)


def multi_scale_resize(imgs: torch.Tensor, img_size: int, stride: int) -> torch.Tensor:
    """--multi-scale: resize the batch so its long side is a random stride multiple in [0.5, 1.5]·img_size."""
    size = random.randrange(int(img_size * 0.5), int(img_size * 1.5) + stride) // stride * stride
    factor = size / max(imgs.shape[2:])
    if factor == 1:
        return imgs
    new_shape = [math.ceil(x * factor / stride) * stride for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=new_shape, mode='bilinear', align_corners=False)
