"""Training inputs that used to fail late, silently or with a traceback: each is now one line before any run folder
exists, or a guarantee (step 2 never touches the detector's tensors, anchors included; no NaN checkpoint is saved;
Ctrl-C says how to continue).

The runs train the small two-level model of tests/helpers.py on 8 synthetic images at 64 px for one epoch; the
step-1 weights are a fresh model's (what is checked does not depend on trained weights)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import train_step1
import train_step2
from models.checkpoint import half_state_dict, read_checkpoint, save_checkpoint
from models.yolo import Model
from tests.helpers import ROOT, cli_error_line, quick_step1_files, tiny_config
from tests.train_helpers import skip_run_plots
from utils.errors import TrainOptionError
from utils.train.checkpoint import restore_training_state
from utils.train.trainer import Trainer, TrainingError

TINY_BOX = 0.04  # label w, h: 2.6 px at 64 px, below a quarter of every anchor of the small config


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Synthetic data whose boxes are all tiny (autoanchor would re-fit the anchors), the small step-1/step-2
    configs, quick step-1 and step-2 hyps, and step-1 weights (a fresh model's, fp16 as every checkpoint)."""
    folder = tmp_path_factory.mktemp('inputs')
    data, hyp1 = quick_step1_files(folder, 8, seed=3)
    for label in (data.parent / 'labels').glob('*/*.txt'):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text(''.join(f'{c} {x} {y} {TINY_BOX} {TINY_BOX}\n' for c, x, y, *_ in rows))
    for step in (1, 2):
        (folder / f'small-step{step}.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=step == 2)))
    hyp2 = yaml.safe_load((ROOT / 'hyp' / 'hyp.finetune.dynamic.adam.yaml').read_text())
    hyp2.update(lr0=0.01, warmup_min_iterations=0, nbs=2)
    (folder / 'hyp2.yaml').write_text(yaml.safe_dump(hyp2))
    save_checkpoint({'model': half_state_dict(Model(folder / 'small-step1.yaml'))}, folder / 'step1.pt')
    return {'data': str(data), 'hyp1': str(hyp1), 'hyp2': str(folder / 'hyp2.yaml'), 'weights': str(folder / 'step1.pt'),
            'cfg1': str(folder / 'small-step1.yaml'), 'cfg2': str(folder / 'small-step2.yaml')}


def _step1_flags(files: dict, project: Path, *extra: str) -> list[str]:
    return ['--cfg', files['cfg1'], '--data', files['data'], '--hyp', files['hyp1'], '--epochs', '1', '--batch-size',
            '6', '--img', '64', '--device', 'cpu', '--workers', '0', '--noautoanchor', '--project', str(project),
            *extra]


def _step2_flags(files: dict, project: Path, *extra: str) -> list[str]:
    """Step-2 flags without --noautoanchor: autoanchor checks the anchors (and must not re-fit them)."""
    return ['--cfg', files['cfg2'], '--weight', files['weights'], '--data', files['data'], '--hyp', files['hyp2'],
            '--epochs', '1', '--batch-size', '2', '--img', '64', '--device', 'cpu', '--workers', '0', '--adam',
            '--project', str(project), *extra]


@pytest.fixture(scope='module')
def step2_run(tmp_path_factory: pytest.TempPathFactory, files: dict) -> Path:
    """A finished 1-epoch step-2 run on the tiny boxes (epoch_000.pt keeps its optimizer: an unfinished run's)."""
    with pytest.MonkeyPatch.context() as patch:
        skip_run_plots(patch)
        return train_step2.run(train_step2.parse_opt(_step2_flags(files, tmp_path_factory.mktemp('step2'))))


def test_step2_keeps_every_detector_tensor_anchors_included(files: dict, step2_run: Path, capsys) -> None:
    """Autoanchor would re-fit these anchors on the tiny boxes, but step 2 only reports the fit: every detector tensor and
    buffer (anchors, anchor_grid, BN statistics) of its checkpoints is bit-identical to the step-1 weights."""
    from utils.data.dataloaders import create_dataloader
    from utils.train.autoanchor import check_anchors
    dataset = create_dataloader(files['data'].replace('data.yaml', 'train.txt'), 64, 2, 32, workers=0)[1]
    assert check_anchors(dataset, Model(files['cfg1']), thr=4.0, imgsz=64)  # what step 2 used to do to them
    before = read_checkpoint(files['weights'])['model']
    assert any('anchor' in k for k in before)
    for name in ('epoch_000.pt', 'last.pt'):
        after = read_checkpoint(step2_run / 'weights' / name)['model']
        for k, v in before.items():
            assert torch.equal(after[k], v), (name, k)


def test_step2_reports_the_anchor_fit_without_refitting(files: dict, tmp_path: Path, caplog,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One line says the anchors fit badly and stay the detector's; no 'New anchors saved' line appears."""
    from utils.train.trainer import train
    skip_run_plots(monkeypatch)
    with caplog.at_level(logging.INFO):
        train(train_step2.parse_opt(_step2_flags(files, tmp_path, '--notest', '--nosave')), train_step2.Step2Trainer,
              configure_logging=False)
    messages = [r.getMessage() for r in caplog.records]
    assert sum('anchors stay the frozen step-1 detector' in m for m in messages) == 1
    assert not any('New anchors' in m for m in messages)


def test_step2_without_weight_is_one_line(files: dict, tmp_path: Path, capsys) -> None:
    """--weight '' used to train a router on a random detector; no run folder is made."""
    argv = _step2_flags(files, tmp_path / 'runs')
    argv[argv.index('--weight') + 1] = ''
    assert '--weight is required' in cli_error_line(train_step2.main, argv, capsys)
    assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('key,value,message', [
    ('lr0', float('nan'), 'lr0 is nan; give a finite number'),
    ('momentum', float('inf'), 'momentum is inf'),
    ('lr0', -0.01, 'lr0 must be positive'),
    ('weight_decay', -1e-4, 'weight_decay must be >= 0'),
    ('fliplr', 1.5, 'fliplr must lie in [0, 1]'),
    ('paste_in', -0.1, 'paste_in must lie in [0, 1]'),
    ('anchor_t', 0, 'anchor_t must be positive'),
    ('nbs', 0.5, 'nbs must be at least 1'),
])
def test_invalid_hyp_values_are_one_line(files: dict, tmp_path: Path, capsys, key: str, value: float,
                                         message: str) -> None:
    """A non-finite or impossible value stops before any run folder (NaN used to train and save NaN
    weights, a negative lr0 was torch's traceback)."""
    hyp = yaml.safe_load(Path(files['hyp1']).read_text())
    (tmp_path / 'h.yaml').write_text(yaml.safe_dump({**hyp, key: value}))
    argv = _step1_flags(files, tmp_path / 'runs', '--hyp', str(tmp_path / 'h.yaml'))
    line = cli_error_line(train_step1.main, argv, capsys)
    assert message in line and str(tmp_path / 'h.yaml') in line
    assert not (tmp_path / 'runs').exists()


class _PoisonedTrainer(Trainer):
    """Step 1 whose weights turn NaN during epoch 0 (as a too-high lr0 makes them)."""

    def train_epoch(self, epoch: int):
        result = super().train_epoch(epoch)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float('nan'))
        return result


def test_non_finite_weights_are_never_saved(files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN weights stop training with one line saying to lower lr0, and no checkpoint holds them."""
    from utils.train.trainer import train
    skip_run_plots(monkeypatch)
    with pytest.raises(TrainingError, match='became NaN/inf at epoch 0 .*lower lr0') as e:
        train(train_step1.parse_opt(_step1_flags(files, tmp_path, '--notest')), _PoisonedTrainer,
              configure_logging=False)
    assert '\n' not in str(e.value)
    assert not list((tmp_path / 'exp' / 'weights').glob('*.pt'))


def test_step2_config_in_step1_is_one_line(files: dict, tmp_path: Path, capsys) -> None:
    """Used to fail after the first step ('ComputeLossOTADual expects 6 prediction maps, got 2')."""
    argv = _step1_flags(files, tmp_path / 'runs', '--cfg', files['cfg2'])
    line = cli_error_line(train_step1.main, argv, capsys)
    assert 'a step-2 config (it has a router)' in line and 'use the step-1 config' in line
    assert not (tmp_path / 'runs').exists()


def test_resuming_a_step2_run_with_step1_is_one_line(step2_run: Path, tmp_path: Path, capsys) -> None:
    """The step-2 optimizer used to meet step 1's groups ('different number of parameter groups')."""
    run = tmp_path / step2_run.name
    shutil.copytree(step2_run, run)
    shutil.copy2(run / 'weights' / 'epoch_000.pt', run / 'weights' / 'last.pt')  # as if killed after epoch 0
    line = cli_error_line(train_step1.main, ['--resume', str(run / 'weights' / 'last.pt')], capsys)
    assert "a step-2 run's; resume it with train_step2.py" in line


def test_unfinished_step2_checkpoint_as_step1_weight_is_one_line(files: dict, step2_run: Path, tmp_path: Path,
                                                                  capsys) -> None:
    """An unfinished step-2 checkpoint given to step 1 as --weight; no run folder is left."""
    weight = str(step2_run / 'weights' / 'epoch_000.pt')
    line = cli_error_line(train_step1.main, _step1_flags(files, tmp_path / 'runs', '--weight', weight), capsys)
    assert 'unfinished step-2 run' in line and f'train_step2.py --resume {weight}' in line
    assert not (tmp_path / 'runs').exists()


def _fake_run(folder: Path, options: dict, model: dict | None = None) -> Path:
    """A run folder holding opt.yaml and an unfinished (epoch 0, with optimizer) last.pt; returns last.pt."""
    (folder / 'weights').mkdir(parents=True)
    (folder / 'opt.yaml').write_text(yaml.safe_dump(options))
    last = folder / 'weights' / 'last.pt'
    torch.save({'model': model or {}, 'epoch': 0, 'optimizer': {'state': {}, 'param_groups': []}}, last)
    return last


def test_resuming_a_step1_run_with_step2_is_one_line(tmp_path: Path, capsys) -> None:
    """A step-1 run resumed with train_step2.py is one line naming train_step1.py."""
    last = _fake_run(tmp_path / 'exp', {'epochs': 3, 'total_batch_size': 2})
    assert "a step-1 run's; resume it with train_step1.py" in cli_error_line(train_step2.main, ['--resume', str(last)],
                                                                              capsys)


def test_an_optimizer_state_of_other_groups_is_one_line() -> None:
    """Whatever else brings an optimizer of other groups (another hard_path_lr_gain) names the file."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    other = torch.optim.SGD([{'params': [torch.nn.Parameter(torch.zeros(1))]},
                             {'params': [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1)
    with pytest.raises(TrainOptionError, match='--weight x.pt: its optimizer state does not fit'):
        restore_training_state({'optimizer': other.state_dict()}, optimizer, None, '--weight x.pt')


@pytest.mark.parametrize('cfg,message', [('missing.yaml', 'model config not found'),
                                         ('{folder}', 'is a folder, not a model config')])
def test_missing_or_folder_cfg_is_one_line(files: dict, tmp_path: Path, capsys, cfg: str, message: str) -> None:
    """Used to be FileNotFoundError / IsADirectoryError tracebacks after the run folder was made."""
    cfg = str(tmp_path) if cfg == '{folder}' else str(tmp_path / cfg)
    line = cli_error_line(train_step1.main, _step1_flags(files, tmp_path / 'runs', '--cfg', cfg), capsys)
    assert message in line and cfg in line
    assert not (tmp_path / 'runs').exists()


def test_malformed_opt_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    """Used to be yaml's ParserError traceback."""
    last = _fake_run(tmp_path / 'exp', {'epochs': 3})
    (tmp_path / 'exp' / 'opt.yaml').write_text('epochs: [3\n')
    line = cli_error_line(train_step1.main, ['--resume', str(last)], capsys)
    assert str(tmp_path / 'exp' / 'opt.yaml') in line and 'not valid YAML' in line


def test_flags_given_with_resume_are_named_once(tmp_path: Path, caplog) -> None:
    """Flags --resume replaces by the run's own used to be dropped without a word (--device is kept)."""
    from utils.train.options import resume_options
    last = _fake_run(tmp_path / 'exp', {'epochs': 3, 'total_batch_size': 2, 'device': '0'})
    opt = train_step1.parse_opt(['--resume', str(last), '--epochs', '2', '--batch-size', '4', '--data', 'x.yaml',
                                 '--device', 'cpu'])
    with caplog.at_level(logging.WARNING):
        resumed = resume_options(opt)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith('ignored: --data, --epochs, --batch-size'), warnings
    assert (resumed.epochs, resumed.batch_size, resumed.device) == (3, 2, 'cpu')


def test_resumed_run_with_a_missing_data_yaml_says_to_edit_opt_yaml(tmp_path: Path, capsys) -> None:
    """The run's own data YAML is gone; --data cannot help, its opt.yaml can."""
    last = _fake_run(tmp_path / 'exp', {'epochs': 3, 'total_batch_size': 2, 'data': str(tmp_path / 'gone.yaml')})
    line = cli_error_line(train_step1.main, ['--resume', str(last), '--data', 'other.yaml'], capsys)
    assert str(tmp_path / 'exp' / 'opt.yaml') in line and '--data is ignored with --resume' in line


def test_ctrl_c_is_one_line_naming_the_resume_command(files: dict, tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in epoch 1 of step 2 is one line with the command that continues it, exit code 130."""
    skip_run_plots(monkeypatch)
    train_epoch = Trainer.train_epoch

    def interrupted_in_epoch_1(self, epoch: int):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, 'train_epoch', interrupted_in_epoch_1)
    argv = _step2_flags(files, tmp_path, '--notest', '--epochs', '2')
    line = cli_error_line(train_step2.main, argv, capsys, code=130)
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    assert line == f'error: interrupted at epoch 1; continue with: python train_step2.py --resume {last}'
    assert read_checkpoint(last)['epoch'] == 0


def test_a_failed_start_leaves_no_run_folder(files: dict, tmp_path: Path, capsys) -> None:
    """Weights that do not fit the config fail after the options checks, before the run files are written."""
    argv = _step2_flags(files, tmp_path / 'runs', '--cfg', str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'))
    assert 'detector tensors missing' in cli_error_line(train_step2.main, argv, capsys)
    assert not (tmp_path / 'runs').exists()
