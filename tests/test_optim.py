"""EMA, freezing, parameter groups, optimizer, lr schedule and warmup (the reference's train_step1.py) against
hand-computed values."""
from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn

from models.yolo import Model
from tests.helpers import cfg_path, tiny_config
from utils.torch_utils import de_parallel
from utils.train.ema import ModelEMA
from utils.train.optim import (
    apply_warmup,
    build_optimizer,
    freeze_parameters,
    lr_lambda,
    nominal_accumulate,
    parameter_groups,
    scaled_weight_decay,
    warmup_iterations,
)

HYP = {'lr0': 0.01, 'lrf': 0.1, 'momentum': 0.937, 'weight_decay': 0.0005, 'warmup_epochs': 3.0,
       'warmup_momentum': 0.8, 'warmup_bias_lr': 0.1}


@pytest.fixture(scope='module')
def tiny() -> Model:
    """The small two-level DynamicDet of tests/helpers.py (router, CBLinear, two IDetects)."""
    torch.manual_seed(0)
    return Model(tiny_config())


@pytest.fixture(scope='module')
def step2() -> Model:
    """The real Dy-YOLOv7 step-2 model."""
    return Model(cfg_path('dy-yolov7-step2'))


def _conv_bn() -> nn.Sequential:
    """Conv(1→1, bias) + BN: one float parameter, float buffers and an int buffer."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))


def _names(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    """The parameter names of `params` in `model`."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


# ------------------------------------------------------------------------------------------------------ EMA
def test_ema_decay_ramp_by_hand():
    ema = ModelEMA(_conv_bn())
    # 0.9999·(1 − e^(−1/2000)) ≈ 0.9999·(0.0005 − 0.0005²/2)
    assert ema.decay_at(1) == pytest.approx(4.99825e-4, rel=1e-5)
    assert ema.decay_at(2000) == pytest.approx(0.63205735, rel=1e-7)  # 0.9999·(1 − 1/e)


