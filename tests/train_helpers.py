"""Helpers of the training tests: runs without their figures, forked runs to SIGKILL, and what a run logged."""
from __future__ import annotations

import copy
import importlib
import multiprocessing
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import read_checkpoint
from tests.helpers import quick_step1_files, tiny_config
from utils.evaluation.validator import EvalOptions
from utils.torch_utils import de_parallel
from utils.train.trainer import Trainer


def skip_run_plots(patch: pytest.MonkeyPatch) -> None:
    """Make training skip its matplotlib figures (most of a tiny CPU run's time); the reference-outputs test is the
    one that checks them, the other runs check what training does."""
    import utils.train.trainer as trainer
    for name in ('plot_results', 'plot_labels', 'plot_lr_schedule'):
        patch.setattr(trainer, name, lambda *args, **kwargs: None)
    patch.setattr(trainer, 'EvalOptions', lambda **kwargs: EvalOptions(**{**kwargs, 'plots': False}))


def synthetic_step1_set(folder: Path) -> dict[str, str]:
    """8 synthetic 96-px images (6 train, 2 val), a quick hyp (short warmup, no mosaic, a step every batch) and the
    small step-1 model config, written to `folder`."""
    data, hyp_file = quick_step1_files(folder, 8, seed=0)
    hyp = yaml.safe_load(hyp_file.read_text())
    hyp['nbs'] = 1  # an optimizer step every batch: the few batches here all move the weights (DDP compares them)
    hyp_file.write_text(yaml.safe_dump(hyp))
    (folder / 'small-step1.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=False)))
    return {'data': str(data), 'hyp': str(hyp_file), 'cfg': str(folder / 'small-step1.yaml')}


def step1_flags(synthetic: dict, project: Path, epochs: int, *extra: str) -> list[str]:
    """train_step1 flags for the synthetic set: 64 px, batch 6 (one step an epoch), CPU, no loader workers."""
    return ['--cfg', synthetic['cfg'], '--data', synthetic['data'], '--hyp', synthetic['hyp'], '--epochs',
            str(epochs), '--batch-size', '6', '--img', '64', '--device', 'cpu', '--workers', '0', '--noautoanchor',
            '--project', str(project), *extra]


def results_epochs(run: Path) -> list[int]:
    """The epoch numbers of results.txt's lines, in order."""
    return [int(line.split()[0].split('/')[0]) for line in (run / 'results.txt').read_text().splitlines()]


# Training children fork from a server process that has imported the trainers but never trained: forking the test
# process itself fails once autograd has run there under pytest-xdist ("Unable to handle autograd's threading in
# combination with fork-based multiprocessing"), and a fresh interpreter per child spends seconds importing torch.
_FORKSERVER = multiprocessing.get_context('forkserver')
_FORKSERVER.set_forkserver_preload(['torch', 'train_step1', 'train_step2', 'tests.train_helpers'])


def _train_in_child(module: str, argv: list[str], hold_after_epoch: int) -> None:
    """A training child: one thread, no figures, the CLI's main(argv); it stops still once epoch `hold_after_epoch`
    is saved, so the parent's SIGKILL lands between that epoch and the next however loaded the machine is."""
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()  # the child's own module state: never undone, it ends with the child
    skip_run_plots(patch)
    import utils.train.trainer as trainer
    save_epoch = trainer.save_epoch

    def save_then_hold(ckpt: dict, weights_dir: Path, epoch: int, *args, **kwargs) -> None:
        save_epoch(ckpt, weights_dir, epoch, *args, **kwargs)
        while epoch == hold_after_epoch:
            time.sleep(1)

    patch.setattr(trainer, 'save_epoch', save_then_hold)
    importlib.import_module(module).main(argv)


def kill_after_epochs(main: Callable[[list[str]], None], argv: list[str], run: Path, done: int,
                      timeout: float = 240) -> None:
    """Run a training CLI's main(argv) (without figures) in a child process forked from a server that has the
    trainers imported (a real process, started in a fraction of a second) and SIGKILL it once it has finished `done`
    epochs; then every checkpoint on disk must load as a training checkpoint (none half-written) and results.txt
    list epochs 0..done-1."""
    process = _FORKSERVER.Process(target=_train_in_child, args=(main.__module__, argv, done - 1), daemon=True)
    process.start()
    marker = run / 'weights' / f'epoch_{done - 1:03d}.pt'  # the last file an epoch writes (runs of <= 5 epochs)
    deadline = time.time() + timeout
    while time.time() < deadline and process.is_alive() and not marker.is_file():
        time.sleep(0.05)
    process.kill()  # SIGKILL: no handler, no clean-up; also ends a child that overran the deadline
    process.join()
    assert marker.is_file(), f'training ended (exit code {process.exitcode}) or timed out before {done} epochs'
    for p in (run / 'weights').glob('*.pt'):
        assert read_checkpoint(p)['epoch'] >= 0, p
    assert results_epochs(run) == list(range(done))


def logged_lrs(run: Path) -> dict[int, list[float]]:
    """Each epoch's learning rates as results.csv logs them (the rates its steps used, one per param group)."""
    rows = np.loadtxt(run / 'results.csv', delimiter=',', skiprows=1, ndmin=2)
    header = (run / 'results.csv').read_text().splitlines()[0].split(',')
    columns = [k for k, name in enumerate(header) if name.startswith('x/lr')]
    return {int(row[0]): row[columns].tolist() for row in rows}


def resume_copy(run: Path, epoch_file: str, into: Path) -> Path:
    """A copy of a run folder whose last.pt is the full checkpoint `epoch_file` (as if killed after that epoch)."""
    copy = into / run.name
    shutil.copytree(run, copy)
    shutil.copy2(copy / 'weights' / epoch_file, copy / 'weights' / 'last.pt')
    return copy


def assert_resume_keeps_the_rates(run: Path, resume: Callable[[list[str]], object], into: Path, lr0: float) -> None:
    """Resume a copy of the 4-epoch `run` from its epoch_001.pt with resume(argv): epochs 2 and 3 log the
    uninterrupted run's rates in every param group, which are below lr0 there (a reset to lr0·lf(0) would show)."""
    resumed = resume_copy(run, 'epoch_001.pt', into)
    resume(['--resume', str(resumed / 'weights' / 'last.pt')])
    uninterrupted, after_resume = logged_lrs(run), logged_lrs(resumed)
    assert max(uninterrupted[2]) < 0.9 * lr0
    for epoch in (2, 3):
        assert after_resume[epoch] == pytest.approx(uninterrupted[epoch], rel=1e-6), epoch

class ProbedTrainer(Trainer):
    """Step 1's trainer that also measures, after training, its detection loss (training mode, the trainer's own
    loss) on all its training images as first loaded — with the starting weights and with the trained ones."""
    probe: list[float] = []

    def setup(self) -> None:
        super().setup()
        self.initial = copy.deepcopy(de_parallel(self.model).state_dict())

    def finish(self, epochs_run: int, t0: float) -> None:
        imgs, targets, *_ = self.dataset.collate_fn([self.dataset[i] for i in range(len(self.dataset))])
        imgs = imgs.float() / 255
        for weights in (self.initial, de_parallel(self.model).state_dict()):
            model = copy.deepcopy(de_parallel(self.model))
            model.load_state_dict(weights)
            with torch.no_grad():
                type(self).probe.append(float(self.compute_loss(model.train()(imgs), targets, imgs)[1][3]))
        super().finish(epochs_run, t0)
