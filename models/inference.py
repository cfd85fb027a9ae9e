"""Preparing a model for inference: fused, eval mode, chosen device, dtype and memory layout."""
from __future__ import annotations

import logging

import torch

from utils.cpu_memory import retain_freed_memory

from .cpu_kernels import pack_convolutions
from .yolo import Model

LOGGER = logging.getLogger(__name__)

# On the CPU, batches run in chunks of at most this many pixels (one 640x640 image, four at 320): whole batches
# of Dy-YOLOv7 at 640 ran 2.7x (easy) / 2.9x (hard) slower per image at batch 8 than image by image on 2 cores,
# with as much system time as user time (large activations mapped and page-faulted afresh on every call).
CPU_CHUNK_PIXELS = 640 * 640


def prepare_for_inference(model: Model, device: torch.device | str = 'cpu', half: bool = False,
                          channels_last: bool = True, bf16: bool = False, packed: bool = True,
                          retain_memory: bool = True) -> Model:
    """Fuse (idempotent), switch to eval, move to `device`; fp16 only on CUDA; channels_last layout; `bf16`
    (extension, CPU): backbones and necks in bfloat16, the router and the two detection heads in fp32; `packed`
    (extension, CPU): convolutions with oneDNN weights packed once and SiLU fused (models.cpu_kernels). On the CPU
    `retain_memory` (extension) makes glibc malloc keep freed memory for reuse, process-wide (utils.cpu_memory: no
    page faults on every forward pass; the process keeps its peak memory).

    The chosen input dtype and layout are recorded on the model for prepare_input(); on the CPU, batches run in
    chunks of CPU_CHUNK_PIXELS.
    """
    device = torch.device(device)
    model = model.fuse().eval().to(device)
    if half and device.type == 'cuda':
        model = model.half()
    elif bf16:
        model = model.to(torch.bfloat16)
        for part in ([model.router] if model.dynamic else []) + [model.model_h[-1], model.model_h2[-1]]:
            part.float()
    model.input_format = torch.channels_last if channels_last else torch.contiguous_format
    model.chunk_pixels = CPU_CHUNK_PIXELS if device.type == 'cpu' else 0
    model = model.to(memory_format=model.input_format)
    if device.type == 'cpu' and retain_memory:
        retain_freed_memory()
    if device.type == 'cpu' and packed:
        pack_convolutions(model)
    return model


def prepare_input(images: torch.Tensor, model: Model) -> torch.Tensor:
    """Move a (B, C, H, W) batch to the model's device, dtype (its first layer's) and memory layout."""
    param = next(model.model_b.parameters())
    fmt = getattr(model, 'input_format', torch.contiguous_format)
    return images.to(param.device, param.dtype, non_blocking=True).contiguous(memory_format=fmt)


PATH_STAGES = ('_backbone', '_easy', '_hard')  # backbone 1 + router, head 1, backbone 2 + head 2


def compile_paths(model: Model, mode: str = 'default') -> Model:
    """torch.compile the three stages of the routed forward (backbone 1 + router, head 1, backbone 2 + head 2),
    each one graph with a dynamic batch axis; the per-image routing between them stays eager Python. Compiled
    callables live on the instance: parameters and state_dict keys are unchanged.

    mode 'reduce-overhead' also records each stage as CUDA graphs on a GPU (one per batch size met: the hard
    subset's size varies with the routing), replayed without per-kernel launch cost; on the CPU it compiles as
    'default'."""
    for name in PATH_STAGES:
        setattr(model, name, torch.compile(getattr(model, name), dynamic=True, mode=mode))
    return model


def load_for_inference(cfg: str, weights: str, nc: int, device: torch.device | str = 'cpu',
                       compile: str | None = None, bf16: bool = False) -> Model:
    """Model from a config with a checkpoint loaded strictly (weights_only), float, fused, eval, no gradients;
    `compile` (extension, --compile MODE) compiles the three stages of the routed forward in that torch.compile mode;
    `bf16` (extension, --bf16) runs the backbones in bfloat16 on the CPU (ignored with a warning on CUDA: fp16 there).

    Raises ConfigError / CheckpointError with one-line messages for a missing or mismatched cfg or checkpoint.
    """
    from .checkpoint import CheckpointError, load_weights
    from .graph import ConfigError
    if not cfg:
        raise ConfigError('--cfg is required, e.g. --cfg cfg/dy-yolov7-step2.yaml')
    if not weights:
        raise CheckpointError('--weight is required: the checkpoint to use, e.g. --weight weights/dy-yolov7.pt')
    device = torch.device(device)
    model = Model(cfg, nc=nc)
    load_weights(model, weights)
    for p in model.parameters():
        p.requires_grad_(False)
    if bf16 and device.type != 'cpu':
        LOGGER.warning('WARNING: --bf16 applies to CPU inference; on CUDA the model runs in fp16')
    model = prepare_for_inference(model.float(), device, bf16=bf16 and device.type == 'cpu')
    return compile_paths(model, compile) if compile else model
