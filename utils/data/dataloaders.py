"""Loader creation for one process or DDP ranks (the reference's utils/datasets.py).

Faithful: the dataset arguments, batch = min(batch, dataset size), the worker count rule, a shuffled
`DistributedSampler` under DDP and sequential order otherwise, pinned memory, worker reuse across epochs.
Extensions: workers are reused with PyTorch's `persistent_workers` (the reference patched an infinite batch
sampler); a loader-owned generator seeds the workers (`seed + rank`) so a run repeats regardless of what the
model drew from torch's global RNG; image weights are drawn by a sampler in the main process.
"""
from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler

from utils.data.datasets import LoadImagesAndLabels
from utils.data.sampling import ImageWeightSampler
from utils.torch_utils import torch_distributed_zero_first

LOGGER = logging.getLogger(__name__)


def worker_count(batch_size: int, world_size: int, workers: int) -> int:
    """min(cpu count // world size, batch size if > 1 else 0, --workers): batch 1 loads in the main process."""
    return max(0, min((os.cpu_count() or 1) // max(world_size, 1), batch_size if batch_size > 1 else 0, workers))


def create_dataloader(path: str | list[str], imgsz: int, batch_size: int, stride: int, opt=None,
                      hyp: dict | None = None, augment: bool = False, cache: bool = False, pad: float = 0.0,
                      rect: bool = False, rank: int = -1, world_size: int = 1, workers: int = 8,
                      image_weights: bool = False, quad: bool = False, prefix: str = '', nc: int | None = None,
                      seed: int = 0, own_shapes: bool = False) -> tuple[DataLoader, LoadImagesAndLabels]:
    """(loader, dataset) with the reference's arguments; `opt` is only read for `single_cls`. own_shapes (rect,
    one process; extension): every image letterboxed to its batch-1 shape and batches made of images of one shape,
    so that a dynamic model routes each image as at batch 1 (the reference's rect batches pad every image to its
    batch's shape, which moves the router's pooled features)."""
    # --rect under DDP (fix: the reference's shuffling DistributedSampler mixed rect shapes in a batch, which
    # cannot be stacked): shapes are made per global batch (batch × world size) and each rank takes every
    # world_size-th image in order, so each rank's batch lies inside one global batch; the last images that do
    # not fill every rank are left out, as drop_last does.
    rect_ddp = rect and rank != -1 and not image_weights
    own_shapes = own_shapes and rect and rank == -1
    with torch_distributed_zero_first(rank):  # rank 0 writes the label cache, the others then read it
        dataset = LoadImagesAndLabels(path, imgsz, batch_size * (world_size if rect_ddp else 1), augment=augment,
                                      hyp=hyp, rect=rect,
                                      cache_images=cache, single_cls=bool(getattr(opt, 'single_cls', False)),
                                      stride=int(stride), pad=pad, image_weights=image_weights, prefix=prefix,
                                      nc=nc, own_shapes=own_shapes)
    batch_size = min(batch_size, len(dataset))
    nw = worker_count(batch_size, world_size, workers)
    if image_weights:
        sampler = ImageWeightSampler(len(dataset), rank, world_size, seed, shared=dataset.share_image_weights())
    elif rank != -1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=seed, shuffle=not rect_ddp,
                                     drop_last=rect_ddp)
    else:
        sampler = None
    # own shapes (one process, no sampler): batches of up to batch_size images of one shape
    batching = {'batch_sampler': dataset.same_shape_batches(batch_size)} if own_shapes and dataset.rect else \
        {'batch_size': batch_size, 'sampler': sampler}
    generator = torch.Generator().manual_seed(seed + max(rank, 0))
    loader = DataLoader(dataset, num_workers=nw, pin_memory=torch.cuda.is_available(), persistent_workers=nw > 0,
                        generator=generator,
                        collate_fn=LoadImagesAndLabels.collate_fn4 if quad else LoadImagesAndLabels.collate_fn,
                        **batching)
    return loader, dataset
