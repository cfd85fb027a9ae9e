"""Batch mosaics: tiles in a grid, boxes where the targets say, low-confidence predictions left out."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from utils.detection.drawing import class_colours
from utils.evaluation.batch_plots import plot_batch, targets_to_boxes


def test_targets_to_boxes_converts_centre_rows_per_image() -> None:
    targets = torch.tensor([[0, 2, 50, 40, 20, 10], [1, 0, 10, 10, 4, 6], [0, 1, 5, 5, 2, 2]], dtype=torch.float)
    boxes = targets_to_boxes(targets, 3)
    np.testing.assert_allclose(boxes[0], [[40, 35, 60, 45, 1, 2], [4, 4, 6, 6, 1, 1]])
    np.testing.assert_allclose(boxes[1], [[8, 7, 12, 13, 1, 0]])
    assert boxes[2].shape == (0, 6)


def test_plot_batch_grid_and_boxes(tmp_path: Path) -> None:
    images = torch.full((3, 3, 100, 120), 0.5)  # grey 0–1 floats
    boxes = [np.array([[20, 30, 80, 70, 1.0, 1]]), np.zeros((0, 6)), np.array([[10, 10, 50, 50, 0.1, 0]])]
    path = plot_batch(images, boxes, ['a.jpg', 'b.jpg', 'c.jpg'], ['cat', 'dog'], tmp_path / 'p.jpg', labels=False)
    mosaic = cv2.imread(str(path))
    assert mosaic.shape == (200, 240, 3)  # 3 images → a 2×2 grid of 100×120 tiles
    colour = np.array(class_colours(2, seed=0)[1])
    assert np.abs(mosaic[50, 20].astype(int) - colour).max() < 40  # left edge of the dog box (conf 1.0)
    tile3 = mosaic[100:200, 0:120]
    assert np.abs(tile3[30, 10].astype(int) - 128).max() < 10  # conf 0.1 < 0.25: not drawn
    assert (mosaic[100:200, 125:240] > 240).all()  # the empty fourth cell stays white (JPEG ringing aside)
