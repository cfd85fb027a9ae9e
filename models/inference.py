"""Preparing a model for inference: fused, eval mode, chosen device, dtype and memory layout."""
from __future__ import annotations

import logging

import torch

from utils.cpu_memory import retain_freed_memory
from utils.torch_utils import BF16_MODES

from .cpu_kernels import pack_convolutions
from .yolo import Model

LOGGER = logging.getLogger(__name__)

# On the CPU, batches run in chunks of at most this many pixels (one 640x640 image, four at 320): whole batches
# of Dy-YOLOv7 at 640 ran 2.7x (easy) / 2.9x (hard) slower per image at batch 8 than image by image on 2 cores,
# with as much system time as user time (large activations mapped and page-faulted afresh on every call).
CPU_CHUNK_PIXELS = 640 * 640


def bf16_mode(bf16: bool | str | None) -> str | None:
    """A --bf16 value as one of BF16_MODES, or None for fp32 (True means 'all')."""
    if bf16 in (None, False):
        return None
    mode = 'all' if bf16 is True else bf16
    if mode not in BF16_MODES:
        raise ValueError(f'bf16 mode must be one of {BF16_MODES}, got {bf16!r}')
    return mode


def prepare_for_inference(model: Model, device: torch.device | str = 'cpu', half: bool = False,
                          channels_last: bool = True, bf16: bool | str | None = False, packed: bool = True,
                          retain_memory: bool = False) -> Model:
    """Fuse (idempotent), switch to eval, move to `device`; fp16 only on CUDA; channels_last layout.

    Extensions, on the CPU: `bf16` True or 'all' runs the backbones and necks in bfloat16 with the router and both
    detection heads in fp32; 'keep-routes' also keeps backbone 1 in fp32, so the router reads fp32's features and
    every route is fp32's. `packed`: convolutions with oneDNN weights packed once and SiLU fused into them
    (models.cpu_kernels). `retain_memory` (off unless asked; the scripts ask): glibc malloc keeps freed memory
    for reuse, process-wide and for the rest of the process (utils.cpu_memory: no page faults on every forward pass;
    the process keeps its peak memory, so a large array freed later is not returned to the system).

    The chosen input dtype and layout are recorded on the model for prepare_input(); on the CPU, batches run in
    chunks of CPU_CHUNK_PIXELS.
    """
    device = torch.device(device)
    model = model.fuse().eval().to(device)
    if half and device.type == 'cuda':
        model = model.half()
    elif mode := bf16_mode(bf16):
        _to_bf16(model, keep_backbone1=mode == 'keep-routes')
    model.input_format = torch.channels_last if channels_last else torch.contiguous_format
    model.chunk_pixels = CPU_CHUNK_PIXELS if device.type == 'cpu' else 0
    model = model.to(memory_format=model.input_format)
    if device.type == 'cpu' and retain_memory:
        retain_freed_memory()
    if device.type == 'cpu' and packed:
        pack_convolutions(model)
    return model


def _to_bf16(model: Model, keep_backbone1: bool) -> None:
    """Backbones and necks in bfloat16; the router and the detection heads stay fp32 (they cast their inputs).
    Only the bfloat16 parts are converted: a round trip through bfloat16 would round the fp32 parts' weights.
    With `keep_backbone1` backbone 1 stays fp32; every bfloat16 section casts what it reads from the image and from
    other sections, so the model takes fp32 batches as well as prepare_input's."""
    heads = (model.model_h[-1], model.model_h2[-1])
    for section in ([] if keep_backbone1 else [model.model_b]) + [model.model_b2, model.model_h, model.model_h2]:
        for layer in section:
            if not any(layer is head for head in heads):
                layer.to(torch.bfloat16)
        section.input_dtype = torch.bfloat16  # what it reads from the image or another section: a float batch
        # given to model(...) directly (not through prepare_input) is cast where the first bf16 layer reads it


def prepare_input(images: torch.Tensor, model: Model) -> torch.Tensor:
    """Move a (B, C, H, W) batch to the model's device, dtype (its first layer's) and memory layout."""
    param = getattr(model, 'input_param', None)  # an exported model's stand-in (models/exported_model.py)
    param = next(model.model_b.parameters()) if param is None else param
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
                       compile: str | None = None, bf16: bool | str | None = False,
                       retain_memory: bool = False) -> Model:
    """Model from a config with a checkpoint loaded strictly (weights_only), float, fused, eval, no gradients;
    `compile` (extension, --compile MODE) compiles the three stages of the routed forward in that torch.compile mode;
    `bf16` (extension, --bf16 [MODE]) runs the backbones in bfloat16 on the CPU ('keep-routes': all but backbone 1,
    so routes are fp32's; ignored with a warning on CUDA: fp16 there); `retain_memory` as prepare_for_inference's
    (test.py, detect.py and get_dynamic_thres.py turn it on; a library caller's process is left as it is).

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
    model = prepare_for_inference(model.float(), device, bf16=bf16_mode(bf16) if device.type == 'cpu' else None,
                                  retain_memory=retain_memory)
    return compile_paths(model, compile) if compile else model
