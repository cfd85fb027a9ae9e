"""W&B logging through a fake `wandb` module (no network, no install): what a training run sends, a resumed run
continuing the same W&B run, and one warning for W&B flags when wandb is absent."""
from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest
import yaml

import train_step1
from models.checkpoint import read_checkpoint
from tests.helpers import quick_step1_files, tiny_config
from tests.train_helpers import resume_copy


class FakeRun:
    """Records what a W&B run is sent."""

    def __init__(self, calls: list, **kwargs) -> None:
        self.calls, self.id = calls, kwargs.get('id') or 'run0001'
        calls.append(('init', kwargs))

    def log(self, values: dict) -> None:
        self.calls.append(('log', values))

    def log_artifact(self, artifact, aliases=None) -> None:
        self.calls.append(('artifact', artifact.type, sorted(artifact.files), aliases))

    def use_artifact(self, name: str):
        raise AssertionError(f'no artifact expected: {name}')

    def finish(self, exit_code: int = 0) -> None:
        self.calls.append(('finish', exit_code))


def _fake_wandb(calls: list) -> types.ModuleType:
    module = types.ModuleType('wandb')
    module.init = lambda **kwargs: FakeRun(calls, **kwargs)

    class Artifact:
        def __init__(self, name: str, type: str, metadata: dict | None = None) -> None:
            self.name, self.type, self.files = name, type, []

        def add_file(self, path: str, name: str | None = None) -> None:
            assert Path(path).is_file()
            self.files.append(name)

        def add_dir(self, path: str, name: str | None = None) -> None:
            self.files.append(f'{name}/')
    module.Artifact = Artifact
    module.Image = lambda path, caption=None: ('image', Path(path).name)
    return module


