"""The inference preparation the scripts use (fused, channels_last, inference_mode) gives the plain model's
routes and detections, batched and image by image; --compile, CPU chunks, --bf16 and GFLOPs counts keep them."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import yaml

from models.checkpoint import save_checkpoint
from models.inference import bf16_mode, compile_paths, load_for_inference, prepare_for_inference, prepare_input
from models.yolo import Model
from tests.helpers import dark_to_bright, spread_router, tiny_config

# The smallest routed model: one conv per backbone, one CBLinear -> CBFuse link and one-level heads. Inductor
# compiles one C++ kernel per fused group of ops, the bulk of its time: 8 here, about 30 for the tiny config.
MINIMAL_CONFIG = {
    'nc': 1, 'anchors': [[10, 13, 16, 30, 33, 23]],
    'backbone': [[-1, 1, 'Conv', [16, 3, 4]]],
    'dual_backbone': [[0, 1, 'CBLinear', [[16]]],
                      ['input', 1, 'Conv', [16, 3, 4]],
                      [[-2, -1], 1, 'CBFuse', [[0]]]],
    'head': [[[0], 1, 'IDetect', ['nc', 'anchors']]],
    'head2': [[[2], 1, 'IDetect', ['nc', 'anchors']]],
    'keep_input': True, 'dynamic': True, 'router_ins': [0], 'router_channels': [16],
}


def _routed_models(cfg: dict) -> tuple[Model, Model]:
    """(plain eval model with a spread router, its prepare_for_inference copy) of `cfg`."""
    torch.manual_seed(0)
    plain = Model(cfg).eval()
    spread_router(plain)
    return plain, prepare_for_inference(copy.deepcopy(plain), 'cpu')


@pytest.fixture(scope='module')
def built() -> tuple[Model, Model]:
    """The routed tiny config (every module kind but ReOrg), plain and prepared, built once."""
    return _routed_models(tiny_config(nc=3))


@pytest.fixture
def models(built: tuple[Model, Model]) -> tuple[Model, Model]:
    """Private copies of `built`: tests set dy_thres, get_score and chunk_pixels."""
    return copy.deepcopy(built[0]), copy.deepcopy(built[1])


def _scores(model: Model, x: torch.Tensor) -> torch.Tensor:
    """(B,) router scores of a batch."""
    model.get_score = True
    try:
        return model(x)[:, 0]
    finally:
        model.get_score = False


def _threshold(scores: torch.Tensor, n_easy: int, margin: float = 0.01) -> float:
    """The midpoint that sends the n_easy highest scores to the easy path; no score lies within `margin` of it,
    so routes do not hang on float differences between CPUs, dtypes or compiled code."""
    ordered = scores.sort().values
    low, high = float(ordered[-n_easy - 1]), float(ordered[-n_easy])
    assert high - low > 2 * margin, ordered
    return (low + high) / 2


def test_prepared_model_equals_the_plain_model_batched_and_per_image(models: tuple[Model, Model]) -> None:
    plain, fast = models
    x = dark_to_bright(6, 96, seed=6)
    with torch.no_grad():
        plain.dy_thres = fast.dy_thres = _threshold(_scores(plain, x), 3)  # three easy, three hard
        expected = plain(x)[0]
        easy = plain.last_easy.clone()
    with torch.inference_mode():
        batched = fast(prepare_input(x, fast))[0]
        assert torch.equal(fast.last_easy, easy) and int(easy.sum()) == 3
        single = torch.cat([fast(prepare_input(x[i:i + 1], fast))[0] for i in range(len(x))])
    scale = expected.abs().max()
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(single, expected, rtol=1e-4, atol=1e-4 * scale)


def _compiled_against_eager(fast: Model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A mixed batch (2 easy, 2 hard) through eager and then compile_paths(fast): (expected, got, graph stats);
    asserts the compiled forward took the eager routes."""
    from torch._dynamo.utils import counters
    with torch.inference_mode():
        fast.dy_thres = _threshold(_scores(fast, x), 2)
        expected, easy = fast(x)[0], fast.last_easy.clone()
        torch._dynamo.reset()
        counters.clear()
        got = compile_paths(fast)(x)[0]
    stats = {'graph_breaks': dict(counters['graph_break']), 'graphs': counters['stats']['unique_graphs']}
    torch._dynamo.reset()  # drop the compiled code and the model it holds
    assert torch.equal(fast.last_easy, easy) and int(easy.sum()) == 2
    return expected, got, stats


