"""Our cfg/, hyp/ and data/ files describe the reference's architectures and values, and the GFLOPs per path are
the reference's."""
from __future__ import annotations

import pytest
import yaml
from torch import nn

from models.yolo import Model
from tests.helpers import CONFIG_NAMES, REFERENCE, ROOT, cfg_path, requires_reference

CONFIGS = REFERENCE / 'configs'


def _load(path) -> dict:
    """A YAML file as plain data (libyaml's safe loader when present: the same data, ~10x faster)."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))


@requires_reference
@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_model_config_equals_reference(name: str) -> None:
    assert _load(cfg_path(name)) == _load(CONFIGS / f'{name}.yaml')


@requires_reference
@pytest.mark.parametrize('name', ['hyp.scratch.p5.yaml', 'hyp.scratch.p6.yaml', 'hyp.finetune.dynamic.adam.yaml'])
def test_hyp_equals_reference(name: str) -> None:
    ours, ref = _load(ROOT / 'hyp' / name), _load(CONFIGS / name)
    assert ours == ref
    assert all(isinstance(v, (int, float)) for v in ours.values())


@requires_reference
def test_coco_yaml() -> None:
    ours, ref = _load(ROOT / 'data' / 'coco.yaml'), _load(CONFIGS / 'coco.yaml')
    assert ours['nc'] == ref['nc'] == 80 and ours['names'] == ref['names']
    assert ours['train'] == '../coco/train2017.txt' and ours['val'] == '../coco/val2017.txt'
    assert ours['test'] == '../coco/test-dev2017.txt'


def test_step_configs_differ_only_in_router_keys() -> None:
    for model in ('dy-yolov7', 'dy-yolov7x', 'dy-yolov7-w6'):
        step1, step2 = _load(cfg_path(f'{model}-step1')), _load(cfg_path(f'{model}-step2'))
        router = {'dynamic', 'router_ins', 'router_channels', 'b1_save'}
        assert {k: v for k, v in step1.items() if k not in router} == {k: v for k, v in step2.items() if k not in router}


def _zero_conv(conv: nn.Conv2d) -> None:
    """Conv2d.reset_parameters for shape-only models: zero weight and bias."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@pytest.mark.parametrize('name,size,easy,hard', [
    ('dy-yolov7-step2', 640, 104.52, 181.72),
    ('dy-yolov7x-step2', 640, 189.68, 307.64),
    ('dy-yolov7-w6-step2', 1280, 359.73, 601.74),
])
def test_gflops_per_path(name: str, size: int, easy: float, hard: float, monkeypatch) -> None:
    # GFLOPs depend on the shapes only: convolutions start at zero instead of their random initialisation, which
    # is about half the time of building a full-size model
    monkeypatch.setattr(nn.Conv2d, 'reset_parameters', _zero_conv)
    model = Model(_load(cfg_path(name)))
    flops = model.flops(size)
    assert flops['easy'] == pytest.approx(easy, abs=0.1)
    assert flops['hard'] == pytest.approx(hard, abs=0.1)
    assert model.model_b[1].bn is not None  # flops() profiles a fused copy, not the model
