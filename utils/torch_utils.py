"""Device selection and timing helpers shared by the scripts."""
from __future__ import annotations

import contextlib
import logging
import os
import time

import torch
from torch import nn

from utils.errors import UserError

LOGGER = logging.getLogger(__name__)


class DeviceError(UserError, ValueError):
    """A --device value that this machine cannot honour; one-line message."""


def device_spec(device: str) -> str:
    """A --device value normalised: lower case, no spaces, no 'cuda:' prefixes ('' | 'cpu' | '0' | '0,1', ...)."""
    return str(device).strip().lower().replace('cuda:', '').replace(' ', '')


def cuda_index_for_rank(ids: list[int], local_rank: int) -> int:
    """The CUDA device a process takes: its local rank's entry of the --device list (the reference restricts
    CUDA_VISIBLE_DEVICES to that list, then takes cuda:LOCAL_RANK); the first entry without a launcher."""
    if local_rank < 0:
        return ids[0]
    if local_rank >= len(ids):
        raise DeviceError(f'local rank {local_rank} has no device: --device lists {len(ids)} '
                          f'({",".join(map(str, ids))}); start at most that many processes per node')
    return ids[local_rank]


def select_device(device: str = '', batch_size: int | None = None) -> torch.device:
    """Parse a --device value ('', 'cpu', '0', '0,1,2,3') into the torch.device this process uses.

    '' picks cuda:0 when CUDA is available (cuda:LOCAL_RANK under a launcher), else the CPU; a list gives each
    launched process its local rank's entry. A CUDA index on a machine without CUDA, or an index that does not
    exist, is a DeviceError (the reference silently fell back or crashed later).
    """
    spec = device_spec(device)
    if spec == 'cpu' or (spec == '' and not torch.cuda.is_available()):
        return torch.device('cpu')
    local_rank = int(os.environ.get('LOCAL_RANK', -1))
    if spec == '':
        return torch.device('cuda', cuda_index_for_rank(list(range(torch.cuda.device_count())), local_rank))
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
    return torch.device('cuda', cuda_index_for_rank([int(i) for i in ids], local_rank))


BF16_MODES = ('all', 'keep-routes')  # --bf16 [MODE]: every backbone, or all but backbone 1 (fp32's routes)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def amp_dtype(device: torch.device, disabled: bool = False, forced: bool = False) -> torch.dtype | None:
    """Training autocast type: float16 on CUDA (the reference's AMP; `disabled`: --no-amp for fp32); on the CPU
    fp32 (None), the reference's arithmetic and the same on every CPU, unless `forced` (--amp: bfloat16 autocast,
    an extension). It used to default to bfloat16 where the CPU computes it natively, so one command trained
    differently on different CPUs."""
    if disabled:
        return None
    if device.type == 'cuda':
        return torch.float16
    return torch.bfloat16 if device.type == 'cpu' and forced else None


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


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside a DataParallel / DistributedDataParallel wrapper (the model itself otherwise)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model
