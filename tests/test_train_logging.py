"""Run-folder outputs of training: progress text, results.txt/csv and resume, plots, TensorBoard and W&B switches."""
from __future__ import annotations

import logging
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.train import outputs as run_outputs
from utils.train.outputs import (
    ResultsLog,
    TrainWriter,
    progress_header,
    progress_line,
    read_results_csv,
)

RESULTS = (0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125)  # P, R, mAP@.5, mAP@.5:.95, val box/obj/cls


def _log_epochs(log: ResultsLog, epochs: range, total: int = 3) -> list[str]:
    """Log the given epochs with distinct numbers; returns the progress lines used."""
    lines = []
    n_lr = len(log.columns) - 12  # epoch, 4 losses, 7 results, then the lr groups
    for e in epochs:
        losses = (0.05 + e, 0.02, 0.01, 0.08 + e)
        lines.append(progress_line(e, total, 1.5, losses, 100 + e, 640))
        log.log(e, lines[-1], losses, [r + e for r in RESULTS], (0.01, 0.02, 0.03 + e)[-n_lr:])
    return lines


def test_progress_header_and_line_exact_text() -> None:
    assert progress_header() == ('     Epoch   gpu_mem       box       obj       cls     total    labels'
                                 '  img_size')
    assert progress_header(('diff', 'score.0', 'score.1', 'total')).split() == [
        'Epoch', 'gpu_mem', 'diff', 'score.0', 'score.1', 'total', 'labels', 'img_size']
    line = progress_line(3, 300, 12.3456, torch.tensor([0.0512345, 0.02, 0.0100001, 0.0812346]), 157, 640)
    assert line == ('     3/299     12.3G   0.05123      0.02      0.01   0.08123       157       640')


def test_results_txt_and_csv_format(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path)
    lines = _log_epochs(log, range(2))
    txt = (tmp_path / 'results.txt').read_text().splitlines()
    assert txt[0] == lines[0] + ('       0.5      0.25     0.125    0.0625   0.03125   0.01562  0.007812')
    assert all(len(t) == 150 for t in txt)  # 15 columns of 10 characters
    assert log.epochs_logged() == [0, 1] and log.read_text() == '\n'.join(txt) + '\n'
    names, data = read_results_csv(tmp_path / 'results.csv')
    assert names == ['epoch', 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'train/total_loss',
                     'metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',
                     'val/box_loss', 'val/obj_loss', 'val/cls_loss', 'x/lr0', 'x/lr1', 'x/lr2']
    np.testing.assert_allclose(data[1], [1, 1.05, 0.02, 0.01, 1.08, *[r + 1 for r in RESULTS], 0.01, 0.02, 1.03])


def test_log_returns_reference_tensorboard_tags(tmp_path: Path) -> None:
    scalars = ResultsLog(tmp_path).log(0, progress_line(0, 1, 0, (1, 2, 3, 6), 4, 64), (1, 2, 3, 6), RESULTS,
                                       (0.1, 0.2, 0.3))
    assert list(scalars)[:3] == ['train/box_loss', 'train/obj_loss', 'train/cls_loss']
    assert 'train/total_loss' not in scalars and scalars['x/lr2'] == 0.3 and len(scalars) == 13
    with pytest.raises(ValueError, match='value columns'):
        ResultsLog(tmp_path, lr_groups=2).log(1, 'x', (1, 2, 3, 6), RESULTS, (0.1, 0.2, 0.3))


def test_restore_after_kill_has_no_gaps_or_duplicates(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path)
    _log_epochs(log, range(3))
    checkpoint_text = ''.join(ln + '\n' for ln in log.read_text().splitlines()[:2])  # saved after epoch 1
    resumed = ResultsLog(tmp_path)
    resumed.restore(checkpoint_text)
    assert resumed.epochs_logged() == [0, 1] and resumed.read_text() == checkpoint_text
    assert read_results_csv(tmp_path / 'results.csv')[1][:, 0].tolist() == [0, 1]
    _log_epochs(resumed, range(2, 3))
    assert resumed.epochs_logged() == [0, 1, 2]
    csv_lines = (tmp_path / 'results.csv').read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith('epoch,')
    assert [r.split(',')[0] for r in csv_lines[1:]] == ['0', '1', '2']


