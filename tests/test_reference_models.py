"""The six configs against the reference's golden figures (SPEC §14.1, §14.4)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.yolo import Model
from tests.helpers import (CONFIG_NAMES, calibrate, cfg_path, fill_by_name, models_json, reference_npz,
                           requires_reference)

pytestmark = requires_reference
RTOL, ATOL = 1e-6, 1e-8


def assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_state_dict_schema(name: str) -> None:
    ref = models_json()[name]
    model = Model(cfg_path(name), ch=3, nc=80)
    schema = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(schema) == list(ref['schema'])  # same keys, same order
    assert schema == ref['schema']
    assert len(schema) == ref['state_dict_entries']
    assert sum(p.numel() for p in model.parameters()) == ref['params']
    det2 = model.model_h2[-1]
    assert det2.stride.tolist() == ref['strides']
    assert det2.anchors.tolist() == ref['anchors_grid_units']
    assert model.dynamic == name.endswith('step2')


@pytest.fixture(scope='module', params=CONFIG_NAMES)
def filled(request):
    """(name, float64 model filled by name and calibrated on input.npz, x, reference arrays)."""
    name = request.param
    x = torch.from_numpy(reference_npz('input')['x'])
    model = Model(cfg_path(name)).double()
    fill_by_name(model)
    calibrate(model, x)
    return name, model, x, reference_npz(name)


def _eval(model: Model, x: torch.Tensor, thres: float):
    model.dy_thres = thres
    with torch.no_grad():
        return model(x)


def test_eval_outputs_batched_and_per_image(filled) -> None:
    name, model, x, ref = filled
    cases = [(0.0, 'eval_easy'), (1.01, 'eval_hard')] if model.dynamic else [(0.5, 'eval')]
    for thres, key in cases:
        decoded, raw = _eval(model, x, thres)
        assert decoded.shape == ref[key].shape
        assert len(raw) == model.model_h2[-1].nl
        assert_close(decoded, ref[key])
        for i in range(x.shape[0]):
            assert_close(_eval(model, x[i:i + 1], thres)[0], ref[key][i:i + 1])


def test_router_scores(filled) -> None:
    name, model, x, ref = filled
    if not model.dynamic:
        assert not hasattr(model, 'router')
        return
    model.get_score = True
    try:
        with torch.no_grad():
            assert_close(model(x), ref['score'])
            assert_close(torch.cat([model(x[i:i + 1]) for i in range(2)]), ref['score'])
    finally:
        model.get_score = False


def test_train_maps(filled) -> None:
    name, model, x, ref = filled
    train_model = copy.deepcopy(model).train()
    with torch.no_grad():
        out = train_model(x)
    maps, score = out if model.dynamic else (out, None)
    n_maps = 2 * model.model_h2[-1].nl
    assert len(maps) == n_maps == len([k for k in ref if k.startswith('train_') and k != 'train_score'])
    for i, m in enumerate(maps):
        assert_close(m, ref[f'train_{i}'])
    if model.dynamic:
        assert_close(score, ref['train_score'])


def test_mixed_batch_routes_each_image(filled) -> None:
    name, model, x, ref = filled
    if not model.dynamic:
        return
    s0, s1 = ref['score'][:, 0]
    thres = (s0 + s1) / 2
    expected = np.stack([ref['eval_easy' if s >= thres else 'eval_hard'][i] for i, s in enumerate((s0, s1))])
    for order in ([0, 1], [1, 0]):
        decoded, raw = _eval(model, x[order], thres)
        assert_close(decoded, expected[order])
        for i, img in enumerate(order):
            single = _eval(model, x[img:img + 1], thres)[1]
            for level, level_single in zip(raw, single):
                np.testing.assert_allclose(level[i:i + 1].numpy(), level_single.numpy(), rtol=RTOL, atol=ATOL)


def test_fused_equals_unfused(filled) -> None:
    name, model, x, ref = filled
    fused = copy.deepcopy(model).fuse()
    keys = fused.state_dict().keys()
    assert not any('.bn.' in k or 'rbr_dense' in k for k in keys)
    assert any('rbr_reparam' in k for k in keys) == ('RepConv' in cfg_path(name).read_text())
    cases = [(0.0, 'eval_easy'), (1.01, 'eval_hard')] if model.dynamic else [(0.5, 'eval')]
    for thres, key in cases:
        assert_close(_eval(fused, x, thres)[0], ref[key])
