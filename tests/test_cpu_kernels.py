"""oneDNN-packed convolutions with SiLU fused (models.cpu_kernels): the same numbers as nn.Conv2d + SiLU, the same
state_dict, weights packed for the size the model runs at and following later weight changes."""
from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from models import cpu_kernels
from models.checkpoint import save_checkpoint
from models.common import Conv
from models.cpu_kernels import PackedConv2d, onednn_kernels_available, pack_convolutions
from models.inference import load_for_inference, prepare_for_inference
from models.yolo import Model
from tests.helpers import tiny_config

pytestmark = pytest.mark.skipif(not onednn_kernels_available(), reason='this torch build has no oneDNN kernels')


def _fused_conv(c1: int, c2: int, k: int, s: int, g: int = 1, seed: int = 0) -> Conv:
    """A Conv block with random weights and batch statistics, fused as prepare_for_inference fuses it."""
    torch.manual_seed(seed)
    block = Conv(c1, c2, k, s, g=g)
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.5, 0.5)
    block.eval().fuse()
    return block


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to float rounding: oneDNN may sum in another order than the reference call."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k,s,g,layout', [(1, 1, 1, torch.channels_last), (3, 2, 1, torch.channels_last),
                                          (3, 1, 2, torch.contiguous_format), (3, 1, 1, torch.contiguous_format)])
def test_packed_block_gives_conv_then_silu(k: int, s: int, g: int, layout: torch.memory_format) -> None:
    block = _fused_conv(8, 12, k, s, g)
    packed = copy.deepcopy(block)
    assert pack_convolutions(packed) == 1
    assert isinstance(packed.conv, PackedConv2d) and packed.conv.silu and isinstance(packed.act, nn.Identity)
    x = torch.randn(2, 8, 20, 24).contiguous(memory_format=layout)
    with torch.inference_mode():
        expected = block(x)
        _close(packed(x), expected)
        _close(packed(x), expected)  # the second call runs the packed weights
    assert packed.conv._packed_for is not None


def test_state_dict_keys_values_and_flops_do_not_change() -> None:
    torch.manual_seed(0)
    model = Model(tiny_config(nc=3)).eval()
    plain = copy.deepcopy(model).fuse()
    prepared = prepare_for_inference(model, 'cpu')
    assert sum(isinstance(m, PackedConv2d) for m in prepared.modules()) > 10
    a, b = plain.state_dict(), prepared.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert prepared.flops(64) == plain.flops(64)  # thop counts the Conv2d subclass as a convolution
    assert pack_convolutions(prepared) == 0  # nothing left to replace


def test_weights_are_packed_for_the_running_size_and_otherwise_used_as_they_are() -> None:
    conv = PackedConv2d(_fused_conv(4, 4, 3, 1).conv)
    small, large = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 16, 16)
    with torch.inference_mode():
        assert conv._weights_for(small) is not conv.weight  # first size: packed
        assert conv._weights_for(large) is conv.weight  # another size once: plain weights, no repacking
        assert conv._packed_for[2] == (8, 8)
        assert conv._weights_for(large) is not conv.weight  # the same new size twice in a row: packed for it
        assert conv._packed_for[2] == (16, 16)
        _close(conv(small), nn.functional.conv2d(small, conv.weight, conv.bias, padding=1))