def test_restore_rebuilds_missing_csv_rows_and_resets(tmp_path: Path) -> None:
    assert ResultsLog(tmp_path / 'a').read_text() == ''
    (tmp_path / 'a').mkdir()
    source = ResultsLog(tmp_path / 'a', ('diff', 'score.0', 'score.1', 'total'), lr_groups=2)
    _log_epochs(source, range(2))
    (tmp_path / 'b').mkdir()
    target = ResultsLog(tmp_path / 'b', ('diff', 'score.0', 'score.1', 'total'), lr_groups=2)
    target.restore(source.read_text())  # a run folder without results.csv: rows come from the text
    names, data = read_results_csv(tmp_path / 'b' / 'results.csv')
    assert names[1] == 'train/diff_loss' and names[-1] == 'x/lr1'
    np.testing.assert_allclose(data[1, :12], [1, 1.05, 0.02, 0.01, 1.08, *[r + 1 for r in RESULTS]], rtol=1e-3)
    assert np.isnan(data[:, 12:]).all()
    target.restore('')
    assert target.epochs_logged() == [] and (tmp_path / 'b' / 'results.csv').read_text() == ''


@pytest.mark.parametrize('epochs', [1, 12])
def test_plot_results_png(tmp_path: Path, epochs: int) -> None:
    _log_epochs(ResultsLog(tmp_path), range(epochs), total=epochs)
    path = run_outputs.plot_results(tmp_path)
    assert path == tmp_path / 'results.png' and path.read_bytes()[:4] == b'\x89PNG'
    assert path.stat().st_size > 20_000


def test_plot_results_without_data_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert run_outputs.plot_results(tmp_path) is None
    assert 'no epochs' in caplog.text


def test_plot_lr_schedule_png(tmp_path: Path) -> None:
    lf = lambda e: ((1 - math.cos(e * math.pi / 10)) / 2) * (0.1 - 1) + 1  # noqa: E731  (one-cycle, lrf 0.1)
    path = run_outputs.plot_lr_schedule(lf, 10, 0.01, tmp_path)
    assert path.name == 'LR.png' and path.read_bytes()[:4] == b'\x89PNG' and path.stat().st_size > 10_000


@pytest.mark.parametrize('n', [0, 1000])
def test_plot_labels_png(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 3, (n, 1)), rng.uniform(0.05, 0.95, (n, 4)) * [1, 1, 0.5, 0.5]], 1)
    path = run_outputs.plot_labels(labels, ['cat', 'dog', 'bird'], tmp_path)
    assert path.name == 'labels.png' and path.read_bytes()[:4] == b'\x89PNG'
    assert path.stat().st_size > (50_000 if n else 10_000)


def test_plot_train_batch_scales_normalised_targets(tmp_path: Path) -> None:
    imgs = torch.full((2, 3, 64, 96), 0.5)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [1, 0, 0.25, 0.25, 0.2, 0.2]])
    path = run_outputs.plot_train_batch(imgs, targets, ['a.jpg', 'b.jpg'], tmp_path / 'train_batch0.jpg', ['x', 'y'])
    assert path.read_bytes()[:2] == b'\xff\xd8' and path.stat().st_size > 1_000
    assert targets[0, 2] == 0.5  # the caller's targets are left as they were


class _FakeSummaryWriter:
    """Records what TrainWriter asks of SummaryWriter."""

    def __init__(self, log_dir: str):
        self.log_dir, self.calls = log_dir, []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.calls.append(('scalar', tag, value, step))

    def add_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self.calls.append(('histogram', tag, len(values), step))

    def close(self) -> None:
        self.calls.append(('close',))


def test_train_writer_forwards_to_summary_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType('torch.utils.tensorboard')
    module.SummaryWriter = _FakeSummaryWriter
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', module)
    writer = TrainWriter(tmp_path)
    fake = writer._writer
    assert writer.active and fake.log_dir == str(tmp_path)
    writer.scalars({'metrics/precision': torch.tensor(0.5), 'x/lr0': 0.01}, 3)
    writer.histogram('classes', torch.tensor([0, 1, 1]), 0)
    writer.histogram('empty', np.zeros(0), 0)
    writer.close()
    writer.close()
    assert fake.calls == [('scalar', 'metrics/precision', 0.5, 3), ('scalar', 'x/lr0', 0.01, 3),
                          ('histogram', 'classes', 3, 0), ('close',)]


def test_train_writer_without_tensorboard_is_a_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # makes the import raise ImportError
    with caplog.at_level(logging.WARNING):
        writer = TrainWriter(tmp_path)
        writer.scalars({'a': 1.0}, 0)
        writer.histogram('h', np.arange(3), 0)
        writer.close()
    assert not writer.active and caplog.text.count('install tensorboard to get TensorBoard logs') == 1
    assert list(tmp_path.iterdir()) == []
    assert not TrainWriter(tmp_path, enabled=False).active


def test_train_writer_with_real_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip('tensorboard', reason='tensorboard is not installed here; the fake-writer test covers '
                                              'the wiring')
    writer = TrainWriter(tmp_path)
    writer.scalars({'metrics/mAP_0.5': 0.25}, 0)
    writer.histogram('classes', np.array([0, 1, 1, 2]), 0)
    writer.close()
    events = list(tmp_path.glob('events.out.tfevents.*'))
    assert writer.active is False and events and events[0].stat().st_size > 0