@pytest.fixture
def small_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Flags of a 2-epoch run of the small model on 8 synthetic images (one step an epoch); validation still
    draws its images (what --bbox_interval sends), the run's other figures are skipped."""
    import utils.train.trainer as trainer
    for name in ('plot_results', 'plot_labels', 'plot_lr_schedule'):
        monkeypatch.setattr(trainer, name, lambda *args, **kwargs: None)
    monkeypatch.delenv('WANDB_DISABLED', raising=False)
    monkeypatch.delenv('WANDB_MODE', raising=False)
    data, hyp = quick_step1_files(tmp_path, 8, seed=0)
    (tmp_path / 'small.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=False)))
    return ['--cfg', str(tmp_path / 'small.yaml'), '--data', str(data), '--hyp', str(hyp), '--epochs', '2',
            '--batch-size', '6', '--img', '64', '--device', 'cpu', '--workers', '0', '--noautoanchor',
            '--project', str(tmp_path / 'runs')]


def test_a_run_logs_epochs_images_artifacts_and_resumes_the_same_wandb_run(small_run: list, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, 'wandb', _fake_wandb(calls))
    run = train_step1.train(train_step1.parse_opt(small_run + [
        '--entity', 'lab', '--bbox_interval', '1', '--save_period', '1', '--upload_dataset']))
    init = calls[0][1]
    assert (init['project'], init['name'], init['entity'], init['id']) == ('runs', 'exp', 'lab', None)
    assert init['config']['epochs'] == 2 and 'lr0' in init['config']['hyp']
    epochs = [c[1] for c in calls if c[0] == 'log' and 'epoch' in c[1]]
    assert [e['epoch'] for e in epochs] == [0, 1]
    assert all('metrics/mAP_0.5' in e and 'x/lr0' in e and 'train/box_loss' in e for e in epochs)
    assert all(e['Bounding Box Debugger/Images'] for e in epochs)  # --bbox_interval 1: every epoch
    artifacts = [c for c in calls if c[0] == 'artifact']
    assert artifacts[0][1:3] == ('dataset', ['data.yaml', 'train.txt', 'val.txt'])
    models = [c for c in artifacts if c[1] == 'model']
    assert len(models) == 3 and models[0][3][:2] == ['latest', 'epoch 1'] and models[-1][3][0] == 'last'
    assert ('finish', 0) == calls[-1] and any(c[0] == 'log' and 'Results' in c[1] for c in calls)
    assert read_checkpoint(run / 'weights' / 'epoch_000.pt')['wandb_id'] == 'run0001'
    calls.clear()
    resumed = resume_copy(run, 'epoch_000.pt', tmp_path / 'resumed')
    train_step1.train(train_step1.parse_opt(['--resume', str(resumed / 'weights' / 'last.pt')]))
    assert (calls[0][1]['id'], calls[0][1]['resume']) == ('run0001', 'allow')
    assert [c[1]['epoch'] for c in calls if c[0] == 'log' and 'epoch' in c[1]] == [1]
    assert not [c for c in calls if c[0] == 'artifact' and c[1] == 'dataset']  # uploaded once, by the first run


def test_without_wandb_a_wandb_flag_warns_once(small_run: list, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb raises ImportError
    with caplog.at_level(logging.WARNING):
        train_step1.train(train_step1.parse_opt(small_run + ['--epochs', '1', '--bbox_interval', '5', '--entity',
                                                             'lab']), configure_logging=False)
    warnings = [r.getMessage() for r in caplog.records if 'W&B' in r.getMessage()]
    assert warnings == ['WARNING: --entity, --bbox_interval: W&B is not installed (pip install wandb) or is '
                        'disabled by WANDB_DISABLED/WANDB_MODE; ignored']


def test_wandb_disabled_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.train.wandb_logging import wandb_module
    monkeypatch.setitem(sys.modules, 'wandb', types.ModuleType('wandb'))
    monkeypatch.delenv('WANDB_DISABLED', raising=False)
    monkeypatch.setenv('WANDB_MODE', 'offline')
    assert wandb_module() is sys.modules['wandb']
    monkeypatch.setenv('WANDB_MODE', 'disabled')
    assert wandb_module() is None
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DISABLED', 'true')
    assert wandb_module() is None


def test_artifact_data_paths_download_at_the_alias(tmp_path: Path) -> None:
    """A data YAML split written wandb-artifact://NAME is kept as is by the data loader's path resolution and
    downloaded from NAME:--artifact_alias; without W&B (or under DDP) it is one line."""
    import argparse

    from utils.data.data_config import load_data_config
    from utils.train.wandb_logging import WandbError, WandbRun, check_artifact_paths
    (tmp_path / 'd.yaml').write_text('train: wandb-artifact://shapes_train\nval: val.txt\nnc: 1\n')
    data = load_data_config(tmp_path / 'd.yaml')
    asked = []
    run = types.SimpleNamespace(use_artifact=lambda name: asked.append(name) or types.SimpleNamespace(
        download=lambda: tmp_path / 'downloaded'))
    wandb_run = WandbRun(None, run, argparse.Namespace(artifact_alias='v3'), tmp_path)
    check_artifact_paths(data, resolvable=True)
    resolved = wandb_run.resolve_data(data)
    assert asked == ['shapes_train:v3'] and resolved['train'] == [str(tmp_path / 'downloaded')]
    assert resolved['val'] == data['val'] == [str(tmp_path / 'val.txt')]
    with pytest.raises(WandbError, match="train split is a W&B artifact"):
        check_artifact_paths(data, resolvable=False)


def test_wandb_that_cannot_start_is_one_warning_and_training_goes_on(small_run: list, monkeypatch, caplog) -> None:
    """W&B installed but not logged in: `wandb.init` raises (as the real one's UsageError: 'No API key configured');
    the training ends normally after one warning that says how to fix it (it used to die with a traceback)."""
    module = types.ModuleType('wandb')

    def init(**kwargs):
        raise RuntimeError('No API key configured. Use `wandb login` to log in.')
    module.init = init
    monkeypatch.setitem(sys.modules, 'wandb', module)
    with caplog.at_level(logging.WARNING):
        run = train_step1.train(train_step1.parse_opt(small_run + ['--epochs', '1']), configure_logging=False)
    assert (run / 'weights' / 'last.pt').is_file()
    warnings = [r.getMessage() for r in caplog.records if 'W&B could not start' in r.getMessage()]
    assert len(warnings) == 1 and 'No API key configured' in warnings[0] and 'wandb login' in warnings[0]
    assert 'WANDB_MODE=offline' in warnings[0]
