"""Which device each process trains on, and when a training command starts DDP processes itself: decided without
a GPU (CUDA's presence and device count are faked)."""
from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch

from utils.torch_utils import DeviceError, cuda_index_for_rank, select_device
from utils.train import distributed
from utils.train.distributed import init_distributed, torchrun_command


@pytest.fixture
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that reports 8 CUDA devices (none is used: only torch.device objects are made)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 8)


@pytest.mark.parametrize('ids,local_rank,expected', [
    ([4, 5, 6, 7], 0, 4), ([4, 5, 6, 7], 3, 7), ([2, 0], 1, 0), ([3], -1, 3), ([6, 7], -1, 6)])
def test_each_rank_takes_its_entry_of_the_device_list(ids: list, local_rank: int, expected: int) -> None:
    assert cuda_index_for_rank(ids, local_rank) == expected


def test_a_rank_beyond_the_device_list_is_one_line() -> None:
    with pytest.raises(DeviceError, match='local rank 2 has no device: --device lists 2'):
        cuda_index_for_rank([0, 1], 2)


@pytest.mark.parametrize('device,local_rank,expected', [
    ('4,5,6,7', '0', 'cuda:4'), ('4,5,6,7', '2', 'cuda:6'), ('1,3', '1', 'cuda:3'), ('', '5', 'cuda:5'),
    ('', None, 'cuda:0'), ('2', None, 'cuda:2'), ('cpu', '1', 'cpu')])
def test_select_device_under_torchrun(eight_gpus, monkeypatch: pytest.MonkeyPatch, device: str,
                                      local_rank: str | None, expected: str) -> None:
    """--device 4,5,6,7 under torchrun: local ranks 0-3 take GPUs 4-7 (the reference's CUDA_VISIBLE_DEVICES rule);
    before the fix every rank took cuda:LOCAL_RANK, i.e. GPUs 0-3."""
    if local_rank is None:
        monkeypatch.delenv('LOCAL_RANK', raising=False)
    else:
        monkeypatch.setenv('LOCAL_RANK', local_rank)
    assert str(select_device(device)) == expected


def test_init_distributed_keeps_the_selected_device(eight_gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Joining the process group does not move a rank to cuda:LOCAL_RANK (it did before the fix)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    monkeypatch.setattr(distributed.dist, 'is_initialized', lambda: True)
    ctx = init_distributed(2, 2, 4, torch.device('cuda', 6))
    assert ctx.device == torch.device('cuda', 6) and chosen == [torch.device('cuda', 6)]


@pytest.mark.parametrize('device,count,launched,processes', [
    ('0,1', 2, False, 2), ('0,1,2,3', 8, False, 4), ('', 4, False, 4), ('cuda:0,cuda:1', 2, False, 2),
    ('0', 8, False, None), ('', 1, False, None), ('cpu', 8, False, None), ('0,1', 0, False, None),
    ('0,1', 2, True, None)])
def test_several_devices_without_a_launcher_start_ddp(device: str, count: int, launched: bool,
                                                      processes: int | None) -> None:
    """--device 0,1 without torchrun re-runs the same command under torch.distributed.run, one process per device
    (before, it silently trained on device 0 alone); one device, the CPU, no CUDA, or a launched process: None."""
    argv = ['--device', device, '--batch-size', '16', '--epochs', '3']
    command = torchrun_command('train_step1.py', argv, device, count, launched, 16)
    if processes is None:
        assert command is None
    else:
        assert command == [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                           str(processes), 'train_step1.py', *argv]


def test_a_batch_that_does_not_split_over_the_devices_is_one_line() -> None:
    with pytest.raises(DeviceError, match='--batch-size 10 is not a multiple of the 4 devices'):
        torchrun_command('train_step1.py', [], '0,1,2,3', 4, False, 10)


def test_the_relaunch_runs_the_command_and_reports_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """per_device calls the command it built (faked here) and turns a failed launch into LaunchError."""
    import argparse
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setattr(distributed.subprocess, 'call', lambda command: calls.append(command) or 1)
    opt = argparse.Namespace(device='0,1', local_rank=-1, batch_size=8)
    with pytest.raises(distributed.LaunchError, match='exit code 1'):
        distributed.per_device(lambda o: pytest.fail('trained in this process'), 'train_step1.py', ['-x'])(opt)
    assert calls and calls[0][-2:] == ['train_step1.py', '-x']
    assert distributed.per_device(lambda o: 'trained', 's.py', [])(argparse.Namespace(
        device='cpu', local_rank=-1, batch_size=8)) == 'trained'


@pytest.fixture(scope='module')
def train_parsers() -> dict[str, Callable]:
    """Both training scripts' parse_opt, imported once for the module (they pull in all the training code)."""
    import train_step1
    import train_step2
    return {'train_step1': train_step1.parse_opt, 'train_step2': train_step2.parse_opt}


@pytest.mark.parametrize('flag', [['--local_rank', '1'], ['--local-rank=1'], ['--local_rank=1']])
def test_the_launchers_local_rank_flag_sets_the_ranks(train_parsers: dict, monkeypatch: pytest.MonkeyPatch,
                                                      flag: list[str]) -> None:
    """python -m torch.distributed.launch passes the local rank as a flag (--local_rank N before torch 2.0,
    --local-rank=N since) with WORLD_SIZE and RANK in the environment but no LOCAL_RANK: both scripts take it, so
    the second process trains as rank 1 of 2 instead of a second rank 0 (or a lone process)."""
    from utils.train.options import distributed_env
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    for script, parse_opt in train_parsers.items():
        opt = parse_opt(flag)
        distributed_env(opt)
        assert (opt.local_rank, opt.global_rank, opt.world_size) == (1, 1, 2), script


def test_no_launcher_means_a_single_process(train_parsers: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a launcher (no WORLD_SIZE, RANK, LOCAL_RANK, no flag) both scripts train as one process: local and
    global rank -1, world size 1 (the reference's non-DDP values, which every rank check relies on)."""
    from utils.train.options import distributed_env
    for name in ('LOCAL_RANK', 'WORLD_SIZE', 'RANK'):
        monkeypatch.delenv(name, raising=False)
    for script, parse_opt in train_parsers.items():
        opt = parse_opt([])
        distributed_env(opt)
        assert (opt.local_rank, opt.global_rank, opt.world_size) == (-1, -1, 1), script
