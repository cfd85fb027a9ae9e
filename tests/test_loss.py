"""Losses (the reference's utils/loss.py: ComputeLossOTA, -Dual, -Dy) against its golden loss.npz, plus the fixed and extended behaviour."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import Model
from tests.helpers import REFERENCE, cfg_path, reference_npz
from utils.loss import ComputeLoss, ComputeLossOTA, ComputeLossOTADual, ComputeLossOTADy, find_3_positive, ota_assign

HYP = {'box': 0.05, 'cls': 0.3, 'cls_pw': 1.0, 'obj': 0.7 * (128 / 640) ** 2, 'obj_pw': 1.0, 'fl_gamma': 0.0,
       'anchor_t': 4.0, 'label_smoothing': 0.0}
RTOL = 1e-5
# L1 − L2 (the step-2 difference) inherits the absolute rounding of two float32 head losses below 1 each, so it is
# compared with an absolute tolerance: relative to a small difference (0.0033 in the fixture) one rounding step of
# a loss is already more than RTOL.
DIFF_ATOL = 2 * RTOL
requires_loss_fixture = pytest.mark.skipif(
    not (REFERENCE / 'loss.npz').is_file(),
    reason=f'loss fixture not found at {REFERENCE / "loss.npz"} (it lives in ../shared; set DYNAMICDET_SHARED)')


@pytest.fixture(scope='module')
def model() -> Model:
    """The step-2 model with the fixture's loss attributes (only its head-2 detection layer is read)."""
    m = Model(cfg_path('dy-yolov7-step2'))
    m.hyp, m.gr, m.nc = dict(HYP), 1.0, 80
    return m


@pytest.fixture(scope='module')
def ref() -> dict:
    """loss.npz arrays, with the predictions as tensors and the zero image batch."""
    d = reference_npz('loss')
    d['preds'] = [torch.from_numpy(d[f'pred_{i}']) for i in range(6)]
    d['imgs'] = torch.zeros(*d['image_shape'].tolist())
    d['targets_t'] = torch.from_numpy(d['targets'])
    return d


def _close(actual: torch.Tensor, expected: np.ndarray, atol: float = 0.0) -> None:
    np.testing.assert_allclose(actual.detach().numpy().ravel(), expected.ravel(), rtol=RTOL, atol=atol)


