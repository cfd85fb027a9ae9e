"""utils.cpu_memory: after retain_freed_memory(), freeing and allocating large tensors again costs no page faults."""
from __future__ import annotations

import resource

import pytest
import torch

from utils.cpu_memory import retain_freed_memory


def _faults_per_round(rounds: int = 4, mbytes: int = 48, warm_up: int = 8) -> float:
    """Minor page faults per allocate-fill-free round of an `mbytes` tensor, after `warm_up` rounds (64-byte
    aligned requests fit a freed block of their own size only once free neighbours have merged into it)."""
    def one_round() -> None:
        torch.empty(mbytes << 18).fill_(1.0)  # float32: mbytes MB
    for _ in range(warm_up):
        one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


def test_freed_memory_is_reused_without_page_faults() -> None:
    if not retain_freed_memory():
        pytest.skip('the C library is not glibc: no malloc thresholds to raise')
    pages = (48 << 20) // resource.getpagesize()
    # a fresh mapping would fault every page in (12,288 of 4 KiB); reused heap memory faults none
    assert _faults_per_round() < pages / 10
    assert retain_freed_memory()  # calling again is harmless
