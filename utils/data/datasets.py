"""The detection dataset: images and YOLO labels, evaluation letterboxing and the training recipe (the reference's
utils/datasets.py).

`LoadImagesAndLabels` keeps the reference's name, constructor arguments and sample format
(uint8 CHW tensor, labels (n, 6) `[batch index, class, cx, cy, w, h]`, path, shapes). Images stay uint8 until
the tensor is made. Extensions: `nc` (class ids ≥ nc dropped at scan time with a warning), and an image that
fails to decode after the scan is replaced by the next image with a warning instead of killing the worker.
"""
from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from utils.data.augmentations import augment_hsv, mixup, random_flips, random_perspective
from utils.data.data_config import list_image_files
from utils.data.label_cache import (
    DatasetError,
    cache_path_for,
    dataset_hash,
    load_cache,
    log_scan,
    save_cache,
    scan_dataset,
)
from utils.data.labels import img2label_paths
from utils.data.letterbox import letterbox, rect_batch_shapes, resize_to_fit
from utils.data.mosaic import load_mosaic, load_mosaic9, mosaic4_canvas
from utils.data.paste_in import collect_samples, paste_in
from utils.data.sampling import WeightedDraw
from utils.general import xywhn2xyxy, xyxy2xywhn

LOGGER = logging.getLogger(__name__)
MOSAIC4_SHARE = 0.8  # of mosaics: the rest are 9-image mosaics
PASTE_IN_SAMPLES = 30
DECODE_THREADS = min(4, os.cpu_count() or 1)  # JPEG decoding releases the GIL: mosaic tiles decode together


class ImageLoadError(OSError):
    """An image that passed the scan but cannot be decoded now (moved, rewritten)."""


