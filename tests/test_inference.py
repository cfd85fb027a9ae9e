"""The inference preparation the scripts use (fused, channels_last, inference_mode) gives the plain model's
routes and detections, batched and image by image."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from models.inference import prepare_for_inference, prepare_input
from models.yolo import Model

ROOT = Path(__file__).resolve().parents[1]
CFG2 = str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml')


def _models() -> tuple[Model, Model]:
    torch.manual_seed(0)
    plain = Model(CFG2, nc=3).eval()
    with torch.no_grad():
        for p in plain.router.parameters():
            p.normal_(0, 1.0)  # spread the scores so that a batch splits
    return plain, prepare_for_inference(copy.deepcopy(plain), 'cpu')


def test_prepared_model_equals_the_plain_model_batched_and_per_image() -> None:
    plain, fast = _models()
    x = torch.rand(6, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.1, 1, 6).view(6, 1, 1, 1)
    with torch.no_grad():
        plain.get_score = True
        scores = plain(x)[:, 0]
        plain.get_score = False
    ordered = scores.sort().values
    plain.dy_thres = fast.dy_thres = float((ordered[2] + ordered[3]) / 2)  # three easy, three hard
    with torch.no_grad():
        expected = plain(x)[0]
        easy = plain.last_easy.clone()
    with torch.inference_mode():
        batched = fast(prepare_input(x, fast))[0]
        assert torch.equal(fast.last_easy, easy) and int(easy.sum()) == 3
        single = torch.cat([fast(prepare_input(x[i:i + 1], fast))[0] for i in range(len(x))])
    scale = expected.abs().max()
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(single, expected, rtol=1e-4, atol=1e-4 * scale)


def test_compiled_paths_give_the_same_routes_and_detections() -> None:
    """--compile: backbone 1 + router, head 1 and backbone 2 + head 2 each compile without a graph break (a break
    falls back to per-layer frames and is slower than eager); a mixed batch routes and detects as eager (~1 min)."""
    from torch._dynamo.utils import counters
    from models.inference import compile_paths
    _, fast = _models()
    x = prepare_input(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
                      * torch.linspace(0.1, 1, 4).view(4, 1, 1, 1), fast)
    with torch.inference_mode():
        fast.get_score = True
        ordered = fast(x)[:, 0].sort().values
        fast.get_score = False
        fast.dy_thres = float((ordered[1] + ordered[2]) / 2)
        expected, easy = fast(x)[0], fast.last_easy.clone()
        torch._dynamo.reset()
        counters.clear()
        got = compile_paths(fast)(x)[0]
    assert not counters['graph_break'], dict(counters['graph_break'])
    assert torch.equal(fast.last_easy, easy) and int(easy.sum()) == 2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_compile_flag_modes_reach_torch_compile(monkeypatch) -> None:
    """--compile alone is mode 'default', --compile reduce-overhead (CUDA graphs per path) is passed through to each
    of the three stages, no flag compiles nothing, and an unknown mode is an argparse error."""
    import argparse
    from models import inference
    from utils.cli import add_engine_flags
    p = argparse.ArgumentParser()
    add_engine_flags(p)
    assert p.parse_args([]).compile is None
    assert p.parse_args(['--compile']).compile == 'default'
    assert p.parse_args(['--compile', 'reduce-overhead']).compile == 'reduce-overhead'
    with pytest.raises(SystemExit):
        p.parse_args(['--compile', 'fastest'])
    seen = []
    monkeypatch.setattr(inference.torch, 'compile', lambda fn, **kw: seen.append(kw) or fn)
    _, fast = _models()
    inference.compile_paths(fast, 'reduce-overhead')
    assert seen == [{'dynamic': True, 'mode': 'reduce-overhead'}] * 3


def test_cpu_chunks_give_the_whole_batch_outputs_routes_and_scores() -> None:
    """Eval batches larger than `chunk_pixels` run chunk by chunk (the CPU default: one 640x640 image's pixels):
    detections, raw maps, routes and router scores equal the whole-batch forward, uneven last chunk included."""
    from models.inference import CPU_CHUNK_PIXELS
    _, fast = _models()
    assert fast.chunk_pixels == CPU_CHUNK_PIXELS
    x = prepare_input(torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(4))
                      * torch.linspace(0.1, 1, 7).view(7, 1, 1, 1), fast)
    outputs = {}
    with torch.inference_mode():
        for chunk_pixels in (0, 2 * 64 * 64):  # whole batch, then chunks of 2, 2, 2, 1
            fast.chunk_pixels = chunk_pixels
            fast.get_score = True
            scores = fast(x)
            fast.get_score = False
            fast.dy_thres = float(scores.median())
            decoded, maps = fast(x)
            outputs[chunk_pixels] = scores, decoded, maps, fast.last_easy.clone()
    (s0, d0, m0, e0), (s1, d1, m1, e1) = outputs.values()
    assert 0 < int(e0.sum()) < 7 and torch.equal(e0, e1)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-3)
    for a, b in zip(m1, m0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_backbones_keep_routes_and_boxes_of_fp32() -> None:
    """--bf16 (CPU): backbones and necks in bfloat16, router and both heads in fp32 (decoded boxes in fp32 pixels);
    routes equal fp32's away from the threshold, boxes and confidences within bfloat16's error."""
    _, fast = _models()
    half = prepare_for_inference(copy.deepcopy(fast), 'cpu', bf16=True)
    assert next(half.model_b.parameters()).dtype == torch.bfloat16
    assert {p.dtype for m in (half.router, half.model_h[-1], half.model_h2[-1]) for p in m.parameters()} == {torch.float32}
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * torch.linspace(0.1, 1, 6).view(6, 1, 1, 1)
    with torch.inference_mode():
        fast.get_score = half.get_score = True
        scores, scores16 = fast(prepare_input(x, fast))[:, 0], half(prepare_input(x, half))[:, 0]
        fast.get_score = half.get_score = False
        ordered = scores.sort().values
        fast.dy_thres = half.dy_thres = float((ordered[2] + ordered[3]) / 2)
        expected, got = fast(prepare_input(x, fast))[0], half(prepare_input(x, half))[0]
    assert scores16.dtype == got.dtype == torch.float32
    torch.testing.assert_close(scores16, scores, rtol=0.05, atol=1e-3)
    assert torch.equal(half.last_easy, fast.last_easy) and int(fast.last_easy.sum()) == 3
    assert (got[..., :4] - expected[..., :4]).abs().max() < 0.02 * 64  # pixels, on a 64 px image
    assert (got[..., 4:] - expected[..., 4:]).abs().max() < 0.02


def test_gflops_count_any_dtype() -> None:
    """test.py's routing line counts GFLOPs of the model it ran: fp16 (CUDA) and --bf16 models count as fp32 ones
    (the meta-device count fed them a float input and failed)."""
    _, fast = _models()
    expected = fast.flops(64)
    assert copy.deepcopy(fast).half().flops(64) == expected
    assert prepare_for_inference(copy.deepcopy(fast), 'cpu', bf16=True).flops(64) == expected
