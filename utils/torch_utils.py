"""Device selection and timing helpers shared by the scripts."""
from __future__ import annotations

import contextlib
import logging
import os
import time

import torch

LOGGER = logging.getLogger(__name__)


class DeviceError(ValueError):
    """A --device value that this machine cannot honour; one-line message."""


def select_device(device: str = '', batch_size: int | None = None) -> torch.device:
    """Parse a --device value ('', 'cpu', '0', '0,1,2,3') into the torch.device this process uses.

    '' picks cuda:0 when CUDA is available, else the CPU. A CUDA index on a machine without CUDA, or an index
    that does not exist, is a DeviceError (the reference silently fell back or crashed later).
    """
    spec = str(device).strip().lower().replace('cuda:', '').replace(' ', '')
    if spec == 'cpu':
        return torch.device('cpu')
    if spec == '':
        return torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
    ids = spec.split(',')
    if not all(i.isdigit() for i in ids):
        raise DeviceError(f"--device {device!r}: use 'cpu', a CUDA index such as 0, or a list such as 0,1,2,3")
    if not torch.cuda.is_available():
        raise DeviceError(f'--device {device}: CUDA is not available on this machine; use --device cpu')
    count = torch.cuda.device_count()
    missing = [i for i in ids if int(i) >= count]
    if missing:
        raise DeviceError(f'--device {device}: no CUDA device {",".join(missing)} (this machine has {count})')
    if batch_size and len(ids) > 1 and batch_size % len(ids):
        raise DeviceError(f'--batch-size {batch_size} is not a multiple of the {len(ids)} devices in --device {device}')
    local_rank = int(os.environ.get('LOCAL_RANK', -1))
    return torch.device(f'cuda:{ids[local_rank] if 0 <= local_rank < len(ids) else ids[0]}')


def time_sync(device: torch.device | None = None) -> float:
    """perf_counter after the device has finished its queued work."""
    if device is not None and device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def torch_distributed_zero_first(local_rank: int):
    """Rank 0 runs the block first (e.g. builds the label cache) while the other ranks wait, then they run it."""
    distributed = local_rank != -1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and local_rank != 0:
        torch.distributed.barrier()
    yield
    if distributed and local_rank == 0:
        torch.distributed.barrier()