def _maps(batch: int, hw: tuple[int, int], heads: int = 1, seed: int = 0, grad: bool = True) -> list[torch.Tensor]:
    """Random raw maps (batch, 3, h/s, w/s, 85) for strides 8, 16, 32, `heads` times."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(hw[0] // s, hw[1] // s) for s in (8, 16, 32)] * heads
    return [torch.randn(batch, 3, h, w, 85, generator=g).requires_grad_(grad) for h, w in shapes]


def _zero_maps(hw: tuple[int, int]) -> list[torch.Tensor]:
    """Batch-1 maps whose boxes are all vanishingly small (wh logits −20); everything else 0."""
    maps = [torch.zeros(1, 3, hw[0] // s, hw[1] // s, 85) for s in (8, 16, 32)]
    for m in maps:
        m[..., 2:4] = -20.0
    return maps


def _assert_finite_with_grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> None:
    assert torch.isfinite(loss).all()
    grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


# ------------------------------------------------------------------------------------------ the fixture
@requires_loss_fixture
def test_ota_head2_matches_reference(model, ref) -> None:
    loss, items = ComputeLossOTA(model)(ref['preds'][3:], ref['targets_t'], ref['imgs'])
    _close(loss, ref['ota_head2_loss'])
    _close(items, ref['ota_head2_items'])


@requires_loss_fixture
def test_dual_matches_reference(model, ref) -> None:
    loss, items = ComputeLossOTADual(model)(ref['preds'], ref['targets_t'], ref['imgs'])
    _close(loss, ref['dual_loss'])
    _close(items, ref['dual_items'])


@requires_loss_fixture
def test_dy_steps_match_reference(model, ref) -> None:
    loss_fn = ComputeLossOTADy(model)
    targets = ref['targets_t']
    for b, s in enumerate(ref['dy_scores']):
        rows = targets[targets[:, 0] == b].clone()
        rows[:, 0] = 0
        preds = ([p[b:b + 1] for p in ref['preds']], torch.tensor([[s]], dtype=torch.float32))
        loss, items = loss_fn(preds, rows, ref['imgs'][b:b + 1])
        _close(loss, ref[f'dy_step{b}_loss'])
        _close(items[:1], ref[f'dy_step{b}_items'][:1], atol=DIFF_ATOL)  # L1 − L2
        _close(items[1:], ref[f'dy_step{b}_items'][1:])
    diffs = [float(ref[f'dy_step{b}_items'][0]) for b in range(3)]
    assert loss_fn.iter_count == 3
    assert loss_fn.tracked_diff == pytest.approx(float(np.median(diffs)), rel=0, abs=DIFF_ATOL)


@requires_loss_fixture
def test_compute_loss_on_fixture_is_finite(model, ref) -> None:
    loss, items = ComputeLoss(model)(ref['preds'][3:], ref['targets_t'])
    assert loss.shape == (1,) and torch.isfinite(items).all() and (items > 0).all()
    assert loss.item() == pytest.approx(3 * items[3].item(), rel=1e-6)


# ------------------------------------------------------------------------------------- fixed defects
def test_image_without_targets_and_batch_without_targets(model) -> None:
    imgs = torch.zeros(2, 3, 64, 64)
    some = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [0, 7, 0.2, 0.3, 0.2, 0.1]])
    none = torch.zeros(0, 6)
    score = torch.tensor([[0.3], [0.7]], requires_grad=True)
    for targets in (some, none):
        maps = _maps(2, (64, 64), heads=2)
        _assert_finite_with_grads(ComputeLossOTA(model)(maps[3:], targets, imgs)[0], maps[3:])
        _assert_finite_with_grads(ComputeLossOTADual(model)(maps, targets, imgs)[0], maps)
        _assert_finite_with_grads(ComputeLoss(model)(maps[:3], targets)[0], maps[:3])
        _assert_finite_with_grads(ComputeLossOTADy(model)((maps, score), targets, imgs)[0], [score])


def test_no_targets_gives_objectness_only(model) -> None:
    maps = _maps(2, (64, 64), grad=False)
    loss, items = ComputeLossOTA(model)(maps, torch.zeros(0, 6), torch.zeros(2, 3, 64, 64))
    obj_logits = [m[..., 4].double() for m in maps]  # the expected value in float64, from the same logits
    bce = [torch.nn.functional.binary_cross_entropy_with_logits(o, torch.zeros_like(o)) for o in obj_logits]
    expected = HYP['obj'] * (4.0 * bce[0] + 1.0 * bce[1] + 0.4 * bce[2])
    assert items[0] == 0 and items[2] == 0
    # the loss runs in float32: means over up to 384 logits may round by ~1e-6 relative; 1e-5 still tells a
    # wrong level weight (a change of 1 % or more) apart
    assert items[1].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(2 * expected.item(), rel=1e-5)


def test_non_square_input_scales_x_by_width(model) -> None:
    """128 wide × 64 high. One candidate (level 0, anchor 0, cell (12, 4)) predicts the GT box exactly in
    width-scaled pixels but has a poor class score; another (anchor 1) has the best class score and a tiny
    box. Width scaling matches the exact box; the reference's height-only scaling puts the GT at x = 49 px,
    where every candidate has IoU 0, so the class score would pick anchor 1."""
    maps = _zero_maps((64, 128))
    anchor0 = model.model_h2[-1].anchors[0, 0]  # (1.5, 2) grid units
    maps[0][0, 0, 4, 12, 0:2] = math.log(0.375 / 0.625)  # 2σ − 0.5 = 0.25, the GT centre's offset in the cell
    maps[0][0, 0, 4, 12, 2:4] = torch.logit((4.0 / anchor0).sqrt() / 2)  # (2σ)²·anchor = 4 cells = 32 px
    maps[0][0, 0, 4, 12, 5] = -10.0
    maps[0][0, 1, 4, 12, 5] = 10.0
    # 98, 34, 32, 32 px; centre (12.25, 4.25) cells, off-integer so no neighbour repeats the centre cell
    targets = torch.tensor([[0, 0, 12.25 / 16, 4.25 / 8, 0.25, 0.5]])
    imgs = torch.zeros(1, 3, 64, 128)
    loss_fn = ComputeLossOTA(model)
    picked = loss_fn.ota(maps, targets, imgs)
    assert [len(p.b) for p in picked] == [1, 0, 0]
    assert (picked[0].a.item(), picked[0].gj.item(), picked[0].gi.item()) == (0, 4, 12)
    cands = find_3_positive([(8, 16), (4, 8), (2, 4)], targets, loss_fn.anchors, HYP['anchor_t'])
    height_only = ota_assign(maps, cands, targets, (64, 64), loss_fn.stride)
    assert (height_only[0].a.item(), height_only[0].gi.item()) == (1, 12)
    _, items = loss_fn(maps, targets, imgs)
    assert items[0].item() < 1e-6  # the exact box: 1 − CIoU ≈ 0


# --------------------------------------------------------------------------------------- extensions
def test_dy_batch_equals_consecutive_batch1_calls(model) -> None:
    maps = _maps(3, (64, 64), heads=2, seed=1)
    score = torch.tensor([[0.2], [0.6], [0.9]], requires_grad=True)
    targets = torch.tensor([[0, 3, 0.4, 0.5, 0.3, 0.6], [2, 1, 0.7, 0.2, 0.2, 0.2], [2, 9, 0.3, 0.6, 0.5, 0.3]])
    imgs = torch.zeros(3, 3, 64, 64)
    batched = ComputeLossOTADy(model)
    loss, items = batched((maps, score), targets, imgs)
    grads = torch.autograd.grad(loss, maps + [score], allow_unused=True)
    assert all(g is None for g in grads[:-1])  # no gradient reaches the detector
    single = ComputeLossOTADy(model)
    losses, all_items, score_grads = [], [], []
    for b in range(3):
        s = score[b:b + 1].detach().clone().requires_grad_(True)
        rows = targets[targets[:, 0] == b].clone()
        rows[:, 0] = 0
        loss_b, items_b = single(([m[b:b + 1] for m in maps], s), rows, imgs[b:b + 1])
        losses.append(loss_b)
        all_items.append(items_b)
        score_grads.append(torch.autograd.grad(loss_b, s)[0])
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(torch.cat(losses).sum().item(), rel=1e-6)
    # L1 − L2 and the score gradients (L1 − L2 − median) are differences of float32 losses below 1: absolute
    # tolerances of a few of their rounding steps (one step of 0.7 is 6e-8); image 1's difference is only 0.0013
    torch.testing.assert_close(items, torch.stack(all_items).mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[-1], torch.cat(score_grads), rtol=1e-6, atol=1e-6)
    assert grads[-1][1:].abs().min() > 0.01  # the first image sees median = its own difference: zero gradient
    assert batched.iter_count == single.iter_count == 3
    np.testing.assert_allclose(batched.diff_list, single.diff_list, rtol=0, atol=1e-6)
    assert batched.tracked_diff == pytest.approx(single.tracked_diff, rel=0, abs=1e-6)


def test_dual_is_the_sum_of_both_heads(model) -> None:
    maps = _maps(2, (64, 64), heads=2, seed=2, grad=False)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 4, 0.3, 0.7, 0.4, 0.2]])
    imgs = torch.zeros(2, 3, 64, 64)
    dual = ComputeLossOTADual(model)(maps, targets, imgs)[1]
    ota = ComputeLossOTA(model)
    torch.testing.assert_close(dual, ota(maps[:3], targets, imgs)[1] + ota(maps[3:], targets, imgs)[1])


def test_compute_loss_exact_box_has_zero_box_loss(model) -> None:
    """A 0.8-cell box centred at (8.5, 4.5) on the 16×16 level: only anchor 0 of level 0 passes anchor_t and a
    half-cell centre adds no neighbour, so the single positive is cell (8, 4); its logits reproduce the box."""
    maps = _zero_maps((128, 128))
    anchor0 = model.model_h2[-1].anchors[0, 0]
    maps[0][0, 0, 4, 8, 2:4] = torch.logit((0.8 / anchor0).sqrt() / 2)
    targets = torch.tensor([[0, 3, 8.5 / 16, 4.5 / 16, 0.05, 0.05]])
    loss_fn = ComputeLoss(model)
    cands = find_3_positive([(16, 16), (8, 8), (4, 4)], targets, loss_fn.anchors, HYP['anchor_t'])
    assert [len(c.b) for c in cands] == [1, 0, 0]
    assert (cands[0].a.item(), cands[0].gj.item(), cands[0].gi.item()) == (0, 4, 8)
    loss, items = loss_fn(maps, targets)
    assert items[0].item() < 1e-6 and items[1] > 0 and items[2] > 0
    assert torch.isfinite(loss).all()


def test_wrapped_model_and_wrong_map_count(model) -> None:
    loss_fn = ComputeLossOTA(SimpleNamespace(module=model))  # DDP-style wrapper
    torch.testing.assert_close(loss_fn.anchors, model.model_h2[-1].anchors)
    with pytest.raises(ValueError, match='expects 3 prediction maps, got 6'):
        loss_fn(_maps(1, (64, 64), heads=2, grad=False), torch.zeros(0, 6), torch.zeros(1, 3, 64, 64))


def test_focal_and_label_smoothing_stay_finite(model) -> None:
    m = SimpleNamespace(module=model, hyp={**HYP, 'fl_gamma': 1.5, 'label_smoothing': 0.1}, gr=1.0)
    maps = _maps(1, (64, 64), seed=3)
    targets = torch.tensor([[0, 2, 0.5, 0.5, 0.4, 0.4]])
    plain = ComputeLossOTA(model)(maps, targets, torch.zeros(1, 3, 64, 64))[1]
    loss, items = ComputeLossOTA(m)(maps, targets, torch.zeros(1, 3, 64, 64))
    _assert_finite_with_grads(loss, maps)
    assert items[1] < plain[1]  # the focal factor only shrinks the objectness BCE


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_empty_batch(model) -> None:
    maps = [m.detach().cuda().requires_grad_(True) for m in _maps(2, (64, 64), heads=2)]
    loss, items = ComputeLossOTADual(model)(maps, torch.zeros(0, 6, device='cuda'),
                                            torch.zeros(2, 3, 64, 64, device='cuda'))
    assert loss.device.type == 'cuda' and torch.isfinite(items).all()
    with torch.autocast('cuda', dtype=torch.float16):
        half = [m.half() for m in maps[:3]]
        _, items16 = ComputeLossOTA(model)(half, torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]], device='cuda'),
                                           torch.zeros(2, 3, 64, 64, device='cuda'))
    assert items16.dtype == torch.float32 and torch.isfinite(items16).all()
