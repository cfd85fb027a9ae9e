"""Step 2: the median tracker's schedule, a frozen detector (bit-identical), batched = batch-1 losses, resume."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train_step1
import train_step2
from models.checkpoint import load_weights, read_checkpoint
from models.yolo import Model
from tests.helpers import ROOT, quick_step1_files, tiny_config
from tests.train_helpers import (
    assert_resume_keeps_the_rates,
    kill_after_epochs,
    results_epochs,
    skip_run_plots,
)
from utils.data.dataloaders import create_dataloader
from utils.hyp import scale_hyp
from utils.loss import ComputeLossOTADy
from utils.train.setup import init_seeds

TINY2 = str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml')


@pytest.fixture(scope='module')
def step1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The small model's step-1 and step-2 configs, a 1-epoch step-1 run of it on 8 synthetic images (6 train,
    2 val), and a quick step-2 hyp."""
    folder = tmp_path_factory.mktemp('step1')
    data, hyp1 = quick_step1_files(folder, 8, seed=2)
    for step in (1, 2):
        (folder / f'small-step{step}.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=step == 2)))
    with pytest.MonkeyPatch.context() as patch:
        skip_run_plots(patch)  # no test here looks at the figures
        run = train_step1.train(train_step1.parse_opt([
            '--cfg', str(folder / 'small-step1.yaml'), '--data', str(data), '--hyp', str(hyp1), '--epochs', '1',
            '--batch-size', '6', '--img', '64', '--device', 'cpu', '--workers', '0', '--noautoanchor', '--project',
            str(folder / 'r')]))
    hyp2 = yaml.safe_load((ROOT / 'hyp' / 'hyp.finetune.dynamic.adam.yaml').read_text())
    hyp2.update(lr0=0.01, warmup_min_iterations=0, nbs=2)  # a router step every batch of 2
    (folder / 'hyp2.yaml').write_text(yaml.safe_dump(hyp2))
    return {'data': str(data), 'weights': str(run / 'weights' / 'last.pt'), 'hyp': str(folder / 'hyp2.yaml'),
            'cfg1': str(folder / 'small-step1.yaml'), 'cfg2': str(folder / 'small-step2.yaml')}


def _flags(step1: dict, project: Path, epochs: int = 1, batch: int = 2, *extra: str) -> list[str]:
    return ['--cfg', step1['cfg2'], '--weight', step1['weights'], '--data', step1['data'], '--hyp', step1['hyp'],
            '--epochs', str(epochs), '--batch-size', str(batch), '--img', '64', '--device', 'cpu', '--workers', '0',
            '--adam', '--noautoanchor', '--project', str(project), *extra]


@pytest.fixture(scope='module')
def step2_run(tmp_path_factory: pytest.TempPathFactory, step1: dict) -> Path:
    """A 2-epoch step-2 run (3 router steps an epoch) SIGKILLed early in epoch 1, then resumed in-process;
    epoch_000.pt is the uninterrupted first process's, last.pt the resumed run's final (stripped) one."""
    project = tmp_path_factory.mktemp('step2')
    with pytest.MonkeyPatch.context() as patch:
        skip_run_plots(patch)
        kill_after_epochs(train_step2.main, _flags(step1, project, 2), project / 'exp', 1)
        return train_step2.run(train_step2.parse_opt(['--resume', str(project / 'exp' / 'weights' / 'last.pt')]))


def test_median_tracker_updates_every_call_then_every_1000th() -> None:
    loss = ComputeLossOTADy.__new__(ComputeLossOTADy)  # only the tracker state is needed
    loss.iter_count, loss.diff_list, loss.tracked_diff = 0, [], 0.0
    assert loss.track([4.0, 1.0]) == [4.0, 2.5]  # numpy median: mean of the two middle values
    values = [4.0, 1.0] + np.random.default_rng(0).normal(size=12498).cumsum().tolist()  # a drifting median
    seen = [4.0, 2.5] + loss.track(values[2:])
    for call in (9998, 9999, 10000, 10001, 10500, 10999, 11000, 11001, 12500):
        refreshed = call if call < 10000 else call - call % 1000  # every call until 10000, then every 1000th
        assert seen[call - 1] == np.median(values[:refreshed]), call
    assert seen[10499] != np.median(values[:10500])  # between refreshes the old value is kept


def _with_head_losses(router_loss: str, l1: list[float], l2: list[float]) -> ComputeLossOTADy:
    """A step-2 loss whose per-image head losses are given (the rest of the object is not needed)."""
    loss = ComputeLossOTADy.__new__(ComputeLossOTADy)
    loss.iter_count, loss.diff_list, loss.tracked_diff, loss.router_loss, loss.nl = 0, [], 0.0, router_loss, 1
    heads = iter((torch.tensor(l1), torch.tensor(l2)))
    loss.head_losses = lambda maps, targets, imgs: next(heads)
    return loss


def test_router_loss_bce_is_cross_entropy_against_the_median_split() -> None:
    """--router-loss bce: differences L1 - L2 = 2, -3, 1 against the medians each image sees (2, -0.5, 1): only
    the second is below, so the labels are 0, 1, 0, smoothed to 0.05, 0.95, 0.05, and the loss is the cross-entropy
    of the scores against them; its gradient (s - t) / (s (1 - s)) reaches the scores and vanishes at s = t, so no
    score is pushed to exactly 0 or 1. The default stays the reference's adaptive loss."""
    maps, score = [torch.zeros(3, 1, 1, 1, 6)] * 2, torch.tensor([[0.3], [0.6], [0.9]], requires_grad=True)
    bce = _with_head_losses('bce', [3.0, 1.0, 2.0], [1.0, 4.0, 1.0])
    total, items = bce((maps, score), torch.zeros(0, 6), torch.zeros(3, 3, 8, 8))
    targets = (0.05, 0.95, 0.05)
    expected = -sum(t * math.log(s) + (1 - t) * math.log(1 - s) for s, t in zip((0.3, 0.6, 0.9), targets))
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6) and float(items[0]) == pytest.approx(0.0)
    total.backward()
    assert score.grad.view(-1).tolist() == pytest.approx(
        [(s - t) / (s * (1 - s)) for s, t in zip((0.3, 0.6, 0.9), targets)], rel=1e-5)
    adaptive = _with_head_losses('adaptive', [3.0, 1.0, 2.0], [1.0, 4.0, 1.0])
    total, _ = adaptive((maps, score.detach()), torch.zeros(0, 6), torch.zeros(3, 3, 8, 8))
    halves = [1.0, -0.25, 0.5]  # the medians seen, halved
    assert float(total) == pytest.approx(sum(s * (a - h) + (1 - s) * (b + h) for s, a, b, h in
                                             zip((0.3, 0.6, 0.9), (3.0, 1.0, 2.0), (1.0, 4.0, 1.0), halves)))
    assert train_step2.parse_opt(['--cfg', 'x.yaml']).router_loss == 'adaptive'