def test_compiled_stages_trace_to_one_graph_each(models: tuple[Model, Model], monkeypatch) -> None:
    """--compile: backbone 1 + router, head 1 and backbone 2 + head 2 each trace (dynamic shapes) to one graph
    without a graph break (a break falls back to per-layer frames and is slower than eager), for every module
    kind of the tiny config; a mixed batch routes and detects as eager. TorchDynamo's tracing is what breaks,
    so its 'eager' backend checks it without Inductor's code generation (next test)."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: real_compile(fn, backend='eager', **kw))
    _, fast = models
    x = prepare_input(dark_to_bright(4, 64, seed=3), fast)
    expected, got, stats = _compiled_against_eager(fast, x)
    assert stats == {'graph_breaks': {}, 'graphs': 3}
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_inductor_compiled_paths_route_and_detect_as_eager() -> None:
    """--compile (Inductor, C++ kernels on the CPU) of the smallest routed model: the three stages compile
    without a graph break and a mixed batch routes and detects as eager. One compile thread and scalar kernels
    (simdlen 1) cut the g++ time; vectorisation is Inductor's own business, not the model's."""
    from torch._inductor import config as inductor_config
    _, fast = _routed_models(MINIMAL_CONFIG)
    x = prepare_input(dark_to_bright(4, 64, seed=3), fast)
    with inductor_config.patch({'compile_threads': 1, 'cpp.simdlen': 1}):
        expected, got, stats = _compiled_against_eager(fast, x)
    assert stats == {'graph_breaks': {}, 'graphs': 3}
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_compile_flag_modes_reach_torch_compile(models: tuple[Model, Model], monkeypatch) -> None:
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
    inference.compile_paths(models[1], 'reduce-overhead')
    assert seen == [{'dynamic': True, 'mode': 'reduce-overhead'}] * 3


def test_cpu_chunks_give_the_whole_batch_outputs_routes_and_scores(models: tuple[Model, Model]) -> None:
    """Eval batches larger than `chunk_pixels` run chunk by chunk (the CPU default: one 640x640 image's pixels):
    detections, raw maps, routes and router scores equal the whole-batch forward, uneven last chunk included."""
    from models.inference import CPU_CHUNK_PIXELS
    _, fast = models
    assert fast.chunk_pixels == CPU_CHUNK_PIXELS
    x = prepare_input(dark_to_bright(7, 64, seed=4), fast)
    outputs = {}
    with torch.inference_mode():
        for chunk_pixels in (0, 2 * 64 * 64):  # whole batch, then chunks of 2, 2, 2, 1
            fast.chunk_pixels = chunk_pixels
            scores = _scores(fast, x)
            fast.dy_thres = _threshold(scores, 3)
            decoded, maps = fast(x)
            outputs[chunk_pixels] = scores, decoded, maps, fast.last_easy.clone()
    (s0, d0, m0, e0), (s1, d1, m1, e1) = outputs.values()
    assert int(e0.sum()) == 3 and torch.equal(e0, e1)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-3)
    for a, b in zip(m1, m0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_backbones_keep_routes_and_boxes_of_fp32(models: tuple[Model, Model]) -> None:
    """--bf16 (CPU): backbones and necks in bfloat16, router and both heads in fp32 (decoded boxes in fp32 pixels);
    routes equal fp32's away from the threshold, boxes and confidences within bfloat16's error."""
    _, fast = models
    half = prepare_for_inference(copy.deepcopy(fast), 'cpu', bf16=True)
    assert next(half.model_b.parameters()).dtype == torch.bfloat16
    assert {p.dtype for m in (half.router, half.model_h[-1], half.model_h2[-1]) for p in m.parameters()} == {torch.float32}
    x = dark_to_bright(6, 64, seed=5)
    with torch.inference_mode():
        scores, scores16 = _scores(fast, prepare_input(x, fast)), _scores(half, prepare_input(x, half))
        fast.dy_thres = half.dy_thres = _threshold(scores, 3, margin=0.03)  # wider than bfloat16's score error
        expected, got = fast(prepare_input(x, fast))[0], half(prepare_input(x, half))[0]
    assert scores16.dtype == got.dtype == torch.float32
    torch.testing.assert_close(scores16, scores, rtol=0.05, atol=1e-3)
    assert torch.equal(half.last_easy, fast.last_easy) and int(fast.last_easy.sum()) == 3
    assert (got[..., :4] - expected[..., :4]).abs().max() < 0.02 * 64  # pixels, on a 64 px image
    assert (got[..., 4:] - expected[..., 4:]).abs().max() < 0.02


def test_bf16_keep_routes_gives_fp32_scores_and_routes_exactly(models: tuple[Model, Model]) -> None:
    """--bf16 keep-routes (CPU): backbone 1 stays fp32, so the router's scores are fp32's bit for bit and so is
    every route, even at a threshold between two images' scores; backbone 2 and the necks run in bfloat16 (they
    cast what they read from backbone 1), boxes within bfloat16's error."""
    _, fast = models
    kept = prepare_for_inference(copy.deepcopy(fast), 'cpu', bf16='keep-routes')
    assert next(kept.model_b.parameters()).dtype == torch.float32
    assert next(kept.model_b2.parameters()).dtype == next(kept.model_h[0].parameters()).dtype == torch.bfloat16
    x = dark_to_bright(6, 64, seed=5)
    with torch.inference_mode():
        scores, kept_scores = _scores(fast, prepare_input(x, fast)), _scores(kept, prepare_input(x, kept))
        assert torch.equal(kept_scores, scores)
        ordered = scores.sort().values
        fast.dy_thres = kept.dy_thres = float(ordered[2] + ordered[3]) / 2  # no margin needed
        expected, got = fast(prepare_input(x, fast))[0], kept(prepare_input(x, kept))[0]
    assert torch.equal(kept.last_easy, fast.last_easy) and int(fast.last_easy.sum()) == 3
    assert got.dtype == torch.float32
    assert (got[..., :4] - expected[..., :4]).abs().max() < 0.02 * 64  # pixels, on a 64 px image
    assert (got[..., 4:] - expected[..., 4:]).abs().max() < 0.02


