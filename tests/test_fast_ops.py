"""Operators rewritten for speed give the reference's numbers: SPPCSPC's chained max-pools, the router's mean."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models.common import SPPCSPC
from models.router import global_mean


@pytest.mark.parametrize('kernels', [(5, 9, 13), (3, 5, 7, 9), (5,)])
def test_chained_max_pools_equal_the_reference_pools_exactly(kernels: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    spp = SPPCSPC(8, 8, k=kernels).eval()
    assert spp.chained
    x1 = torch.randn(2, 4, 11, 13)
    maps = [x1]
    for step in spp.steps:
        maps.append(step(maps[-1]))
    for k, chained in zip(kernels, maps[1:]):
        assert torch.equal(chained, F.max_pool2d(x1, k, 1, k // 2))


@pytest.mark.parametrize('kernels', [(9, 5, 13), (4, 8), (5, 5)])
def test_pools_that_do_not_chain_run_as_configured(kernels: tuple[int, ...]) -> None:
    spp = SPPCSPC(8, 8, k=kernels)
    assert not spp.chained
    assert [pool.kernel_size for pool in spp.m] == list(kernels)


def test_training_keeps_the_reference_pools_and_their_gradients_at_ties() -> None:
    torch.manual_seed(0)
    spp = SPPCSPC(8, 8).train()
    reference = copy.deepcopy(spp)
    reference.chained = False
    x = torch.zeros(1, 8, 9, 9)
    x[..., 2:5, 2:5] = 1.0  # a flat square: tied maxima in every pooling window
    grads = []
    for module in (spp, reference):
        xi = x.clone().requires_grad_(True)
        module(xi).square().sum().backward()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])
    with torch.no_grad():  # without gradients the chain runs, with the same outputs
        assert torch.equal(spp(x), reference(x))


def test_spp_state_dict_does_not_depend_on_chaining() -> None:
    assert SPPCSPC(8, 8, k=(5, 9, 13)).state_dict().keys() == SPPCSPC(8, 8, k=(9, 5, 13)).state_dict().keys()


def test_global_mean_of_the_same_dtype_is_torch_mean() -> None:
    x = torch.randn(2, 3, 7, 5)
    assert torch.equal(global_mean(x, torch.float32), x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize('chunk_elements', [1, 40, 1 << 19])
def test_global_mean_of_bfloat16_maps_accumulates_in_float32(chunk_elements: int) -> None:
    torch.manual_seed(0)
    # 1 + small: a bfloat16 running sum would lose the small parts (8 significant bits), a float32 one keeps them
    x = (1 + torch.rand(3, 4, 33, 17) / 64).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    mean = global_mean(x, torch.float32, chunk_elements)
    exact = x.double().mean((2, 3), keepdim=True)
    assert mean.dtype == torch.float32 and mean.shape == (3, 4, 1, 1)
    assert (mean.double() - exact).abs().max() < 1e-6
