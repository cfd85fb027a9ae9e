"""Step-1 training on the CPU: a run's files, kill-and-resume, bad input in one line.

The runs train the small two-level model of tests/helpers.py (every module kind but ReOrg, a few layers each) on
8 synthetic images at 64 px, one or two steps an epoch: what is checked here is the training loop, not an
architecture (the pipeline test trains a shipped config end to end; tests/test_ddp.py runs 2 processes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train_step1
from models.checkpoint import read_checkpoint
from tests.helpers import tiny_config
from tests.train_helpers import (
    assert_resume_keeps_the_rates,
    kill_after_epochs,
    results_epochs,
    skip_run_plots,
    step1_flags,
    synthetic_step1_set,
)
from utils.train.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process training without its figures, for tests that do not look at them."""
    skip_run_plots(monkeypatch)


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The synthetic set of train_helpers.synthetic_step1_set."""
    return synthetic_step1_set(tmp_path_factory.mktemp('synthetic'))



def test_training_run_writes_the_reference_outputs(tmp_path: Path, synthetic: dict) -> None:
    """A 2-epoch run holds the reference's run files and plots, a stripped fp16 last.pt and full epoch checkpoints."""
    run = train_step1.train(train_step1.parse_opt(step1_flags(synthetic, tmp_path, 2)))
    assert results_epochs(run) == [0, 1]
    for name in ('opt.yaml', 'hyp.yaml', 'cfg.yaml', 'results.csv', 'results.png', 'LR.png', 'labels.png',
                 'train_batch0.jpg', 'test_batch0_labels.jpg', 'confusion_matrix.png'):
        assert (run / name).is_file(), name
    last = read_checkpoint(run / 'weights' / 'last.pt')  # weights_only
    assert last['epoch'] == -1 and last['optimizer'] is None and last['ema'] is None  # stripped
    assert all(v.dtype in (torch.float16, torch.int64) for v in last['model'].values())
    epoch0 = read_checkpoint(run / 'weights' / 'epoch_000.pt')
    assert epoch0['epoch'] == 0 and epoch0['optimizer'] is not None and isinstance(epoch0['best_fitness'], float)
    assert sorted(p.name for p in (run / 'weights').glob('*.pt')) == ['best.pt', 'epoch_000.pt', 'epoch_001.pt',
                                                                      'last.pt']


