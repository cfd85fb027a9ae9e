"""Calibration images for post-training quantization: letterboxed (not augmented) images of a data YAML's split."""
from __future__ import annotations

import logging

import numpy as np

from utils.data.data_config import DataConfigError, list_image_files, load_data_config
from utils.data.datasets import ImageLoadError, read_letterboxed

LOGGER = logging.getLogger(__name__)


def calibration_images(data: str, img_size: tuple[int, int], count: int, split: str = 'train'
                       ) -> tuple[list[np.ndarray], str]:
    """Up to `count` images of data's split, evenly spaced over its sorted file list (the same ones on every run),
    each resized and letterboxed to img_size (h, w) by test.py's loader's rule (read_letterboxed): ((1, 3, h, w)
    float32 RGB in [0, 1] arrays, a description). An unreadable image is warned about and skipped."""
    files = list_image_files(load_data_config(data, required=(split,))[split])
    if not files:
        raise DataConfigError(f'{data}: the {split} split has no images to calibrate on')
    picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    images = []
    for i in picks:
        try:
            boxed = read_letterboxed(files[i], tuple(img_size))
        except ImageLoadError as e:
            LOGGER.warning(f'WARNING: calibration image skipped: {e}')
            continue
        rgb = np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1))
        images.append(rgb[None].astype(np.float32) / 255.0)
    if not images:
        raise DataConfigError(f'{data}: none of the {len(picks)} {split} images picked for calibration could be read')
    return images, f'{len(images)} of {len(files)} {split} images of {data}, evenly spaced, letterboxed'
