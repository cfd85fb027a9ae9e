"""CPU inference kernels (extension, not in the reference): convolutions with their weights reordered once for oneDNN
and the SiLU that follows them applied inside the same call.

On the CPU a plain fp32 nn.Conv2d hands oneDNN its weights in PyTorch's layout on every call, and oneDNN reorders
them to its blocked layout each time; the SiLU after it is a second pass over the activations. Profiled on Dy-YOLOv7
at 640 (easy path, batch 1, 2 cores), the convolutions took 83 % of the time and SiLU 13 %. PackedConv2d keeps the
reordered weights (for the input size the model runs at) and passes SiLU to oneDNN as a post-op, through
the operator torch.compile's CPU backend emits for the same fusion (`torch.ops.mkldnn._convolution_pointwise`).
The outputs equal the unfused modules' to float rounding; the state_dict is unchanged.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .common import Conv, RepConv

LOGGER = logging.getLogger(__name__)


@functools.cache
def onednn_kernels_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has oneDNN and the fused-convolution operator (a private one), and a small packed
    convolution with SiLU in `dtype` gives F.conv2d + F.silu on this CPU; where not, the plain modules stay. (oneDNN
    packs bfloat16 weights only on CPUs with AVX512BW/VL/DQ or AVX-NE-CONVERT: an AVX2-only CPU passes for float32
    and fails for bfloat16.) Cached: the answer is the platform's, the same for the whole process."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch._C._nn, 'mkldnn_reorder_conv2d_weight')
            and hasattr(torch.ops.mkldnn, '_convolution_pointwise')):
        return False
    with torch.inference_mode(False), torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        conv = nn.Conv2d(4, 8, 3, padding=1)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv = conv.to(dtype)
        x = torch.randn(1, 4, 6, 6, generator=gen).to(dtype)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    try:  # normal tensors even when called under torch.inference_mode (a model loaded inside one)
        with torch.inference_mode(False), torch.no_grad():
            packed = PackedConv2d(conv, silu=True, dtypes=(dtype,))(x).float()
            return torch.allclose(packed, F.silu(conv(x)).float(), rtol=tolerance, atol=tolerance)
    except (RuntimeError, NotImplementedError) as e:  # e.g. a platform whose oneDNN lacks the kernel
        LOGGER.debug('oneDNN fused convolution (%s) failed its probe: %s', dtype, e)
        return False


def _tracing() -> bool:
    """Inside torch.jit tracing/scripting, ONNX export or torch.compile: graphs must see the standard conv2d."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


class PackedConv2d(nn.Conv2d):
    """An eval-time nn.Conv2d (zero padding, with bias), optionally followed by SiLU, run by oneDNN with its weights
    reordered once. It takes over the given convolution's parameters, so state_dict keys and values do not change.

    oneDNN picks the packed layout for one input size: used at another size the call reorders again and ran up to 20 %
    slower than no packing (Dy-YOLOv7, packed at 640, run at 320). So the weights are packed for the first input
    size, and packed again only for a size met on two calls in a row (a video, test.py's batches sorted by aspect
    ratio); an input of another size runs the fused call on the unpacked weights. Inputs it was not built for (not
    of `dtypes` on the CPU, gradients wanted, tracing or compiling) take nn.Conv2d's forward (+ SiLU): the same
    numbers. The packed copy follows the weight: rebuilt when the parameter is replaced or written in place
    (load_state_dict, .to()).
    """

    def __init__(self, conv: nn.Conv2d, silu: bool = False,
                 dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> None:
        if not self.accepts(conv):
            raise ValueError('PackedConv2d takes a zero-padded nn.Conv2d with bias (a fused one)')
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=True, device='meta')  # parameters replaced at once
        self.weight, self.bias, self.silu = conv.weight, conv.bias, silu
        self.dtypes = dtypes  # input dtypes run by oneDNN (the others by nn.Conv2d): those this CPU passed a probe in
        self._packed: torch.Tensor | None = None
        self._packed_for: tuple | None = None  # (weight version, storage, input H x W) the packed copy was made for
        self._last_size: tuple | None = None

    @staticmethod
    def accepts(conv: object) -> bool:
        """Whether `conv` is a plain nn.Conv2d this class can take over (zero padding given as numbers, bias)."""
        return (type(conv) is nn.Conv2d and conv.bias is not None and conv.padding_mode == 'zeros'
                and not isinstance(conv.padding, str))

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, silu={self.silu}'

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # copies and pickles repack on first use: oneDNN tensors do not serialise
        state['_packed'] = state['_packed_for'] = state['_last_size'] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type != 'cpu' or x.dtype not in self.dtypes or w.dtype != x.dtype
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or _tracing()):
            y = super().forward(x)
            return F.silu(y) if self.silu else y
        return torch.ops.mkldnn._convolution_pointwise(x, self._weights_for(x), self.bias, list(self.padding),
                                                       list(self.stride), list(self.dilation), self.groups,
                                                       'swish' if self.silu else 'none', [], '')

    def _weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """The packed weights if they were made for x's size (packing them for the first size, or for a size
        met twice in a row), else the plain weight tensor."""
        w, size = self.weight, tuple(x.shape[2:])
        # inference tensors (a model built under torch.inference_mode) keep no version counter; they cannot be
        # written outside inference mode, and a write inside one is not seen (as a write through .data)
        weight_id = (0 if w.is_inference() else w._version, w.data_ptr())
        stale = self._packed_for is None or self._packed_for[:2] != weight_id
        if stale or (size != self._packed_for[2] and size == self._last_size):
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                w.detach().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
            self._packed_for = (*weight_id, size)
        self._last_size = size
        return self._packed if self._packed_for[2] == size else w


def pack_convolutions(model: nn.Module) -> int:
    """Replace the fused convolutions of `model` (call after fuse(): convolutions with bias) by PackedConv2d,
    moving the SiLU of Conv and RepConv blocks into them; returns how many were replaced (0 where this torch build
    lacks the kernels). Calling it again replaces nothing more. A packed copy follows writes that bump the weight's
    version (load_state_dict, copy_ under no_grad, .to()); a write through `.data`, or into an inference tensor
    inside torch.inference_mode, does not: reload the model after such a write."""
    if not onednn_kernels_available():
        LOGGER.info('oneDNN fused convolutions unavailable in this torch build: plain convolutions kept')
        return 0
    dtypes = tuple(t for t in (torch.float32, torch.bfloat16) if onednn_kernels_available(t))
    replaced = 0
    for block in list(model.modules()):
        for name, conv in list(block.named_children()):
            if not PackedConv2d.accepts(conv):
                continue
            # Conv: conv -> bn (None once fused) -> act; RepConv once fused: act(rbr_reparam(x))
            silu = (isinstance(block, (Conv, RepConv)) and name in ('conv', 'rbr_reparam')
                    and getattr(block, 'bn', None) is None and type(block.act) is nn.SiLU)
            setattr(block, name, PackedConv2d(conv, silu=silu, dtypes=dtypes))
            if silu:
                block.act = nn.Identity()
            replaced += 1
    return replaced
