"""Preparing a model for inference: fused, eval mode, chosen device, dtype and memory layout."""
from __future__ import annotations

import torch

from .yolo import Model


def prepare_for_inference(model: Model, device: torch.device | str = 'cpu', half: bool = False,
                          channels_last: bool = True) -> Model:
    """Fuse (idempotent), switch to eval, move to `device`; fp16 only on CUDA; channels_last layout.

    The chosen input dtype and layout are recorded on the model for prepare_input().
    """
    device = torch.device(device)
    model = model.fuse().eval().to(device)
    if half and device.type == 'cuda':
        model = model.half()
    model.input_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=model.input_format)


def prepare_input(images: torch.Tensor, model: Model) -> torch.Tensor:
    """Move a (B, C, H, W) batch to the model's device, dtype and memory layout."""
    param = model.model_h2[-1].m[0].weight
    fmt = getattr(model, 'input_format', torch.contiguous_format)
    return images.to(param.device, param.dtype, non_blocking=True).contiguous(memory_format=fmt)
