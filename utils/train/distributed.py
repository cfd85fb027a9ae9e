"""torch.distributed set-up for training (the reference's train_step1.py): NCCL on GPUs, gloo on the CPU, env://
rendezvous.

Works under `torchrun` (single or multi-node: --nnodes/--node_rank/--rdzv_endpoint) and the reference's
`python -m torch.distributed.launch` (which passes --local_rank); each process trains on its local rank's entry of
--device. No launcher and several CUDA devices in --device (or '' on a machine with several): the training
command re-runs itself under `python -m torch.distributed.run --standalone`, one process per device (the
reference fell back to DataParallel; DDP is faster and is what the recipes were tuned with).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.cli import os_error_line
from utils.errors import UserError
from utils.torch_utils import DeviceError, device_spec
from utils.train.options import distributed_env

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global rank (-1 without DDP), local rank, world size, device."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Several processes train together."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """This process logs, validates and saves (rank 0, or the only process)."""
        return self.rank in (-1, 0)


def init_distributed(rank: int, local_rank: int, world_size: int, device: torch.device) -> DistContext:
    """Join the process group when launched with several processes; returns this process's context."""
    if world_size > 1:
        if device.type == 'cuda':  # select_device already took this local rank's entry of --device
            torch.cuda.set_device(device)
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method='env://', timeout=timedelta(minutes=30))
        LOGGER.info(f'DDP: rank {rank}/{world_size}, local rank {local_rank}, {backend} on {device}')
    return DistContext(rank, local_rank, world_size, device)


def all_ranks_agree(flag: bool, ctx: DistContext) -> bool:
    """True only when the flag is true on every rank (one tiny all-reduce under DDP)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=ctx.device)
    dist.all_reduce(t)
    return bool(t.item() == 0)


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's decision (e.g. early stop) on every rank."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_error(message: str | None, ctx: DistContext) -> str | None:
    """Rank 0's error message (None: no error) on every rank, so that all ranks stop together with the same line
    instead of the others waiting in their next collective for the process group's timeout."""
    if not ctx.distributed:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def error_line(e: BaseException) -> str:
    """The one line the other ranks print for rank 0's failure: run_cli's for a user or file-system error, else
    its type and first line (rank 0 shows the traceback of a bug)."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError):
        return os_error_line(e)
    if isinstance(e, KeyboardInterrupt):
        return 'rank 0 was interrupted (Ctrl-C)'
    first = str(e).splitlines()[0] if str(e) else ''
    return f'rank 0 failed with {type(e).__name__}{": " + first if first else ""}; its traceback shows where'


def share_failure(error: BaseException | None, ctx: DistContext) -> str | None:
    """Called on every rank where the others wait for rank 0: rank 0's failure (None: none) as one line on every
    rank, so that all stop together with it instead of waiting in their next collective for the process group's
    timeout. Rank 0 gets its own line back even when the others are already gone."""
    line = None if error is None else error_line(error)
    try:
        return broadcast_error(line, ctx)
    except Exception:
        if error is None:
            raise
        return line  # the others were ended already (e.g. by the launcher): rank 0 still stops with its own error


def wants_sync_bn(requested: bool, ctx: DistContext) -> bool:
    """Whether --sync-bn converts BatchNorm to SyncBatchNorm here: only under DDP on CUDA devices, as in the
    reference (torch's SyncBatchNorm runs on GPUs only); elsewhere the flag is ignored with one warning."""
    if not requested:
        return False
    if ctx.distributed and ctx.device.type == 'cuda':
        return True
    where = 'one process' if not ctx.distributed else f'{ctx.device.type} ranks'
    LOGGER.warning(f'WARNING: --sync-bn ignored: SyncBatchNorm needs DDP on CUDA devices, this run has {where}; '
                   'each rank keeps its own BatchNorm statistics')
    return False


def cleanup(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class LaunchError(UserError, RuntimeError):
    """The DDP processes started for a multi-device --device ended with an error (theirs is printed above)."""


def torchrun_command(script: str, argv: list[str], device: str, cuda_count: int, launched: bool,
                     batch_size: int) -> list[str] | None:
    """The command that re-runs a training script under torch.distributed.run with one process per CUDA device in
    --device (every device for '' when there are several), or None when this process should train alone: a
    launcher started it, --device is the CPU or one device, or the machine has no CUDA device."""
    spec = device_spec(device)
    if launched or cuda_count < 1 or spec == 'cpu':
        return None
    devices = cuda_count if spec == '' else len(spec.split(','))
    if devices < 2:
        return None
    if batch_size % devices:
        raise DeviceError(f'--batch-size {batch_size} is not a multiple of the {devices} devices that would train '
                          f'(--device {device or "(every device)"})')
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(devices),
            script, *argv]


def per_device(train: Callable, script: str, argv: list[str]) -> Callable:
    """train, or, for a multi-device --device without a launcher, the same command re-run as DDP processes."""
    def run(opt):
        launcher = argparse.Namespace(local_rank=opt.local_rank)  # what torchrun / torch.distributed.launch set
        distributed_env(launcher)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        launched = launcher.world_size > 1 or launcher.local_rank >= 0
        command = torchrun_command(script, argv, opt.device, count, launched, opt.batch_size)
        if command is None:
            return train(opt)
        LOGGER.info(f'--device {opt.device or "(every device)"}: one DDP process per device:\n  {shlex.join(command)}')
        code = subprocess.call(command)
        if code:
            raise LaunchError(f'the DDP processes ended with exit code {code} (their messages are above)')
        return None
    return run
