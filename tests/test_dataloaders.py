"""Loader creation (the reference's utils/datasets.py): worker count rule, DDP split, repeatable seeded workers, RAM
cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import ROOT, coco128_view, requires_coco128
from utils.data.data_config import load_data_config
from utils.data.dataloaders import create_dataloader, worker_count
from utils.data.synthetic import generate_dataset
from utils.datasets import LoadImagesAndLabels


@pytest.fixture(scope='module')
def train_list(tmp_path_factory: pytest.TempPathFactory) -> str:
    return load_data_config(generate_dataset(tmp_path_factory.mktemp('synth'), 12, 64, 0.25, 0, 3))['train'][0]


@pytest.fixture(scope='module')
def hyp() -> dict:
    return yaml.safe_load((ROOT / 'hyp' / 'hyp.scratch.p5.yaml').read_text())


def test_worker_count_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, 'cpu_count', lambda: 8)
    assert worker_count(16, 1, 8) == 8
    assert worker_count(16, 4, 8) == 2  # cpu // world size
    assert worker_count(3, 1, 8) == 3  # no more workers than images in a batch
    assert worker_count(1, 1, 8) == 0  # batch 1 loads in the main process
    assert worker_count(16, 1, 0) == 0


def test_ddp_ranks_split_the_dataset(train_list: str) -> None:
    seen = []
    for rank in range(2):
        loader, dataset = create_dataloader(train_list, 64, 2, 32, rank=rank, world_size=2, workers=0)
        seen.append([p for _, _, paths, _ in loader for p in paths])
    assert len(seen[0]) == len(seen[1]) == (len(dataset) + 1) // 2  # padded by repeating one image, like DDP
    assert set(seen[0] + seen[1]) == set(dataset.img_files)


def test_rect_batches_under_ddp_keep_one_shape(tmp_path: Path) -> None:
    """--rect with 2 DDP ranks on images of mixed aspect ratios: every batch of every rank holds one shape (the
    shuffling DistributedSampler mixed them, and stacking the batch failed), and the ranks split the images."""
    from utils.data.synthetic import generate_dataset
    data = generate_dataset(tmp_path / 'data', 23, img_size=64, val_fraction=0.0, seed=1)
    seen = []
    whole, _ = create_dataloader(str(data.parent / 'train.txt'), 64, 4, 32, rect=True, pad=0.5, workers=0)
    global_shapes = [tuple(imgs.shape[2:]) for imgs, _, _, _ in whole]
    for rank in range(2):
        loader, dataset = create_dataloader(str(data.parent / 'train.txt'), 64, 2, 32, rect=True, pad=0.5,
                                            rank=rank, world_size=2, workers=0)
        shapes = [tuple(imgs.shape[2:]) for imgs, _, _, _ in loader]
        assert shapes == global_shapes[:len(shapes)]  # each rank's k-th batch: the k-th global batch's shape
        seen.append([p for _, _, paths, _ in loader for p in paths])
    assert len(seen[0]) == len(seen[1]) == 11 and not set(seen[0]) & set(seen[1])  # 23 images: the last left out


def test_seeded_workers_repeat_augmented_batches(train_list: str, hyp: dict) -> None:
    runs = []
    for _ in range(2):
        loader, _ = create_dataloader(train_list, 64, 3, 32, hyp=hyp, augment=True, workers=2, seed=5)
        runs.append([(imgs.clone(), targets.clone()) for imgs, targets, _, _ in loader])
    other, _ = create_dataloader(train_list, 64, 3, 32, hyp=hyp, augment=True, workers=2, seed=6)
    for (a, ta), (b, tb) in zip(*runs):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert any(not torch.equal(a, b) for (a, _), (b, _, _, _) in zip(runs[0], other))


def test_ram_cache_gives_the_same_samples(train_list: str) -> None:
    plain = LoadImagesAndLabels(train_list, 64, 4, rect=True, pad=0.5)
    cached = LoadImagesAndLabels(train_list, 64, 4, rect=True, pad=0.5, cache_images=True)
    assert all(x is not None for x in cached.imgs)
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], cached[i][0]) and torch.equal(plain[i][1], cached[i][1])


@requires_coco128
def test_single_cls_keeps_every_label_as_class_0(tmp_path: Path) -> None:
    """--single-cls (nc 1) on coco128 keeps all 929 label rows, each as class 0, as the reference does; before the
    fix the label scan dropped every row of class >= 1 first (only 'person' was left)."""
    images = coco128_view(tmp_path / 'coco128')
    dataset = LoadImagesAndLabels(str(images), 64, single_cls=True, nc=1)
    labels = np.concatenate(dataset.labels)
    assert len(labels) == 929 and set(labels[:, 0].tolist()) == {0.0}
    assert len(np.concatenate(LoadImagesAndLabels(str(images), 64, nc=80).labels)) == 929  # the same rows
