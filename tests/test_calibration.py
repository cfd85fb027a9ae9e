"""Calibration images for int8 export: the same pixels the evaluation loader feeds an exported model."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from tests.helpers import random_image
from utils.data.calibration import calibration_images
from utils.data.dataloaders import create_dataloader

SIZES_WH = [(200, 150), (150, 200), (97, 61), (40, 30)]  # larger than the export size but the last (enlarged)


def _data_yaml(folder: Path) -> Path:
    for i, (w, h) in enumerate(SIZES_WH):
        random_image(folder / 'images' / f'im{i}.png', w=w, h=h, seed=i)
    path = folder / 'data.yaml'
    path.write_text(yaml.safe_dump({'train': 'images', 'val': 'images', 'nc': 1, 'names': ['a']}))
    return path


def test_calibration_images_match_the_evaluation_loader(tmp_path: Path) -> None:
    data = _data_yaml(tmp_path)
    images, _ = calibration_images(str(data), (64, 64), len(SIZES_WH))
    # as utils/evaluation/validator.py::split_loader builds it for an exported (fixed-size) model
    loader, _ = create_dataloader(str(tmp_path / 'images'), 64, 1, 32, pad=0.5, rect=False, workers=0)
    expected, paths = [], []
    for imgs, _, batch_paths, _ in loader:
        expected.append((imgs.to(torch.float32) / 255.0).numpy())  # validator's _run_batch: input / 255
        paths += batch_paths
    assert [Path(p).name for p in paths] == sorted(f'im{i}.png' for i in range(len(SIZES_WH)))
    assert len(images) == len(expected)
    for got, want, path in zip(images, expected, paths):
        assert got.dtype == np.float32 and got.shape == want.shape == (1, 3, 64, 64), path
        np.testing.assert_array_equal(got, want, err_msg=path)


def test_calibration_images_fit_non_square_shapes(tmp_path: Path) -> None:
    data = _data_yaml(tmp_path)
    images, _ = calibration_images(str(data), (48, 64), len(SIZES_WH))
    assert [x.shape for x in images] == [(1, 3, 48, 64)] * len(SIZES_WH)
    # 200x150 scales by min(48/150, 64/200) = 0.32 to exactly 64x48: no padding, INTER_AREA as when evaluating
    img = cv2.imread(str(tmp_path / 'images' / 'im0.png'))
    want = cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(images[0], want.astype(np.float32) / 255.0)