def test_packed_weights_follow_load_state_dict() -> None:
    block = _fused_conv(4, 6, 3, 1)
    packed = copy.deepcopy(block)
    pack_convolutions(packed)
    x = torch.randn(1, 4, 10, 10)
    with torch.inference_mode():
        packed(x)  # packs the current weights
    new = _fused_conv(4, 6, 3, 1, seed=1)
    packed.load_state_dict(new.state_dict())
    with torch.inference_mode():
        _close(packed(x), new(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_gradients_tracing_and_pickling_take_the_plain_convolution() -> None:
    block = _fused_conv(4, 6, 3, 1)
    packed = copy.deepcopy(block)
    pack_convolutions(packed)
    x = torch.randn(1, 4, 10, 10, requires_grad=True)
    packed(x).sum().backward()  # autograd through nn.Conv2d's forward
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.inference_mode():
        packed(x.detach())
    traced = torch.jit.trace(packed, x.detach())
    assert 'mkldnn' not in str(traced.inlined_graph)
    buffer = io.BytesIO()
    torch.save(packed, buffer)  # oneDNN tensors do not serialise: the packed copy is left out
    restored = pickle.loads(pickle.dumps(packed))
    assert restored.conv._packed is None
    with torch.inference_mode():
        _close(restored(x.detach()), block(x.detach()))


def test_builds_without_the_kernels_keep_plain_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernels, 'onednn_kernels_available', lambda: False)
    block = _fused_conv(4, 6, 3, 1)
    assert pack_convolutions(block) == 0
    assert type(block.conv) is nn.Conv2d and isinstance(block.act, nn.SiLU)


def test_bfloat16_runs_on_onednn_only_where_this_cpu_passed_its_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN packs bfloat16 weights only on CPUs with AVX512BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only CPU raised
    inside every --bf16 forward): a CPU that fails the bfloat16 probe runs bf16 inputs through nn.Conv2d."""
    real = cpu_kernels.onednn_kernels_available
    monkeypatch.setattr(cpu_kernels, 'onednn_kernels_available', lambda dtype=torch.float32:
                        dtype == torch.float32 and real(dtype))
    block = _fused_conv(8, 12, 3, 1)
    packed = copy.deepcopy(block)
    assert pack_convolutions(packed) == 1 and packed.conv.dtypes == (torch.float32,)
    x = torch.randn(1, 8, 10, 10)
    with torch.inference_mode():
        torch.testing.assert_close(packed.to(torch.bfloat16)(x.bfloat16()), block.to(torch.bfloat16)(x.bfloat16()))
    assert real(torch.bfloat16) in (True, False) and real(torch.float32)  # the real probes run without raising


def test_unfused_convolutions_are_not_taken() -> None:
    block = Conv(4, 6, 3, 1).eval()  # conv without bias, then BatchNorm: SiLU cannot move into the conv
    assert pack_convolutions(block) == 0
    with pytest.raises(ValueError, match='with bias'):
        PackedConv2d(block.conv)


def test_load_for_inference_the_scripts_and_the_readme_use_packs_the_convolutions(tmp_path: Path) -> None:
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    torch.manual_seed(0)
    save_checkpoint({'model': Model(cfg).state_dict()}, tmp_path / 'tiny.pt')
    model = load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, 'cpu')
    fused_blocks = [m for m in model.modules() if isinstance(m, Conv)]
    assert fused_blocks and all(isinstance(m.conv, PackedConv2d) and m.conv.silu for m in fused_blocks)
    assert model.input_format == torch.channels_last


def test_a_model_loaded_under_inference_mode_is_packed_and_runs(tmp_path: Path) -> None:
    """Loaded inside `torch.inference_mode()` (its tensors then keep no version counter), the model gets the same
    packed convolutions and outputs as one loaded outside it (the probe used to fail there, and packing was
    silently turned off)."""
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    torch.manual_seed(0)
    save_checkpoint({'model': Model(cfg).state_dict()}, tmp_path / 'tiny.pt')
    x = torch.rand(2, 3, 64, 64)
    onednn_kernels_available.cache_clear()  # the probe must run inside inference mode, as a user's first load would
    try:
        with torch.inference_mode():
            inside = load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, 'cpu')
            inside_out = inside(x)[0]
    finally:
        onednn_kernels_available.cache_clear()
    outside = load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, 'cpu')
    with torch.inference_mode():
        outside_out = outside(x)[0]
    count = [sum(isinstance(m, PackedConv2d) for m in model.modules()) for model in (inside, outside)]
    assert count[0] == count[1] > 0
    assert torch.equal(inside_out, outside_out)


def test_the_python_api_leaves_the_processs_malloc_alone_unless_asked(tmp_path: Path, monkeypatch) -> None:
    """load_for_inference raised glibc's thresholds for every library user's process (a 300 MB array freed later
    stayed resident): now only retain_memory=True (what test.py, detect.py and get_dynamic_thres.py pass) does."""
    import models.inference as inference
    calls = []
    monkeypatch.setattr(inference, 'retain_freed_memory', lambda: calls.append(1) or True)
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    save_checkpoint({'model': Model(cfg).state_dict()}, tmp_path / 'tiny.pt')
    load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, 'cpu')
    prepare_for_inference(Model(cfg), 'cpu')
    assert calls == []
    load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, 'cpu', retain_memory=True)
    assert calls == [1]