def test_bf16_modes_are_checked() -> None:
    assert [bf16_mode(v) for v in (None, False, True, 'all', 'keep-routes')] == [None, None, 'all', 'all',
                                                                                 'keep-routes']
    with pytest.raises(ValueError, match='keep-routes'):
        bf16_mode('fast')


def test_gflops_count_any_dtype(models: tuple[Model, Model]) -> None:
    """test.py's routing line counts GFLOPs of the model it ran: fp16 (CUDA) and --bf16 models count as fp32 ones
    (the meta-device count fed them a float input and failed)."""
    _, fast = models
    expected = fast.flops(64)
    assert expected['easy'] > 0 and expected['hard'] > expected['easy']
    assert copy.deepcopy(fast).half().flops(64) == expected
    assert prepare_for_inference(copy.deepcopy(fast), 'cpu', bf16=True).flops(64) == expected


def test_a_prepared_model_takes_plain_nchw_batches_in_its_own_layout(models: tuple[Model, Model],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What the README's Python example gets: a prepared (channels_last) model called with an ordinary NCHW batch
    converts it itself, so its outputs are those of prepare_input's batch, bit for bit, and its first convolution
    sees a channels_last input."""
    _, prepared = models
    x = dark_to_bright(3, 64, seed=1)
    seen = []
    first = prepared.model_b[0]
    monkeypatch.setattr(first, 'forward', lambda t, f=first.forward: seen.append(t) or f(t))
    with torch.inference_mode():
        plain = prepared(x)[0]
        converted = prepared(prepare_input(x, prepared))[0]
    assert torch.equal(plain, converted)
    assert seen and all(t.is_contiguous(memory_format=torch.channels_last) for t in seen)


@pytest.mark.parametrize('mode', [True, 'keep-routes'])
def test_a_bf16_prepared_model_takes_plain_float_batches(models: tuple[Model, Model], mode) -> None:
    """The README's promise holds under --bf16 too: a float32 NCHW batch given to the model directly gives the
    outputs of prepare_input's batch, bit for bit (bf16=True used to raise: float input, bfloat16 bias)."""
    _, fast = models
    half = prepare_for_inference(copy.deepcopy(fast), 'cpu', bf16=mode)
    x = dark_to_bright(2, 64, seed=3)
    with torch.inference_mode():
        plain, converted = half(x)[0], half(prepare_input(x, half))[0]
    assert plain.dtype == torch.float32 and torch.equal(plain, converted)


def test_bf16_on_a_non_cpu_device_warns_once_and_stays_fp32(built: tuple[Model, Model], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """load_for_inference(bf16=True) off the CPU (on CUDA, fp16 is the callers' job): one warning, and no part of the
    model is converted to bfloat16. PyTorch's 'meta' device stands in for CUDA (a device whose type is not 'cpu',
    with real dtypes and no data), so the branch runs without a GPU; the same call on the CPU does convert."""
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    save_checkpoint({'model': built[0].state_dict()}, tmp_path / 'tiny.pt')
    caplog.set_level(logging.WARNING, logger='models.inference')
    model = load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, torch.device('meta'), bf16=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ['WARNING: --bf16 applies to CPU inference; on CUDA the model runs in fp16']
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()} == {torch.float32}
    assert all(getattr(s, 'input_dtype', None) != torch.bfloat16
               for s in (model.model_b, model.model_b2, model.model_h, model.model_h2))
    caplog.clear()
    on_cpu = load_for_inference(str(cfg), str(tmp_path / 'tiny.pt'), 3, torch.device('cpu'), bf16=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert next(on_cpu.model_b.parameters()).dtype == torch.bfloat16 and on_cpu.model_b.input_dtype == torch.bfloat16
