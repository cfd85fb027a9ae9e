"""Training under DDP: two gloo processes on the CPU (torchrun), the branches that only run with several ranks.

Each test launches tests/ddp_train_worker.py under `torch.distributed.run --nproc_per_node 2` on the synthetic set of
train_helpers.synthetic_step1_set and compares what the two ranks ended with."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from models.yolo import Model
from tests.helpers import ROOT, tiny_config
from tests.train_helpers import results_epochs, step1_flags, synthetic_step1_set
from utils.cli import run_cli
from utils.train.distributed import DistContext, wants_sync_bn
from utils.train.trainer import Trainer, TrainingError


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The synthetic set of train_helpers.synthetic_step1_set."""
    return synthetic_step1_set(tmp_path_factory.mktemp('synthetic'))


def torchrun(tmp_path: Path, port: int, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """The worker under 2 gloo processes, one thread each; argv after the output folder."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(port),
           str(ROOT / 'tests' / 'ddp_train_worker.py'), str(tmp_path), *argv]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **env})


def rank_results(folder: Path) -> tuple[dict, dict]:
    """What ranks 0 and 1 saved."""
    return tuple(torch.load(folder / f'rank{r}.pt', weights_only=True) for r in (0, 1))


def error_lines(stderr: str) -> list[str]:
    """The ranks' one-line errors, sorted."""
    return sorted(line for line in stderr.splitlines() if ': error: ' in line and line.startswith('rank '))


def test_two_process_ddp_step1_step2_then_a_failing_run(tmp_path: Path, synthetic: dict) -> None:
    """One torchrun, batch 4 (2 steps of 2 + 1 images per rank, each an optimizer step):
    - step 1 with autoanchor on (the default) and anchors 20x the small config's, far from 64-px labels, so rank 0
      re-fits them: every parameter and anchor buffer ends bit-identical on both ranks, and both ranks' training
      losses assign boxes with those re-fitted anchors (rank 1's loss kept its config anchors, ~40x too large,
      before the losses were built after DDP's broadcast);
    - with --image-weights and --patience 1 for up to 4 epochs, rank 0's validation scripted (fitness 0.5 then 0.1,
      per-class mAPs that differ by class): both ranks drew epoch 1's images with rank 0's maps (rank 1 never
      validates: without the broadcast its weights came from all-zero maps) and both stopped after epoch 1 (rank 0's
      early stop reaches rank 1); only rank 0 logged; --sync-bn on CPU ranks says on each that it is ignored;
    - then step 2 from its last.pt in the same process group: the router ends bit-identical on both ranks;
    - then a failing step 1 (batch 2: 3 steps an epoch) where rank 1's loss is NaN at every step and rank 0's finite:
      both ranks skip each step together (rank 0 alone stepping would desynchronise DDP's all-reduce; each counts
      3 of 5 in a row); then rank 0's checkpoint save raises (non-finite weights) and both ranks stop with rank 0's
      one line at once. Rank 1 used to be left waiting in its next collective: torchrun then ended it without that
      line, and a launcher that does not watch its workers would wait for the process group's 30-minute timeout."""
    far = tiny_config(dynamic=False)
    far['anchors'] = [[20 * v for v in level] for level in far['anchors']]  # 200-2400 px boxes for 64-px images
    cfg = tmp_path / 'far-anchors.yaml'
    cfg.write_text(yaml.safe_dump(far))
    runs = tmp_path / 'runs'
    step1 = [f for f in step1_flags({**synthetic, 'cfg': str(cfg)}, runs, 4, '--batch-size', '4', '--image-weights',
                                    '--patience', '1', '--sync-bn', '--name', 's1') if f != '--noautoanchor']
    cfg2 = tmp_path / 'small-step2.yaml'
    cfg2.write_text(yaml.safe_dump({**tiny_config(dynamic=True), 'anchors': far['anchors']}))
    step2 = ['--cfg', str(cfg2), '--weight', str(runs / 's1' / 'weights' / 'last.pt'), '--data', synthetic['data'],
             '--hyp', str(ROOT / 'hyp' / 'hyp.finetune.dynamic.adam.yaml'), '--epochs', '1', '--batch-size', '2',
             '--img', '64', '--device', 'cpu', '--workers', '0', '--adam', '--project', str(runs), '--name', 's2']
    failing = step1_flags(synthetic, runs, 2, '--batch-size', '2', '--name', 'failing')
    done = torchrun(tmp_path, 29533, [*step1, '--then-step2', *step2, '--then-failing-step1', *failing],
                    DDP_TEST_SCRIPTED_VALIDATION='1')
    expected = 'error: the weights became NaN/inf at epoch 0 (test)'
    assert done.returncode != 0, done.stderr[-3000:]
    assert error_lines(done.stderr) == [f'rank 0: {expected}', f'rank 1: {expected}'], done.stderr[-3000:]
    assert done.stderr.count('step skipped (3/5 in a row)') == 2, done.stderr[-2000:]  # one per rank
    rank0, rank1 = rank_results(tmp_path)
    assert rank0.keys() == rank1.keys()
    for k in rank0:  # parameters, anchors, sampler weights, router; BN running statistics are per rank
        torch.testing.assert_close(rank0[k], rank1[k], rtol=0, atol=0, msg=k)
    configured = Model(cfg).model_h2[-1].anchors
    assert not torch.equal(rank0['loss anchors'], configured)  # autoanchor did re-fit them
    head2 = next(k for k in rank0 if k.startswith('buffer model_h2.'))
    assert torch.equal(rank0['loss anchors'], rank0[head2])
    assert int(rank0['epochs run']) == 2 and results_epochs(runs / 's1') == [0, 1]  # one line per epoch: rank 0's
    weights = rank0['sampler weights']
    assert weights.numel() == 6 and weights.max() > weights.min()  # rank 0's maps, not uniform ones
    assert any(k.startswith('router ') for k in rank0)  # the step-2 trainer trains the router alone
    assert done.stderr.count('WARNING: --sync-bn ignored: SyncBatchNorm needs DDP on CUDA devices, this run has cpu '
                             'ranks') == 2


def epoch_end_trainer(rank: int, failure: BaseException | None = None) -> Trainer:
    """A Trainer reduced to what end_epoch touches, as `rank` of 2 on the CPU; its _log_and_save raises `failure`."""
    trainer = Trainer.__new__(Trainer)
    trainer.ctx = DistContext(rank, rank, 2, torch.device('cpu'))
    trainer.optimizer = SimpleNamespace(param_groups=[{'lr': 0.01}])
    trainer.scheduler = SimpleNamespace(step=lambda: None)

    def log_and_save(*_args) -> bool:
        raise failure
    trainer._log_and_save = log_and_save
    return trainer


def end_epoch_on_both_ranks(failure: BaseException, monkeypatch) -> tuple[list, BaseException | None,
                                                                          BaseException | None]:
    """end_epoch on rank 0 (whose _log_and_save raises `failure`) then on rank 1, in this process, with a fake
    broadcast that hands rank 1 what rank 0 sent (a real 2-process group would cost seconds); returns what rank 0
    sent and what each rank raised (None: nothing)."""
    wire, speaker = [], {'rank': 0}

    def broadcast_object_list(box: list, src: int = 0) -> None:
        if speaker['rank'] == 0:
            wire.append(box[0])
        else:
            box[0] = wire[-1] if wire else None
    monkeypatch.setattr(torch.distributed, 'broadcast_object_list', broadcast_object_list)
    monkeypatch.setattr(torch.distributed, 'broadcast', lambda *_a, **_k: None)  # broadcast_flag, were it reached
    raised = []
    for rank in (0, 1):
        speaker['rank'] = rank
        try:
            epoch_end_trainer(rank, failure if rank == 0 else None).end_epoch(0, torch.zeros(4), '')
            raised.append(None)  # this rank went on to its next collective
        except BaseException as e:  # whatever each rank stops with, Ctrl-C included
            raised.append(e)
    return wire, raised[0], raised[1]


def test_an_os_error_at_rank_0s_epoch_end_stops_every_rank_with_its_cli_line(monkeypatch, capsys) -> None:
    """While rank 0 validates and saves at an epoch's end the other ranks wait in end_epoch's broadcast: a full disk
    at rank 0's save (an OSError, not a TrainingError) must reach them as the line run_cli prints on rank 0, not leave
    them in their next collective until the process group's 30-minute timeout."""
    full = OSError(errno.ENOSPC, 'No space left on device', 'runs/exp/weights/last.pt')
    wire, rank0, rank1 = end_epoch_on_both_ranks(full, monkeypatch)
    line = ('runs/exp/weights/last.pt: No space left on device; check that its folder exists, is writable and its '
            'disk has space')
    assert wire == [line], f'rank 0 sent {wire} before stopping; rank 1 raised {rank1!r}'
    assert rank0 is full  # rank 0 stops with its own error: run_cli's one line there
    assert isinstance(rank1, TrainingError) and str(rank1) == line
    def rank_0_run(_opt) -> None:
        raise rank0
    with pytest.raises(SystemExit):
        run_cli(rank_0_run, {}, logging.getLogger('test'))
    assert capsys.readouterr().err.strip().splitlines()[-1] == f'error: {line}'


@pytest.mark.parametrize('failure,line', [
    (ValueError('bad value\nsecond line'), 'rank 0 failed with ValueError: bad value; its traceback shows where'),
    (KeyboardInterrupt(), 'rank 0 was interrupted (Ctrl-C)')])
def test_any_failure_at_rank_0s_epoch_end_stops_every_rank(failure: BaseException, line: str, monkeypatch) -> None:
    """A bug or Ctrl-C on rank 0 alone at an epoch's end stops the other ranks too, with one line; rank 0 re-raises
    its own (a bug keeps its traceback there; Ctrl-C becomes the line saying how to --resume)."""
    wire, rank0, rank1 = end_epoch_on_both_ranks(failure, monkeypatch)
    assert wire == [line], f'rank 0 sent {wire} before stopping; rank 1 raised {rank1!r}'
    assert rank0 is failure
    assert isinstance(rank1, TrainingError) and str(rank1) == line


@pytest.mark.parametrize('distributed,device,converts,warning', [
    (True, 'cuda', True, None),
    (True, 'cpu', False, 'this run has cpu ranks'),
    (False, 'cuda', False, 'this run has one process'),
])
def test_sync_bn_converts_only_under_ddp_on_cuda(distributed: bool, device: str, converts: bool,
                                                   warning: str | None, caplog) -> None:
    """--sync-bn is the reference's (SyncBatchNorm under DDP on GPUs); anywhere else it is ignored with one warning
    that says why, instead of silently."""
    ctx = DistContext(0 if distributed else -1, 0 if distributed else -1, 2 if distributed else 1,
                      torch.device(device, 0) if device == 'cuda' else torch.device(device))
    assert wants_sync_bn(True, ctx) is converts
    assert wants_sync_bn(False, ctx) is False
    warnings = [r.getMessage() for r in caplog.records if 'sync-bn' in r.getMessage()]
    assert (warnings == []) if warning is None else (len(warnings) == 1 and warning in warnings[0])
