"""Training samples (the reference's utils/datasets.py) on drawn objects: after mosaic 4/9, perspective, flips and
mixup the boxes still
enclose the objects' pixels; labels stay inside the image; seeded runs repeat; collate and --quad layouts."""
from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import utils.data.datasets as datasets
from tests.helpers import ROOT
from utils.datasets import LoadImagesAndLabels

BACKGROUND = 40
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]  # BGR per class; after BGR→RGB the tensor holds them reversed
IMG = 64


def _write_dataset(folder: Path) -> Path:
    """Six images of different sizes, each with 1-3 solid rectangles of class colours on a dark background."""
    rng = np.random.default_rng(0)
    (folder / 'images').mkdir(parents=True)
    (folder / 'labels').mkdir()
    lines = []
    for i, (h, w) in enumerate([(48, 64), (64, 40), (64, 64), (30, 60), (80, 50), (64, 64)]):
        img = np.full((h, w, 3), BACKGROUND, np.uint8)
        rows = []
        for k in range(1 + i % 3):  # object k lives in the k-th third of the image height: no overlaps
            cls, top = (i + k) % 3, k * h // 3
            x1, y1 = int(rng.integers(0, w // 2)), top + int(rng.integers(0, 3))
            x2, y2 = x1 + int(rng.integers(8, w // 2)), top + h // 3 - int(rng.integers(0, 3))
            img[y1:y2, x1:x2] = COLOURS[cls]
            rows.append(f'{cls} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}')
        cv2.imwrite(str(folder / 'images' / f'{i}.png'), img)
        (folder / 'labels' / f'{i}.txt').write_text('\n'.join(rows) + '\n')
        lines.append(f'./images/{i}.png')
    (folder / 'list.txt').write_text('\n'.join(lines) + '\n')
    return folder / 'list.txt'


def _hyp(**over: float) -> dict:
    hyp = yaml.safe_load((ROOT / 'hyp' / 'hyp.scratch.p5.yaml').read_text())
    hyp.update(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mixup=0.0, degrees=5.0, shear=2.0)
    hyp.update(over)
    return hyp


@pytest.fixture(scope='module')
def dataset_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp('drawn'))


def _class_pixels(img_chw: torch.Tensor, cls: int) -> np.ndarray:
    """Mask of pixels that are clearly the colour of `cls` (interpolated edges excluded)."""
    rgb = img_chw.permute(1, 2, 0).numpy().astype(int)
    target = np.array(COLOURS[cls][::-1])
    return np.abs(rgb - target).max(-1) < 40


def _check_boxes_enclose_objects(img: torch.Tensor, labels: torch.Tensor) -> None:
    """Every object touching a box lies inside that class's boxes; unlabelled objects are ones the recipe drops."""
    h, w = img.shape[1:]
    xywh = labels[:, 2:].numpy()
    assert (xywh >= 0).all() and (xywh[:, :2] <= 1).all() and (xywh[:, 2:] > 0).all()
    for cls in range(3):
        covered = np.zeros((h, w), bool)
        pixels = _class_pixels(img, cls)
        for cx, cy, bw, bh in xywh[labels[:, 1].numpy() == cls]:
            x1, y1 = max(int(np.floor((cx - bw / 2) * w)) - 1, 0), max(int(np.floor((cy - bh / 2) * h)) - 1, 0)
            x2, y2 = int(np.ceil((cx + bw / 2) * w)) + 1, int(np.ceil((cy + bh / 2) * h)) + 1
            covered[y1:y2, x1:x2] = True
            assert pixels[y1:y2, x1:x2].any(), 'a box with none of its object'
        n, component = cv2.connectedComponents(pixels.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            ys, xs = np.nonzero(component == k)
            if covered[ys, xs].any():
                assert covered[ys, xs].all(), f'class {cls}: an object sticks out of its box'
            else:  # dropped by box_candidates: cut at the image edge, or thinner than 3 px
                edge = ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1
                thin = min(np.ptp(ys), np.ptp(xs)) < 3
                assert edge or thin, f'class {cls}: an unlabelled object in the middle of the image'


@pytest.mark.parametrize('mosaic,mosaic4_share,fliplr,perspective', [
    (1.0, 1.0, 0.5, 0.0), (1.0, 0.0, 0.5, 0.0), (0.0, 1.0, 0.5, 0.0), (1.0, 1.0, 0.0, 0.0005)])
def test_augmented_boxes_enclose_drawn_objects(dataset_list: Path, monkeypatch: pytest.MonkeyPatch, mosaic: float,
                                               mosaic4_share: float, fliplr: float, perspective: float) -> None:
    monkeypatch.setattr(datasets, 'MOSAIC4_SHARE', mosaic4_share)
    hyp = _hyp(mosaic=mosaic, fliplr=fliplr, flipud=0.5, perspective=perspective)
    ds = LoadImagesAndLabels(str(dataset_list), IMG, 2, augment=True, hyp=hyp, nc=3)
    random.seed(1)
    np.random.seed(1)
    n_labels = 0
    for _ in range(4):
        for i in range(len(ds)):
            img, labels, path, shapes = ds[i]
            assert img.shape == (3, IMG, IMG) and img.dtype == torch.uint8
            assert (shapes is None) == (mosaic == 1.0)
            _check_boxes_enclose_objects(img, labels)
            n_labels += len(labels)
    assert n_labels > 20  # the check above ran on real boxes


def test_mixup_concatenates_labels_and_blends(dataset_list: Path) -> None:
    ds = LoadImagesAndLabels(str(dataset_list), IMG, 2, augment=True, hyp=_hyp(mixup=1.0), nc=3)
    random.seed(0)
    np.random.seed(0)
    img, labels, _, _ = ds[0]
    values = np.unique(img.numpy())
    assert len(values) > 8  # blended grey levels, not only background, 114 and the three pure colours
    assert len(labels) >= 2


def test_seeded_samples_repeat(dataset_list: Path) -> None:
    ds = LoadImagesAndLabels(str(dataset_list), IMG, 2, augment=True, hyp=_hyp(mixup=0.5, hsv_v=0.4), nc=3)
    runs = []
    for _ in range(2):
        random.seed(3)
        np.random.seed(3)
        runs.append([ds[i] for i in range(len(ds))])
    for a, b in zip(*runs):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_collate_sets_batch_index(dataset_list: Path) -> None:
    ds = LoadImagesAndLabels(str(dataset_list), IMG, 3, augment=False, nc=3)
    batch = [ds[i] for i in range(3)]
    imgs, labels, paths, shapes = LoadImagesAndLabels.collate_fn(batch)
    assert imgs.shape == (3, 3, IMG, IMG)
    counts = [len(b[1]) for b in batch]
    assert labels[:, 0].tolist() == [i for i, c in enumerate(counts) for _ in range(c)]


def test_quad_collate_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(4)]
    labels = [torch.tensor([[0, float(i), 0.5, 0.5, 0.2, 0.4]]) for i in range(4)]
    batch = list(zip(imgs, labels, [f'{i}.jpg' for i in range(4)], [None] * 4))
    monkeypatch.setattr(datasets.random, 'random', lambda: 0.9)  # tile 2×2
    img4, lab4, paths, _ = LoadImagesAndLabels.collate_fn4([(a, b.clone(), c, d) for a, b, c, d in batch])
    assert img4.shape == (1, 3, 8, 8) and paths == ('0.jpg',)
    assert img4[0, 0, 0, 0] == 0 and img4[0, 0, 4, 0] == 1 and img4[0, 0, 0, 4] == 2 and img4[0, 0, 4, 4] == 3
    # image 1 below (cy + 1), 2 to the right (cx + 1), 3 both; then everything halved
    np.testing.assert_allclose(lab4[:, 2:].numpy(), [[.25, .25, .1, .2], [.25, .75, .1, .2], [.75, .25, .1, .2],
                                                     [.75, .75, .1, .2]])
    monkeypatch.setattr(datasets.random, 'random', lambda: 0.1)  # first image upsampled 2×
    img4, lab4, _, _ = LoadImagesAndLabels.collate_fn4([(a, b.clone(), c, d) for a, b, c, d in batch])
    assert img4.shape == (1, 3, 8, 8) and (img4 == 0).all()
    np.testing.assert_allclose(lab4.numpy(), [[0, 0, .5, .5, .2, .4]])
