"""torch.distributed set-up for training (the reference's train_step1.py): NCCL on GPUs, gloo on the CPU, env://
rendezvous.

Works under `torchrun` (single or multi-node: --nnodes/--node_rank/--rdzv_endpoint) and the reference's
`python -m torch.distributed.launch` (which passes --local_rank). No launcher: a single process.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

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
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
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


def cleanup(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