def read_image(path: str) -> np.ndarray:
    """BGR uint8 image (EXIF orientation applied); ImageLoadError naming the file when it cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also reads non-ASCII paths
    except OSError as e:
        raise ImageLoadError(f'{path}: cannot be read ({e.strerror})') from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageLoadError(f'{path}: cannot be decoded as an image')
    return img


def read_letterboxed(path: str, shape: int | tuple[int, int]) -> np.ndarray:
    """The image at path as the evaluation loader (not augmented, rect=False) feeds it: BGR uint8, letterboxed to shape."""
    # LoadImagesAndLabels.load_image then _letterboxed, without the dataset: calibration must see these pixels
    return letterbox(resize_to_fit(read_image(path), shape), shape, auto=False, scaleup=False)[0]


class LoadImagesAndLabels(Dataset):
    """Images and labels of one split, with evaluation letterboxing or the training augmentation recipe."""

    def __init__(self, path: str | list[str], img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, image_weights: bool = False,
                 cache_images: bool = False, single_cls: bool = False, stride: int = 32, pad: float = 0.0,
                 prefix: str = '', nc: int | None = None, own_shapes: bool = False) -> None:
        self.img_size, self.augment, self.hyp = img_size, augment, hyp or {}
        self.image_weights, self.stride, self.prefix = image_weights, stride, prefix
        self.rect = False if image_weights else rect
        self.mosaic = self.augment and not self.rect  # mosaic needs square images of one size
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        paths = path if isinstance(path, (list, tuple)) else [path]
        # single_cls: every class becomes 0, so none is out of range (the reference keeps every row)
        self._read_labels(paths, None if single_cls else nc, prefix)
        if single_cls:
            for x in self.labels:
                x[:, 0] = 0
        n = len(self.img_files)
        self.batch = np.floor(np.arange(n) / batch_size).astype(int)
        self.indices = list(range(n))
        self._partners: list[int] = []  # mosaic partners still to use from the current WeightedDraw
        self._image_weights: torch.Tensor | None = None  # --image-weights: the sampler's weights, shared with workers
        if self.rect:  # own_shapes: each image its batch-1 shape (batches then group equal shapes: same_shape_batches)
            self._sort_for_rect(1 if own_shapes else batch_size, img_size, stride, pad)
            if own_shapes:
                self.batch = np.arange(n)
        self.imgs: list[np.ndarray | None] = [None] * n
        self.img_hw0: list[tuple[int, int] | None] = [None] * n
        self.img_hw: list[tuple[int, int] | None] = [None] * n
        self._decode_pool: ThreadPoolExecutor | None = None
        if cache_images:
            self._cache_images()

    def _read_labels(self, paths: list[str], nc: int | None, prefix: str) -> None:
        img_files = list_image_files(paths)
        label_files = img2label_paths(img_files)
        cache_path = cache_path_for(paths, label_files)
        digest = dataset_hash(img_files, label_files, nc)
        scan = load_cache(cache_path, digest)
        from_cache = scan is not None
        if scan is None:
            scan = scan_dataset(img_files, label_files, nc, desc=f'{prefix}Scanning {cache_path.with_suffix("")}')
            save_cache(cache_path, scan, digest)
        log_scan(scan, str(cache_path.with_suffix('')), prefix, from_cache)
        if not scan.files:
            raise DatasetError(f'{prefix}no usable images in {", ".join(paths)}: all {len(img_files)} are corrupt '
                               f'(see the warnings above)')
        if self.augment and not any(len(x) for x in scan.labels):
            raise DatasetError(f'{prefix}no labels found in {", ".join(paths)}; training needs labels in the '
                               f'labels/ folder beside images/ (see docs/datasets.md)')
        self.img_files, self.labels, self.segments = scan.files, scan.labels, scan.segments
        self.shapes = scan.shapes.astype(np.float64)  # (w, h) per image
        self.label_files = img2label_paths(self.img_files)
        self.has_segments = any(len(x) for x in self.segments)
        self.scan_counts = scan.counts

    def _sort_for_rect(self, batch_size: int, img_size: int, stride: int, pad: float) -> None:
        aspect = self.shapes[:, 1] / self.shapes[:, 0]
        order = aspect.argsort()
        for name in ('img_files', 'label_files', 'labels', 'segments'):
            items = getattr(self, name)
            setattr(self, name, [items[i] for i in order])
        self.shapes = self.shapes[order]
        self.batch_shapes = rect_batch_shapes(aspect[order], batch_size, img_size, stride, pad)

    def same_shape_batches(self, batch_size: int) -> list[list[int]]:
        """Batches of up to batch_size consecutive images of one own (batch-1) rect shape, in the sorted order: no
        image is padded to another's shape, so its input, and a dynamic model's route, are those of batch 1."""
        shapes = [tuple(self.batch_shapes[b]) for b in self.batch]
        batches: list[list[int]] = []
        for i, shape in enumerate(shapes):
            if batches and len(batches[-1]) < batch_size and shapes[batches[-1][0]] == shape:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def _cache_images(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            for i, (img, hw0, hw) in enumerate(pool.map(self._read_resized, range(len(self)))):
                self.imgs[i], self.img_hw0[i], self.img_hw[i] = img, hw0, hw
        gb = sum(x.nbytes for x in self.imgs) / 1e9
        LOGGER.info(f'{self.prefix}Cached {len(self)} images in RAM ({gb:.1f} GB)')

    def __len__(self) -> int:
        return len(self.img_files)

    def _read_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        img = read_image(self.img_files[index])
        resized = resize_to_fit(img, self.img_size, self.augment)
        return resized, img.shape[:2], resized.shape[:2]

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image with its long side resized to img_size, its original (h0, w0) and resized (h, w)."""
        if self.imgs[index] is not None:
            return self.imgs[index], self.img_hw0[index], self.img_hw[index]
        return self._read_resized(index)

    def load_images(self, indices: list[int]) -> list[tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
        """load_image for several indices; decoded in parallel threads when not inside a loader worker."""
        if len(indices) < 2 or get_worker_info() is not None or DECODE_THREADS < 2:
            return [self.load_image(i) for i in indices]  # loader workers already use every core
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(DECODE_THREADS)
        return list(self._decode_pool.map(self.load_image, indices))

    def share_image_weights(self) -> torch.Tensor:
        """The shared-memory tensor the image-weight sampler writes each epoch's weights into (loader workers see it)."""
        if self._image_weights is None:
            self._image_weights = torch.ones(len(self), dtype=torch.float64).share_memory_()
        return self._image_weights

    def draw_partners(self, k: int) -> list[int]:
        """k mosaic partners: the ones the image-weight sampler drew for this sample; once those are used (paste-in
        builds more mosaics), drawn by the same image weights, as the reference draws from its weighted
        `dataset.indices`; without --image-weights, uniform."""
        if len(self._partners) >= k:
            taken, self._partners = self._partners[:k], self._partners[k:]
            return taken
        if self._image_weights is not None:  # random.choices' rule (bisect on the cumulative weights), in numpy:
            cum = np.cumsum(self._image_weights.numpy())  # no list of n Python floats per mosaic
            picks = np.searchsorted(cum, [random.random() * cum[-1] for _ in range(k)], side='right')
            return [self.indices[i] for i in np.minimum(picks, len(cum) - 1)]
        return random.choices(self.indices, k=k)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_decode_pool'] = None  # threads do not cross into worker processes
        return state

    def __getitem__(self, index: int | WeightedDraw) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        # --image-weights: the sampler drew this sample's mosaic partners too; any other sample draws its own
        self._partners = list(index.partners) if isinstance(index, WeightedDraw) else []
        index = index.index if isinstance(index, WeightedDraw) else self.indices[index]
        for attempt in range(len(self)):
            try:
                return self._sample(index)
            except ImageLoadError as e:  # vanished since the scan: warn and train on, never kill the worker
                LOGGER.warning(f'{self.prefix}WARNING: {e}; using the next image instead')
                index = (index + 1) % len(self)
        raise DatasetError(f'{self.prefix}no image of this split can be read any more')

    def _sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        hyp = self.hyp
        use_mosaic = self.mosaic and random.random() < hyp['mosaic']
        if use_mosaic:
            img, labels = self._mosaic(index)
            shapes = None
            if random.random() < hyp['mixup']:
                img, labels = mixup(img, labels, *self._mosaic(random.randint(0, len(self) - 1)))
        else:
            img, labels, shapes = self._letterboxed(index)
        if self.augment:
            img, labels = self._augment(img, labels, perspective=not use_mosaic)
        labels = labels.astype(np.float32, copy=False)
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], img.shape[1], img.shape[0])
        if self.augment:
            img, labels = random_flips(img, labels, hyp['flipud'], hyp['fliplr'])
        labels_out = torch.zeros((len(labels), 6))
        if len(labels):
            labels_out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img.transpose(2, 0, 1)[::-1])  # HWC BGR → CHW RGB, one copy
        return torch.from_numpy(img), labels_out, self.img_files[index], shapes

    def _mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return load_mosaic(self, index) if random.random() < MOSAIC4_SHARE else load_mosaic9(self, index)

    def _letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        labels = self.labels[index].copy()
        if labels.size:
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        return img, labels, ((h0, w0), ((h / h0, w / w0), pad))

    def _augment(self, img: np.ndarray, labels: np.ndarray, perspective: bool) -> tuple[np.ndarray, np.ndarray]:
        hyp = self.hyp
        if perspective:
            img, labels = random_perspective(img, labels, degrees=hyp['degrees'], translate=hyp['translate'],
                                             scale=hyp['scale'], shear=hyp['shear'], perspective=hyp['perspective'])
        augment_hsv(img, hgain=hyp['hsv_h'], sgain=hyp['hsv_s'], vgain=hyp['hsv_v'])
        # without any polygon in the dataset paste-in harvests nothing: skip building its mosaic (4 decodes)
        if random.random() < hyp.get('paste_in', 0.0) and self.has_segments:
            classes, crops, masks = collect_samples(self._paste_in_mosaic, PASTE_IN_SAMPLES)
            labels = paste_in(img, labels, classes, crops, masks)
        return img, labels

    def _paste_in_mosaic(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        return mosaic4_canvas(self, random.randint(0, len(self) - 1))

    @staticmethod
    def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """Stack images; label rows get their image's index in the batch in column 0."""
        img, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(img, 0), torch.cat(label, 0), path, shapes

    @staticmethod
    def collate_fn4(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """--quad: every 4 samples become one image, 2× upsampled first image or a 2×2 tile (p 0.5 each)."""
        img, label, path, shapes = zip(*batch)
        n = len(shapes) // 4
        img4, label4 = [], []
        ho, wo, s = torch.tensor([[0., 0, 0, 1, 0, 0]]), torch.tensor([[0., 0, 1, 0, 0, 0]]), \
            torch.tensor([[1, 1, .5, .5, .5, .5]])
        for i in range(n):
            j = i * 4
            if random.random() < 0.5:
                im = torch.nn.functional.interpolate(img[j].unsqueeze(0).float(), scale_factor=2.0,
                                                     mode='bilinear', align_corners=False)[0].type(img[j].type())
                lb = label[j]
            else:
                im = torch.cat((torch.cat((img[j], img[j + 1]), 1), torch.cat((img[j + 2], img[j + 3]), 1)), 2)
                lb = torch.cat((label[j], label[j + 1] + ho, label[j + 2] + wo, label[j + 3] + ho + wo), 0) * s
            img4.append(im)
            label4.append(lb)
        for i, lb in enumerate(label4):
            lb[:, 0] = i
        return torch.stack(img4, 0), torch.cat(label4, 0), path[:n * 4:4], shapes[:n * 4:4]
