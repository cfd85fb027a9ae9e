"""Model size and GFLOPs as the reference's utils/torch_utils.py (model_info) reports them, counted by thop on
shape-only copies."""
from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)


class _PathProbe(nn.Module):
    """Runs one path of a Model so thop can count it."""

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.model = model
        self.path = path

    def forward(self, x: torch.Tensor):
        return self.model.forward_path(x, self.path)


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers live on the meta device (no memory, no copy)."""
    memo: dict[int, object] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device='meta')
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def count_gflops(model: nn.Module, path: str, height: int, width: int) -> float:
    """thop multiply-accumulates × 2 / 1e9 of one path on a zero 1×ch×height×width input."""
    with warnings.catch_warnings():  # thop imports distutils-era version helpers
        warnings.simplefilter('ignore', DeprecationWarning)
        import thop  # imported lazily: only profiling needs it
        from thop.vision.basic_hooks import count_convNd
    fp32 = meta_copy(model).float()  # counts do not depend on the dtype (fp16 on CUDA, --bf16)
    for section in fp32.sections.values():
        section.input_dtype = None  # --bf16's casts between sections: the copy is all fp32
    probe = _PathProbe(fp32, path)
    ch = model.yaml['ch']
    # thop finds its rules by exact type: count Conv2d subclasses (models.cpu_kernels.PackedConv2d) as Conv2d
    subclasses = {type(m): count_convNd for m in probe.modules() if isinstance(m, nn.Conv2d)}
    macs, _ = thop.profile(probe, inputs=(torch.zeros(1, ch, height, width, device='meta'),), custom_ops=subclasses,
                           verbose=False)
    return float(macs) * 2 / 1e9


def _size(img_size: int | tuple[int, int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def path_gflops(model: nn.Module, img_size: int | tuple[int, int] = 640) -> dict[str, float]:
    """{'easy': GFLOPs, 'hard': GFLOPs} of the fused model in eval mode at img_size (the reference's
    utils/torch_utils.py (model_info))."""
    h, w = _size(img_size)
    fused = meta_copy(model).fuse().eval()
    return {path: count_gflops(fused, path, h, w) for path in ('easy', 'hard')}


def summary_line(model: nn.Module) -> str:
    """`Model Summary: N layers, P parameters, G gradients, F GFLOPS` (everything counted, stride-sized input
    scaled to 640, as the reference logs it)."""
    n_p = sum(p.numel() for p in model.parameters())
    n_g = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gs = max(int(model.stride.max()), 32)
    try:
        gflops = count_gflops(model, 'all', gs, gs) * (640 / gs) ** 2
        fs = f', {gflops:.1f} GFLOPS'
    except (ImportError, RuntimeError) as e:  # the summary is informational; never fail a build on it
        LOGGER.debug('GFLOPs not counted: %s', e)
        fs = ''
    return f'Model Summary: {len(list(model.modules()))} layers, {n_p} parameters, {n_g} gradients{fs}'