def test_router_loss_bce_runs_under_autocast_without_the_op_cuda_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA autocast refuses F.binary_cross_entropy on probabilities ('unsafe to autocast'), so --router-loss bce
    crashed under AMP, the default on CUDA. With that op raising as CUDA's autocast does, the loss still runs under
    (CPU) autocast, on a bfloat16 score, and gives the fp32 cross-entropy (gpu_check.sh runs it on CUDA)."""
    def refused(*args, **kwargs):
        raise RuntimeError('torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast')
    monkeypatch.setattr(torch.nn.functional, 'binary_cross_entropy', refused)
    maps, score = [torch.zeros(3, 1, 1, 1, 6)] * 2, torch.tensor([[0.3], [0.6], [0.9]])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        total, _ = _with_head_losses('bce', [3.0, 1.0, 2.0], [1.0, 4.0, 1.0])(
            (maps, score.bfloat16()), torch.zeros(0, 6), torch.zeros(3, 3, 8, 8))
    s = score.bfloat16().float().view(-1).tolist()
    expected = -sum(t * math.log(v) + (1 - t) * math.log(1 - v) for v, t in zip(s, (0.05, 0.95, 0.05)))
    assert total.dtype == torch.float32 and float(total) == pytest.approx(expected, rel=1e-6)


def test_router_loss_bce_weights_the_gap_by_each_images_objects() -> None:
    """--router-loss bce labels by (L1 - L2)·n, n = the image's labelled objects (at least 1): gaps 0.2, 0.1, 0.3
    with 1, 4, 0 objects become 0.2, 0.4, 0.3; against the medians each image sees (0.2, 0.3, 0.3) none is below,
    so all three are labelled hard (0.05), where the unweighted gaps (medians 0.2, 0.15, 0.2) would label the second
    easy. The adaptive default ignores the counts."""
    maps, score = [torch.zeros(3, 1, 1, 1, 6)] * 2, torch.tensor([[0.3], [0.6], [0.9]])
    targets = torch.tensor([[0, 1, .5, .5, .1, .1]] + [[1, 0, .5, .5, .1, .1]] * 4)
    bce = _with_head_losses('bce', [1.2, 1.1, 1.3], [1.0, 1.0, 1.0])
    total, _ = bce((maps, score), targets, torch.zeros(3, 3, 8, 8))
    assert bce.diff_list == pytest.approx([0.2, 0.4, 0.3])
    assert float(total) == pytest.approx(-sum(math.log(1 - s) * 0.95 + math.log(s) * 0.05 for s in (0.3, 0.6, 0.9)))
    adaptive = _with_head_losses('adaptive', [1.2, 1.1, 1.3], [1.0, 1.0, 1.0])
    adaptive((maps, score), targets, torch.zeros(3, 3, 8, 8))
    assert adaptive.diff_list == pytest.approx([0.2, 0.1, 0.3])


def test_step2_trains_only_the_router(step1: dict, step2_run: Path) -> None:
    """Before and after the resume, every detector tensor (BN statistics included) is bit-identical to the step-1
    weights, while the router has moved from the fresh one the run started with."""
    before = read_checkpoint(step1['weights'])['model']
    init_seeds(1)  # the run's seed (0 + 2 + rank −1): the same fresh router it started from
    start = Model(step1['cfg2'], nc=3).state_dict()
    for name in ('epoch_000.pt', 'last.pt'):
        after = read_checkpoint(step2_run / 'weights' / name)['model']
        router = [k for k in after if 'router' in k]
        assert router and all('router' not in k for k in before)
        for k, v in before.items():
            assert torch.equal(after[k], v), (name, k)
        assert any(not torch.equal(after[k], start[k].half()) for k in router), name


def test_batched_step2_losses_equal_batch_1(step1: dict) -> None:
    model = Model(step1['cfg2'], nc=3)
    load_weights(model, {'model': read_checkpoint(step1['weights'])['model']}, strict=False)
    hyp = yaml.safe_load((ROOT / 'hyp' / 'hyp.finetune.dynamic.adam.yaml').read_text())
    model.hyp, model.gr, model.nc = scale_hyp(hyp, model.model_h2[-1].nl, 3, 64, 0.0), 1.0, 3
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    loader, _ = create_dataloader(step1['data'].replace('data.yaml', 'train.txt'), 64, 3, 32, workers=0)
    imgs, targets, *_ = next(iter(loader))
    imgs = imgs.float() / 255
    batched, single = ComputeLossOTADy(model), ComputeLossOTADy(model)
    _, items = batched(model(imgs), targets, imgs)
    rows = []
    for i in range(3):
        t = targets[targets[:, 0] == i].clone()
        t[:, 0] = 0
        rows.append(single(model(imgs[i:i + 1]), t, imgs[i:i + 1])[1])
    torch.testing.assert_close(items, torch.stack(rows).mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched.diff_list, single.diff_list, rtol=1e-4, atol=1e-6)
    assert batched.tracked_diff == pytest.approx(single.tracked_diff, rel=1e-4, abs=1e-6)


def test_step2_kill_and_resume(step2_run: Path) -> None:
    """The step-2 run killed after epoch 0 and resumed logs each epoch once and ends stripped."""
    assert results_epochs(step2_run) == [0, 1]
    assert read_checkpoint(step2_run / 'weights' / 'last.pt')['epoch'] == -1


@pytest.mark.parametrize('optimizer', [[], ['--adam']], ids=['sgd', 'adamw'])
def test_step2_resume_continues_the_learning_rate_schedule(tmp_path: Path, step1: dict, optimizer: list[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 2 resumed after epoch 1 of 4 (linear schedule to lrf 0.1) trains epochs 2 and 3 at the uninterrupted
    run's rates in both groups; before the fix the first resumed epoch ran at lr0."""
    skip_run_plots(monkeypatch)
    hyp = yaml.safe_load(Path(step1['hyp']).read_text())
    hyp['lrf'] = 0.1
    (tmp_path / 'hyp.yaml').write_text(yaml.safe_dump(hyp))
    flags = [f for f in _flags(step1, tmp_path / 'runs', 4) if f != '--adam'] + ['--notest', *optimizer]
    flags[flags.index('--hyp') + 1] = str(tmp_path / 'hyp.yaml')
    run = train_step2.run(train_step2.parse_opt(flags))
    assert_resume_keeps_the_rates(run, lambda argv: train_step2.run(train_step2.parse_opt(argv)),
                                  tmp_path / 'resumed', hyp['lr0'])


@pytest.mark.parametrize('cfg,message', [('{step 1}', 'not a step-2 config'),
                                         (TINY2, 'detector tensors missing')])
def test_step2_wrong_config_is_one_line(tmp_path: Path, step1: dict, capsys, cfg: str, message: str) -> None:
    """The step-1 config (no router), or a step-2 config of another detector than --weight's, is one line."""
    flags = _flags(step1, tmp_path)
    flags[flags.index('--cfg') + 1] = step1['cfg1'] if cfg == '{step 1}' else cfg
    with pytest.raises(SystemExit) as e:
        train_step2.main(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and 'Traceback' not in '\n'.join(err)