def test_ema_copy_is_frozen_eval_and_independent():
    model = _conv_bn()
    ema = ModelEMA(model)
    assert not ema.ema.training and ema.updates == 0
    assert not any(p.requires_grad for p in ema.ema.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert ema.ema[0].weight.data_ptr() != model[0].weight.data_ptr()
    assert pickle.loads(pickle.dumps(ema)).decay_at(2000) == ema.decay_at(2000)  # no lambda attribute


@torch.no_grad()
def test_ema_update_averages_floats_and_leaves_ints():
    model = _conv_bn()
    model[0].weight.fill_(1.0)
    model[1].running_mean.fill_(0.0)
    ema = ModelEMA(model, decay=0.5, updates=10 ** 6)  # e^(−10^6/2000) = 0, so d = 0.5 exactly
    model[0].weight.fill_(3.0)
    model[1].running_mean.fill_(4.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(nn.DataParallel(model))  # a wrapper is unwrapped (CPU DataParallel just holds .module)
    assert ema.updates == 10 ** 6 + 1
    assert ema.ema[0].weight.item() == 2.0  # 0.5·1 + 0.5·3
    assert ema.ema[1].running_mean.item() == 2.0  # a float buffer: 0.5·0 + 0.5·4
    assert ema.ema[1].running_var.item() == 1.0  # both 1
    assert ema.ema[1].num_batches_tracked.item() == 0  # integer buffer untouched
    assert not ema.ema[0].weight.requires_grad


def test_ema_update_attr_copies_named_public_attributes():
    model = _conv_bn()
    ema = ModelEMA(nn.DataParallel(model))
    assert isinstance(ema.ema, nn.Sequential) and de_parallel(nn.DataParallel(model)) is model
    model.names, model.nc, model.other, model._private = ['a'], 1, 'x', 'y'
    ema.update_attr(nn.DataParallel(model), include=('names', 'nc', '_private'))
    assert ema.ema.names == ['a'] and ema.ema.nc == 1
    assert not hasattr(ema.ema, 'other') and not hasattr(ema.ema, '_private')


# --------------------------------------------------------------------------------------------------- freeze
def test_freeze_maps_to_backbone_1(tiny):
    tiny.model_h[0].cv1.conv.weight.requires_grad_(False)  # freezing starts by making everything trainable
    frozen = freeze_parameters(tiny, 2)
    assert frozen == ['model_b.0.conv.weight', 'model_b.0.bn.weight', 'model_b.0.bn.bias',
                      'model_b.1.conv.weight', 'model_b.1.bn.weight', 'model_b.1.bn.bias']
    trainable = [n for n, p in tiny.named_parameters() if p.requires_grad]
    assert trainable == [n for n, _ in tiny.named_parameters() if not n.startswith(('model_b.0.', 'model_b.1.'))]
    assert 'model_b.2.conv.weight' in trainable and 'model_b2.2.conv.weight' in trainable  # not 'model_b2.' etc.
    assert freeze_parameters(tiny, 0) == [] and all(p.requires_grad for p in tiny.parameters())


def test_freeze_flag_forms_follow_the_reference(tiny):
    assert freeze_parameters(tiny, [2]) == freeze_parameters(tiny, 2)  # one value: the first n layers
    frozen = freeze_parameters(tiny, [0, 3])  # several values: exactly those layers
    assert {n.split('.')[1] for n in frozen} == {'0', '3'} and all(n.startswith('model_b.') for n in frozen)


# --------------------------------------------------------------------------------------------------- groups
def _check_partition(model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """Assert the three groups partition model.parameters() and hold what they should; return their names."""
    groups = parameter_groups(model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert set(ids) == {id(p) for p in model.parameters()}
    g0, g1, g2 = (_names(model, g) for g in groups)
    bn = {f'{n}.weight' for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    implicit = {n for n, _ in model.named_parameters() if n.endswith('.implicit')}
    assert implicit and set(g0) == bn | implicit
    assert g2 == [n for n, _ in model.named_parameters() if n.endswith('.bias')]  # conv and BN biases
    assert g1 == [n for n, _ in model.named_parameters() if n.endswith('.weight') and n not in bn]
    return g0, g1, g2


def test_groups_partition_tiny_model(tiny):
    g0, g1, _ = _check_partition(tiny)
    assert {'router.layer1.weight', 'router.layer2.weight', 'model_b2.0.conv.weight', 'model_h.8.m.0.weight'} <= set(g1)
    # The reference appends an IDetect's implicits at the IDetect module: im before ia.
    assert [n for n in g0 if n.startswith('model_h.8.')] == ['model_h.8.im.0.implicit', 'model_h.8.im.1.implicit',
                                                             'model_h.8.ia.0.implicit', 'model_h.8.ia.1.implicit']


def test_groups_partition_real_step2_config(step2):
    g0, g1, g2 = _check_partition(step2)
    assert 'router.layer1.weight' in g1 and 'router.layer1.bias' in g2
    assert sum(n.endswith('.implicit') for n in g0) == 12  # 2 heads × 3 levels × (ia, im)


# ------------------------------------------------------------------------------------------------ optimizer
@pytest.mark.parametrize('total, accumulate, decay', [(16, 4, 0.0005), (64, 1, 0.0005), (128, 1, 0.001),
                                                      (48, 1, 0.000375)])
def test_weight_decay_scaling(total, accumulate, decay):
    assert nominal_accumulate(total) == accumulate
    assert scaled_weight_decay(0.0005, total) == pytest.approx(decay)  # 0.0005·total·accumulate/64


def test_build_sgd(tiny):
    hyp = dict(HYP)
    opt = build_optimizer(tiny, hyp, total_batch_size=128)
    assert hyp == HYP  # the scaled decay lives in the optimizer only
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 3
    assert [g['weight_decay'] for g in opt.param_groups] == [0.0, pytest.approx(0.001), 0.0]
    assert all(g['nesterov'] and g['momentum'] == 0.937 for g in opt.param_groups)
    assert [g['initial_lr'] for g in opt.param_groups] == [0.01] * 3
    assert [len(g['params']) for g in opt.param_groups] == [len(g) for g in parameter_groups(tiny)]


def test_build_adam(tiny):
    opt = build_optimizer(tiny, HYP, adam=True, total_batch_size=16)
    assert isinstance(opt, torch.optim.Adam)
    assert all(g['betas'] == (0.937, 0.999) and 'momentum' not in g for g in opt.param_groups)
    assert [g['weight_decay'] for g in opt.param_groups] == [0.0, pytest.approx(0.0005), 0.0]



def test_hard_path_lr_gain_splits_backbone_2_and_head_2(tiny):
    """Extension: hyp hard_path_lr_gain 3 puts backbone 2's and head 2's parameters (and only them) in groups 3-5,
    the same three kinds in the same order, at 3·lr0; groups 0-2 hold the rest as the reference's groups would."""
    opt = build_optimizer(tiny, {**HYP, 'hard_path_lr_gain': 3.0}, total_batch_size=64)
    names = {id(p): n for n, p in tiny.named_parameters()}
    groups = [[names[id(p)] for p in g['params']] for g in opt.param_groups]
    assert len(groups) == 6 and [g['initial_lr'] for g in opt.param_groups] == pytest.approx([0.01] * 3 + [0.03] * 3)
    assert [g['weight_decay'] for g in opt.param_groups] == [0.0, pytest.approx(0.0005), 0.0] * 2
    hard = ('model_b2.', 'model_h2.')
    assert all(n.startswith(hard) for g in groups[3:] for n in g) and groups[4] and groups[5]
    assert not any(n.startswith(hard) for g in groups[:3] for n in g)
    reference = [[names[id(p)] for p in g] for g in parameter_groups(tiny)]
    for kind in range(3):  # each kind split in two, the reference's order kept within each half
        assert [n for n in reference[kind] if not n.startswith(hard)] == groups[kind]
        assert [n for n in reference[kind] if n.startswith(hard)] == groups[kind + 3]
    assert len(build_optimizer(tiny, {**HYP, 'hard_path_lr_gain': 1.0}).param_groups) == 3  # the reference's layout


def test_warmup_ramps_the_hard_path_groups_to_their_own_rate(tiny):
    """Halfway through warmup the hard path's biases (group 5) fall from warmup_bias_lr towards 3·lr0 as group 2
    does towards lr0; its other groups rise from 0."""
    opt = build_optimizer(tiny, {**HYP, 'hard_path_lr_gain': 3.0}, total_batch_size=64)
    apply_warmup(opt, 500, 1000, 0, lr_lambda(10, 0.1), HYP, total_batch_size=64)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.005, 0.005, 0.055, 0.015, 0.015, 0.065])
    with pytest.raises(ValueError, match='hard_path_lr_gain'):
        build_optimizer(tiny, {**HYP, 'hard_path_lr_gain': 0.0})

# ---------------------------------------------------------------------------------------------- lr schedule
@pytest.mark.parametrize('linear, values', [(False, (1.0, 0.55, 0.1)),   # (1 − cos(π·e/10))/2·(0.1 − 1) + 1
                                            (True, (1.0, 0.5, 0.0))])    # (1 − e/9)·0.9 + 0.1
def test_lr_lambda_by_hand(linear, values):
    lf = lr_lambda(10, 0.1, linear)
    assert [lf(e) for e in (0, 5, 10)] == pytest.approx(list(values), abs=1e-12)
    assert pickle.loads(pickle.dumps(lf))(5) == lf(5)


def test_lr_lambda_linear_single_epoch_and_scheduler(tiny):
    assert lr_lambda(1, 1.0, linear=True)(0) == 1.0  # the reference divided by E − 1 = 0
    opt = build_optimizer(tiny, HYP)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lr_lambda(10, 0.1))
    opt.step()  # no gradients: a no-op that keeps the scheduler's call-order check quiet
    scheduler.step()
    assert opt.param_groups[2]['lr'] == pytest.approx(0.01 * lr_lambda(10, 0.1)(1))


# --------------------------------------------------------------------------------------------------- warmup
def test_warmup_iterations():
    assert warmup_iterations(HYP, 500) == 1500 and warmup_iterations(HYP, 100) == 1000


@pytest.mark.parametrize('ni, epoch, lrs, momentum, accumulate', [
    (0, 0, (0.0, 0.0, 0.1), 0.8, 1),
    (500, 0, (0.005, 0.005, 0.055), 0.8685, 2),       # accumulate: interp gives 2.5, rounded half to even
    (500, 5, (0.0025, 0.0025, 0.0525), 0.8685, 2),    # linear lf(5) = 0.5: target lr 0.005
    (1000, 0, (0.01, 0.01, 0.01), 0.937, 4),
])
def test_warmup_sgd_by_hand(tiny, ni, epoch, lrs, momentum, accumulate):
    opt = build_optimizer(tiny, HYP, total_batch_size=16)
    lf = lr_lambda(10, 0.1, linear=True)
    assert apply_warmup(opt, ni, 1000, epoch, lf, HYP, total_batch_size=16) == accumulate
    assert [g['lr'] for g in opt.param_groups] == pytest.approx(list(lrs), abs=1e-12)
    assert [g['momentum'] for g in opt.param_groups] == pytest.approx([momentum] * 3, abs=1e-12)
    assert all(type(g['lr']) is float for g in opt.param_groups)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain floats: checkpoints load without unpickling


def test_warmup_adam_leaves_beta1(tiny):
    opt = build_optimizer(tiny, HYP, adam=True, total_batch_size=64)
    assert apply_warmup(opt, 500, 1000, 0, lr_lambda(10, 0.1), HYP, total_batch_size=64) == 1
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.005, 0.005, 0.055])
    assert all(g['betas'] == (0.937, 0.999) and 'momentum' not in g for g in opt.param_groups)


@pytest.mark.parametrize('seed,autotuned', [(0, False), (2, True), (5, True)])
def test_training_seeds_set_cudnn_as_the_reference(seed: int, autotuned: bool) -> None:
    """init_seeds (training: 2 + rank) turns cuDNN autotuning on, seed 0 makes cuDNN deterministic instead (the
    reference's init_torch_seeds); before, training left autotuning off."""
    from utils.train.setup import init_seeds
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        init_seeds(seed)
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (autotuned, not autotuned)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