def test_kill_and_resume_twice_leaves_no_gap_or_duplicate(tmp_path: Path, synthetic: dict, no_plots, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-epoch run SIGKILLed early in epoch 1 and again early in epoch 2, then finished by a bare --resume, logs
    each epoch once (results.txt and .csv) and ends stripped; resuming it again is one 'nothing to resume' line."""
    run = tmp_path / 'runs' / 'exp'
    kill_after_epochs(train_step1.main, step1_flags(synthetic, tmp_path / 'runs', 3), run, 1)
    kill_after_epochs(train_step1.main, ['--resume', str(run / 'weights' / 'last.pt')], run, 2)
    monkeypatch.chdir(tmp_path)  # a bare --resume takes the newest last*.pt under the working directory
    assert train_step1.train(train_step1.parse_opt(['--resume'])).resolve() == run  # last leg in-process: no kill
    assert results_epochs(run) == [0, 1, 2]
    rows = np.loadtxt(run / 'results.csv', delimiter=',', skiprows=1, ndmin=2)
    assert rows[:, 0].tolist() == [0, 1, 2]
    assert read_checkpoint(run / 'weights' / 'last.pt')['epoch'] == -1
    capsys.readouterr()
    with pytest.raises(SystemExit) as again:
        train_step1.main(['--resume', str(run / 'weights' / 'last.pt')])
    assert again.value.code == 2 and 'nothing to resume' in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize('optimizer', [[], ['--adam']], ids=['sgd', 'adam'])
def test_resume_continues_the_learning_rate_schedule(tmp_path: Path, synthetic: dict, no_plots,
                                                     optimizer: list[str]) -> None:
    """Resumed after epoch 1 of 4 (warmup over after the second step; p5's cosine to lrf 0.1), epochs 2 and 3
    train at the rates the uninterrupted run had, in every param group. Before the fix the scheduler, created after the
    optimizer state was loaded, reset them to lr0·lf(0) for the first resumed epoch."""
    run = train_step1.train(train_step1.parse_opt(step1_flags(synthetic, tmp_path / 'runs', 4, '--notest', *optimizer)))
    lr0 = yaml.safe_load(Path(synthetic['hyp']).read_text())['lr0']
    assert_resume_keeps_the_rates(run, lambda argv: train_step1.train(train_step1.parse_opt(argv)),
                                  tmp_path / 'resumed', lr0)


def test_resume_keeps_the_run_options_but_takes_device_and_no_amp(tmp_path: Path) -> None:
    from utils.train.options import resume_options
    run = tmp_path / 'runs' / 'exp'
    (run / 'weights').mkdir(parents=True)
    (run / 'opt.yaml').write_text(yaml.safe_dump({'epochs': 7, 'device': '0', 'no_amp': False, 'hyp': 'h.yaml',
                                                  'total_batch_size': 4, 'workers': 3}))
    torch.save({'model': {}, 'epoch': 2, 'optimizer': {'state': {}, 'param_groups': []}}, run / 'weights' / 'last.pt')
    opt = train_step1.parse_opt(['--cfg', 'x.yaml', '--resume', str(run / 'weights' / 'last.pt'), '--device', 'cpu',
                                 '--no-amp', '--epochs', '99'])
    resumed = resume_options(opt)
    assert (resumed.epochs, resumed.workers, resumed.batch_size) == (7, 3, 4)  # the run's own
    assert resumed.device == 'cpu' and resumed.no_amp is True and resumed.save_dir == str(run)


class _NanTrainer(Trainer):
    def forward_loss(self, model, imgs, targets):
        loss, items = super().forward_loss(model, imgs, targets)
        return (loss * float('nan'), items) if self.epoch_now >= 1 else (loss, items)

    def on_epoch_start(self, model) -> None:
        super().on_epoch_start(model)
        self.epoch_now = getattr(self, 'epoch_now', -1) + 1


def test_nan_losses_stop_with_one_line_and_keep_the_last_checkpoint(tmp_path: Path, synthetic: dict,
                                                                     no_plots) -> None:
    """Losses NaN from epoch 1 on: training stops after 5 bad steps in a row (all within epoch 1's 6 batches of 1)
    with one line, and last.pt is epoch 0's."""
    opt = train_step1.parse_opt(step1_flags(synthetic, tmp_path, 3, '--batch-size', '1'))
    from utils.train.trainer import train
    with pytest.raises(TrainingError, match='NaN/inf for 5 steps in a row'):
        train(opt, _NanTrainer)
    assert read_checkpoint(tmp_path / 'exp' / 'weights' / 'last.pt')['epoch'] == 0


@pytest.mark.parametrize('extra,message', [
    (['--weight', '{other}'], 'tensors fit'),
    (['--data', '{no val}'], 'missing val'),
    (['--data', '{nc 1}'], 'labels use class 2 but nc is 1'),
    (['--hyp', 'nope.yaml'], '--hyp nope.yaml: no such file'),
    (['--resume'], 'no last*.pt found'),
    (['--epochs', '0'], '--epochs 0'),
    (['--single-backbone'], 'has a second backbone'),
    (['--batch-size', '3', '{2 processes}'], 'not a multiple of the 2 processes'),
])
def test_bad_training_input_is_one_line(tmp_path: Path, synthetic: dict, capsys, monkeypatch, extra: list,
                                       message: str) -> None:
    data = yaml.safe_load(Path(synthetic['data']).read_text())
    base = Path(synthetic['data']).parent
    if '{other}' in extra:
        from models.checkpoint import half_state_dict, save_checkpoint
        from models.yolo import Model
        other = Model({**tiny_config(dynamic=False), 'width_multiple': 2.0})  # twice as wide: 40 of 204 tensors fit
        save_checkpoint({'model': half_state_dict(other)}, tmp_path / 'other.pt')
        extra = ['--weight', str(tmp_path / 'other.pt')]
    elif '{no val}' in extra or '{nc 1}' in extra:
        changed = {k: v for k, v in data.items() if k != 'val'} if '{no val}' in extra else {**data, 'nc': 1,
                                                                                                'names': ['x']}
        changed['path'] = str(base)
        (tmp_path / 'd.yaml').write_text(yaml.safe_dump(changed))
        extra = ['--data', str(tmp_path / 'd.yaml')]
    if '{2 processes}' in extra:  # what torchrun sets; the check runs before any process group is joined
        monkeypatch.setenv('WORLD_SIZE', '2')
        monkeypatch.setenv('RANK', '0')
        monkeypatch.setenv('LOCAL_RANK', '0')
        extra = extra[:-1]
    monkeypatch.chdir(tmp_path)  # a bare --resume searches the working directory
    with pytest.raises(SystemExit) as e:
        train_step1.main(step1_flags(synthetic, tmp_path / 'runs', 1, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and 'Traceback' not in '\n'.join(err)


@pytest.mark.parametrize('extra', [
    ['--image-weights', '--multi-scale', '--cache-images', '--linear-lr', '--freeze', '2'],
    ['--quad', '--rect', '--adam', '--label-smoothing', '0.1', '--single-cls', '--save_period', '1'],
])
def test_recipe_flags_train_an_epoch(tmp_path: Path, synthetic: dict, no_plots, extra: list) -> None:
    run = train_step1.train(train_step1.parse_opt(step1_flags(synthetic, tmp_path, 1, *extra)))
    assert results_epochs(run) == [0]
    rows = np.loadtxt(run / 'results.csv', delimiter=',', skiprows=1, ndmin=2)
    assert np.isfinite(rows).all()


@pytest.mark.parametrize('text, message', [
    ('- 1\n', 'hyperparameters must be a mapping of keys, got list'),
    ('lr0: [0.01\n', 'not valid YAML for hyperparameters'),
    ('{drop}', 'missing lr0, mosaic; start from a shipped file'),
    ('{lr0: fast}', 'lr0 must be a number'),
    ('{gain: -1}', 'hard_path_lr_gain must be positive'),
])
def test_bad_hyp_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    """A hyp YAML that is not a mapping, does not parse, lacks a key the recipe reads or holds a non-number is one
    TrainOptionError line naming the file; every shipped hyp passes."""
    from utils.errors import TrainOptionError
    from utils.hyp import load_hyp
    root = Path(__file__).resolve().parents[1]
    for shipped in (root / 'hyp').glob('*.yaml'):
        load_hyp(str(shipped))
    hyp = yaml.safe_load((root / 'hyp/hyp.scratch.p5.yaml').read_text())
    if text == '{drop}':
        text = yaml.safe_dump({k: v for k, v in hyp.items() if k not in ('lr0', 'mosaic')})
    elif text == '{lr0: fast}':
        text = yaml.safe_dump({**hyp, 'lr0': 'fast'})
    elif text == '{gain: -1}':
        text = yaml.safe_dump({**hyp, 'hard_path_lr_gain': -1})
    (tmp_path / 'h.yaml').write_text(text)
    with pytest.raises(TrainOptionError, match=message) as e:
        load_hyp(str(tmp_path / 'h.yaml'))
    assert str(tmp_path / 'h.yaml') in str(e.value) and '\n' not in str(e.value)


def test_bf16_amp_on_the_cpu_trains_and_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """--amp runs training's autocast path on the CPU (bfloat16; no loss scaling), so CI executes it: the small
    model on 32 synthetic 64-px images with the demo's step-1 recipe for 20 epochs (80 Adam steps) ends with a loss
    on its training images at most 0.90 of the starting weights' (measured 0.76-0.85 over seeds 0-3, fp32 0.78
    for seed 0; untrained weights give exactly 1)."""
    import logging

    import demo
    from tests.train_helpers import ProbedTrainer
    from utils.data.synthetic import generate_dataset
    from utils.train.trainer import train
    skip_run_plots(monkeypatch)
    monkeypatch.setattr(ProbedTrainer, 'probe', [])
    data = generate_dataset(tmp_path / 'data', 40, img_size=64, val_fraction=0.2, seed=0)
    (tmp_path / 'small.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=False)))
    flags = ['--cfg', str(tmp_path / 'small.yaml'), '--weight', '', '--hyp', str(demo.HYP1), '--epochs', '20',
             '--img', '64', '--batch-size', '8', '--workers', '0', '--device', 'cpu', '--data', str(data),
             '--project', str(tmp_path), '--notest', '--nosave', '--seed', '0', '--adam', '--noautoanchor', '--amp']
    with caplog.at_level(logging.INFO, logger='utils.train.trainer'):
        train(train_step1.parse_opt(flags), ProbedTrainer, configure_logging=False)
    assert any(r.getMessage().startswith('AMP: bfloat16 autocast on the CPU') for r in caplog.records)
    before, after = ProbedTrainer.probe
    assert after <= 0.90 * before, (before, after)


@pytest.mark.parametrize('device,flags,expected', [
    ('cuda', {}, torch.float16), ('cuda', {'disabled': True}, None), ('cpu', {'forced': True}, torch.bfloat16),
    ('cpu', {'disabled': True, 'forced': True}, None)])
def test_amp_dtype_rule(device: str, flags: dict, expected) -> None:
    from utils.torch_utils import amp_dtype
    assert amp_dtype(torch.device(device), **flags) == expected


def test_cpu_trains_in_fp32_unless_amp_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference trains in fp32 on the CPU: so do we by default, whether or not the CPU has native bfloat16
    (bf16 autocast used to be the default there, so one command trained differently on different CPUs); --amp
    asks for bfloat16 autocast on any CPU."""
    from utils import torch_utils
    for native in (True, False):
        monkeypatch.setattr(torch_utils, 'native_bf16', lambda native=native: native)
        assert torch_utils.amp_dtype(torch.device('cpu')) is None
        assert torch_utils.amp_dtype(torch.device('cpu'), forced=True) == torch.bfloat16


def test_fine_tuning_an_unstripped_checkpoint_counts_epochs_as_the_reference() -> None:
    """The reference's train.py: a checkpoint saved after epoch E (from 0) and --epochs N < E + 1 trains to N + E,
    from E + 1, i.e. N − 1 more epochs (we used to train N more), with the learning-rate schedule over N."""
    import types

    from utils.train.checkpoint import epochs_to_train
    from utils.train.optim import lr_lambda
    assert epochs_to_train({'epoch': 4}, 3, 'w.pt') == 7  # epochs 5 and 6: two more
    assert epochs_to_train({'epoch': 1}, 5, 'w.pt') == 5 and epochs_to_train({}, 5, 'w.pt') == 5
    assert epochs_to_train({'epoch': -1}, 3, 'w.pt') == 3  # a stripped checkpoint starts afresh
    trainer = types.SimpleNamespace(epochs=7, opt=types.SimpleNamespace(epochs=3, linear_lr=False), hyp={'lrf': 0.1})
    schedule, expected = Trainer.lr_function(trainer), lr_lambda(3, 0.1)
    assert [schedule(e) for e in range(7)] == [expected(e) for e in range(7)]


def test_cuda_out_of_memory_is_one_line_with_half_the_batch(tmp_path: Path, synthetic: dict, no_plots,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-only OOM branch, on the CPU: torch's out-of-memory error becomes one line that names the batch size
    and suggests half of it."""
    def out_of_memory(self, epoch):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail')
    monkeypatch.setattr(Trainer, 'train_epoch', out_of_memory)
    with pytest.raises(TrainingError, match=r'^CUDA out of memory at --batch-size 6 \(CUDA out of memory\. Tried to '
                                            r'allocate 2\.00 GiB\); try --batch-size 3$'):
        train_step1.train(train_step1.parse_opt(step1_flags(synthetic, tmp_path, 1)))


def test_patience_stops_after_that_many_epochs_without_a_better_fitness(tmp_path: Path, synthetic: dict, no_plots,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--patience 2 with the fitness best at epoch 0 and worse after: training stops after epoch 2 of 6, and the
    stop decision goes through the same broadcast as under DDP."""
    fitness_by_epoch = iter([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(Trainer, 'validate_epoch',
                        lambda self, epoch, final: (0.0, 0.0, 0.0, next(fitness_by_epoch), 0.0, 0.0, 0.0))
    run = train_step1.train(train_step1.parse_opt(step1_flags(synthetic, tmp_path, 6, '--patience', '2')))
    assert results_epochs(run) == [0, 1, 2]


def test_allow_partial_weights_loads_what_fits_and_goes_on(tmp_path: Path, synthetic: dict) -> None:
    """A --weight of which only one tensor fits the --cfg stops with one line by default; with
    --allow-partial-weights that tensor is loaded and training can start from the rest as initialised."""
    import argparse

    from models.checkpoint import save_checkpoint
    from models.yolo import Model
    from utils.errors import TrainOptionError
    from utils.train.setup import load_initial_weights
    model = Model(synthetic['cfg'])
    key, value = next(iter(model.state_dict().items()))
    save_checkpoint({'model': {key: torch.full_like(value, 0.5)}}, tmp_path / 'partial.pt')
    opt = argparse.Namespace(weight=str(tmp_path / 'partial.pt'), cfg=synthetic['cfg'], resume=False,
                             allow_partial_weights=False)
    with pytest.raises(TrainOptionError, match=r'only 1/\d+ tensors fit .*--allow-partial-weights'):
        load_initial_weights(model, opt)
    opt.allow_partial_weights = True
    load_initial_weights(model, opt)
    assert torch.equal(model.state_dict()[key], torch.full_like(value, 0.5))
