"""Step-1 training on the CPU: a run's files, kill-and-resume, 2-process DDP (gloo), bad input in one line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train_step1
from models.checkpoint import read_checkpoint
from tests.helpers import quick_step1_files
from utils.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'cfg' / 'dy-yolov7-tiny-step1.yaml')


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """32 synthetic 96-px images (24 train, 8 val) and a quick hyp (short warmup, no mosaic)."""
    data, hyp = quick_step1_files(tmp_path_factory.mktemp('synthetic'), 32, seed=0)
    return {'data': str(data), 'hyp': str(hyp)}


def _flags(synthetic: dict, project: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ['--cfg', TINY, '--data', synthetic['data'], '--hyp', synthetic['hyp'], '--epochs', str(epochs),
            '--batch-size', '8', '--img', '64', '--device', 'cpu', '--workers', '0', '--noautoanchor',
            '--project', str(project), *extra]


def _results_epochs(run: Path) -> list[int]:
    return [int(line.split()[0].split('/')[0]) for line in (run / 'results.txt').read_text().splitlines()]


def test_training_run_writes_the_reference_outputs(tmp_path: Path, synthetic: dict) -> None:
    run = train_step1.train(train_step1.parse_opt(_flags(synthetic, tmp_path, 2)))
    assert _results_epochs(run) == [0, 1]
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


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / 'train_step1.py'), *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after_epochs(process: subprocess.Popen, run: Path, done: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if (run / 'results.txt').is_file() and len(_results_epochs(run)) >= done:
            time.sleep(0.3)  # into the next epoch
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.1)
    raise AssertionError(f'training did not reach {done} epochs: {process.stderr.read() if process.stderr else ""}')


def test_kill_and_resume_twice_leaves_no_gap_or_duplicate(tmp_path: Path, synthetic: dict) -> None:
    run = tmp_path / 'runs' / 'exp'
    _kill_after_epochs(_start(_flags(synthetic, tmp_path / 'runs', 5), tmp_path), run, 1)
    for p in (run / 'weights').glob('*.pt'):
        assert read_checkpoint(p)['epoch'] >= 0  # every file on disk loads (none half-written)
    _kill_after_epochs(_start(['--resume', str(run / 'weights' / 'last.pt')], tmp_path), run, 3)
    done = subprocess.run([sys.executable, str(ROOT / 'train_step1.py'), '--resume'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _results_epochs(run) == [0, 1, 2, 3, 4]
    rows = np.loadtxt(run / 'results.csv', delimiter=',', skiprows=1, ndmin=2)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert read_checkpoint(run / 'weights' / 'last.pt')['epoch'] == -1
    again = subprocess.run([sys.executable, str(ROOT / 'train_step1.py'), '--resume', str(run / 'weights' / 'last.pt')],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and 'nothing to resume' in again.stderr.strip().splitlines()[-1]


def test_resume_keeps_the_run_options_but_takes_device_and_no_amp(tmp_path: Path) -> None:
    from utils.train_options import resume_options
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


def test_two_process_ddp_on_cpu_ends_with_identical_weights(tmp_path: Path, synthetic: dict) -> None:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29533',
           str(ROOT / 'tests' / 'ddp_train_worker.py'), str(tmp_path), *_flags(synthetic, tmp_path / 'runs', 1)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for k in rank0:  # parameters; BN running statistics are per rank between DDP's buffer broadcasts
        torch.testing.assert_close(rank0[k], rank1[k], rtol=0, atol=0, msg=k)
    assert _results_epochs(tmp_path / 'runs' / 'exp') == [0]  # rank 0 alone logged (one line, not two)


class _NanTrainer(Trainer):
    def forward_loss(self, model, imgs, targets):
        loss, items = super().forward_loss(model, imgs, targets)
        return (loss * float('nan'), items) if self.epoch_now >= 1 else (loss, items)

    def on_epoch_start(self, model) -> None:
        super().on_epoch_start(model)
        self.epoch_now = getattr(self, 'epoch_now', -1) + 1


def test_nan_losses_stop_with_one_line_and_keep_the_last_checkpoint(tmp_path: Path, synthetic: dict) -> None:
    opt = train_step1.parse_opt(_flags(synthetic, tmp_path, 3, '--batch-size', '2'))
    from utils.trainer import train
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
        from tests.helpers import tiny_config
        save_checkpoint({'model': half_state_dict(Model(tiny_config(dynamic=False)))}, tmp_path / 'other.pt')
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
        train_step1.main(_flags(synthetic, tmp_path / 'runs', 1, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and 'Traceback' not in '\n'.join(err)


@pytest.mark.parametrize('extra', [
    ['--image-weights', '--multi-scale', '--cache-images', '--linear-lr', '--freeze', '10'],
    ['--quad', '--rect', '--adam', '--label-smoothing', '0.1', '--single-cls', '--save_period', '1'],
])
def test_recipe_flags_train_an_epoch(tmp_path: Path, synthetic: dict, extra: list) -> None:
    run = train_step1.train(train_step1.parse_opt(_flags(synthetic, tmp_path, 1, *extra)))
    assert _results_epochs(run) == [0]
    rows = np.loadtxt(run / 'results.csv', delimiter=',', skiprows=1, ndmin=2)
    assert np.isfinite(rows).all()


@pytest.mark.parametrize('text, message', [
    ('- 1\n', 'hyperparameters must be a mapping of keys, got list'),
    ('lr0: [0.01\n', 'not valid YAML for hyperparameters'),
    ('{drop}', 'missing lr0, mosaic; start from a shipped file'),
    ('{lr0: fast}', 'lr0 must be a number'),
])
def test_bad_hyp_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    """A hyp YAML that is not a mapping, does not parse, lacks a key the recipe reads or holds a non-number is one
    TrainOptionError line naming the file; every shipped hyp passes."""
    from utils.train_options import TrainOptionError, load_hyp
    root = Path(__file__).resolve().parents[1]
    for shipped in (root / 'hyp').glob('*.yaml'):
        load_hyp(str(shipped))
    hyp = yaml.safe_load((root / 'hyp/hyp.scratch.p5.yaml').read_text())
    if text == '{drop}':
        text = yaml.safe_dump({k: v for k, v in hyp.items() if k not in ('lr0', 'mosaic')})
    elif text == '{lr0: fast}':
        text = yaml.safe_dump({**hyp, 'lr0': 'fast'})
    (tmp_path / 'h.yaml').write_text(text)
    with pytest.raises(TrainOptionError, match=message) as e:
        load_hyp(str(tmp_path / 'h.yaml'))
    assert str(tmp_path / 'h.yaml') in str(e.value) and '\n' not in str(e.value)
