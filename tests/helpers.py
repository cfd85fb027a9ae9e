"""Test helpers: where ../shared lives, and the name-keyed deterministic weight fill the golden figures were made with."""
from __future__ import annotations

import json
import math
import os
import zlib
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.yolo import Model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('DYNAMICDET_SHARED', ROOT.parent / 'shared'))
REFERENCE = SHARED / 'reference'
CONFIG_NAMES = ['dy-yolov7-step1', 'dy-yolov7-step2', 'dy-yolov7x-step1', 'dy-yolov7x-step2',
                'dy-yolov7-w6-step1', 'dy-yolov7-w6-step2']

requires_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f'reference fixtures not found at {REFERENCE} (they live in ../shared; set DYNAMICDET_SHARED)')


def cfg_path(name: str) -> Path:
    """Our config file for a reference config name."""
    return ROOT / 'cfg' / f'{name}.yaml'


@cache
def models_json() -> dict:
    """The reference's state_dict schemas and counts."""
    return json.loads((REFERENCE / 'models.json').read_text())


def reference_npz(name: str) -> dict[str, np.ndarray]:
    """Arrays of ../shared/reference/{name}.npz."""
    with np.load(REFERENCE / f'{name}.npz') as data:
        return {k: data[k] for k in data.files}


def fill_value(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The fill value of one state_dict entry (seeded by the CRC32 of its key), in float64."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    z = torch.randn(tensor.shape, generator=g, dtype=torch.float64)
    if key.endswith('running_var'):
        return 1 + 0.5 * z.abs()
    if tensor.dim() >= 2:
        return z / math.sqrt(math.prod(tensor.shape[1:]))
    if key.endswith('.weight'):
        return 1 + 0.1 * z
    return 0.1 * z


@torch.no_grad()
def fill_by_name(model: torch.nn.Module) -> None:
    """Overwrite every float entry except anchor buffers with its name-keyed value."""
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not key.endswith(('anchors', 'anchor_grid')):
            tensor.copy_(fill_value(key, tensor).to(tensor.dtype))


@torch.no_grad()
def calibrate(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BN's running stats to the batch statistics of one train-mode pass on x; leave eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    model(x)
    for bn in bns:
        bn.momentum = 0.03
    model.eval()


def _tiny_head(deep: int, shallow: int) -> list:
    """A two-level head reading a stride-16 map `deep` and a stride-8 map `shallow` of its input section."""
    return [[deep, 1, 'SPPCSPC', [16]],                   # 0  /16
            [-1, 1, 'nn.Upsample', ['None', 2, 'nearest']],  # 1  /8
            [[-1, shallow], 1, 'Concat', [1]],            # 2  /8, 32 ch
            [-1, 1, 'Conv', [16, 1, 1]],                  # 3
            [-1, 1, 'MP', []],                            # 4  /16
            [[-1, -5], 1, 'Concat', [1]],                 # 5  /16, 32 ch
            [-4, 1, 'RepConv', [16, 3, 1]],               # 6  /8
            [-2, 1, 'Conv', [32, 3, 1]],                  # 7  /16
            [[-2, -1], 1, 'IDetect', ['nc', 'anchors']]]  # 8


def tiny_config(dynamic: bool = True, nc: int = 3) -> dict:
    """A small two-level DynamicDet config using every module kind but ReOrg (fast tests)."""
    cfg = {
        'nc': nc, 'depth_multiple': 1.0, 'width_multiple': 1.0,
        'anchors': [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
        'backbone': [[-1, 1, 'Conv', [8, 3, 2]],    # 0 /2
                     [-1, 1, 'Conv', [16, 3, 2]],   # 1 /4
                     [-1, 1, 'Conv', [16, 3, 2]],   # 2 /8
                     [-1, 1, 'Conv', [32, 3, 2]]],  # 3 /16
        'n_first_layers': 4, 'keep_input': True,
        'dual_backbone': [[2, 1, 'CBLinear', [[16]]],                 # 0
                          [3, 1, 'CBLinear', [[16, 32]]],             # 1
                          ['input', 1, 'Conv', [8, 3, 2]],            # 2 /2
                          [-1, 1, 'Conv', [16, 3, 2]],                # 3 /4
                          [-1, 1, 'Conv', [16, 3, 2]],                # 4 /8
                          [[-5, -4, -1], 1, 'CBFuse', [[0, 0]]],      # 5 /8
                          [-1, 1, 'Conv', [32, 3, 2]],                # 6 /16
                          [[-6, -1], 1, 'CBFuse', [[1]]]],            # 7 /16
        'head': _tiny_head(3, 2),
        'head2': _tiny_head(7, 5),
    }
    if dynamic:
        cfg.update(dynamic=True, router_ins=[1, 3], router_channels=[16, 32])
    return cfg


COCO128 = SHARED / 'data' / 'coco128'
requires_coco128 = pytest.mark.skipif(
    not (COCO128 / 'train2017.txt').is_file(),
    reason=f'coco128 not found at {COCO128} (it lives in ../shared/data; set DYNAMICDET_SHARED)')
# The reference sorts images by aspect ratio with numpy's default (unstable) argsort; numpy 1.x orders equal ratios
# differently from numpy 2, with which the reference fixtures were recorded
requires_numpy2_sort = pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < '2.0.0',
                                          reason='the fixture\'s order of equal aspect ratios is numpy 2\'s argsort')


def coco128_view(folder: Path) -> Path:
    """A writable view of coco128 (images/labels/segments symlinked, the list copied) so caches land in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ('images', 'labels', 'segments', 'annotations'):
        if not (folder / name).exists():
            (folder / name).symlink_to(COCO128 / name, target_is_directory=True)
    (folder / 'train2017.txt').write_text((COCO128 / 'train2017.txt').read_text())
    return folder / 'train2017.txt'


def quick_step1_files(folder: Path, n: int, seed: int) -> tuple[Path, Path]:
    """n synthetic 96-px images (a quarter for val) and the p5 hyp with a short warmup and no mosaic/mixup/paste-in,
    for fast CPU training tests; returns (data YAML, hyp YAML)."""
    import yaml

    from utils.data.synthetic import generate_dataset
    data = generate_dataset(folder / 'data', n, img_size=96, val_fraction=0.25, seed=seed)
    hyp = yaml.safe_load((ROOT / 'hyp' / 'hyp.scratch.p5.yaml').read_text())
    hyp.update(warmup_epochs=1, warmup_min_iterations=0, mosaic=0.0, mixup=0.0, paste_in=0.0)
    (folder / 'hyp1.yaml').write_text(yaml.safe_dump(hyp))
    return data, folder / 'hyp1.yaml'


def dark_to_bright(n: int, size: int, seed: int) -> torch.Tensor:
    """n random images from dark to bright (spread_router makes their scores rise with the brightness)."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return x * torch.linspace(0.1, 1, n).view(n, 1, 1, 1)


@torch.no_grad()
def spread_router(model: Model) -> None:
    """Make the router of an eval-mode model score how far an image's pooled features lie along the darkest-to-
    brightest direction of a calibration batch, scaled so that its scores span sigmoid(-2)..sigmoid(2): a fresh
    router scores all images alike, this one keeps their routes apart under bfloat16 backbones too."""
    b1, _ = model._backbone(dark_to_bright(8, 64, seed=0))
    pooled = torch.cat([b1[i].mean((2, 3)) for i in model.router_ins], 1)
    direction = pooled[-1] - pooled[0]
    along = pooled @ direction
    low, span = float(along.min()), float(along.max() - along.min())
    router = model.router
    for conv in (router.layer1, router.layer2):
        conv.weight.zero_()
        conv.bias.zero_()
    router.layer1.weight[0, :, 0, 0] = direction  # one hidden unit: span (darkest) .. 2 * span (brightest),
    router.layer1.bias[0] = span - low             # a span's margin above the ReLU's 0
    router.layer2.weight[0, 0] = 4 / span
    router.layer2.bias[0] = -6.0  # logits -2 .. 2


def lively_tiny_model(nc: int = 80) -> Model:
    """A tiny dynamic model whose heads predict many boxes at conf 0.001 (objectness biases raised) and whose router
    splits. Its class logits are about the same everywhere (untrained), so class biases falling with the index keep
    NMS small: about the first 12 of 80 classes clear conf 0.001, ~1,000 candidates per 64-px image instead of
    ~8,600 (NMS then took a third of this module's time)."""
    torch.manual_seed(0)
    model = Model(tiny_config(dynamic=True, nc=nc))
    for det in model.detect_layers:
        for conv in det.m:
            bias = conv.bias.data.view(det.na, -1)
            bias[:, 4] += 4.0
            bias[:, 5:] -= torch.linspace(0, 4, nc)
    return model.eval()


def recording_scores(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """A list that receives the router scores get_dynamic_thres collects (one array per call; with --sweep those of
    its one pass over both paths), unchanged."""
    import utils.evaluation.sweep
    recorded, collect, collect_paths = ([], utils.evaluation.sweep.collect_scores,
                                        utils.evaluation.sweep.collect_path_records)

    def recording(model, loader) -> np.ndarray:
        recorded.append(collect(model, loader))
        return recorded[-1]

    def recording_paths(*args, **kwargs):
        records = collect_paths(*args, **kwargs)
        recorded.append(records.scores.float().numpy())
        return records

    monkeypatch.setattr(utils.evaluation.sweep, 'collect_scores', recording)
    monkeypatch.setattr(utils.evaluation.sweep, 'collect_path_records', recording_paths)
    return recorded


def random_image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    """A w x h image of random pixels written at `path` (its extension picks the format), folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def cli_error_line(main, argv: list[str], capsys: pytest.CaptureFixture, code: int = 2,
                   flag_error: bool = False) -> str:
    """Run a script's main(argv), which must stop with exit `code` and one `error:` line (argparse's
    `<prog>: error:` after its usage lines when `flag_error`) and no traceback on stderr; returns that line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    named = ': error: ' in line and not line.startswith('error: ') if flag_error else line.startswith('error: ')
    assert e.value.code == code and named and 'Traceback' not in '\n'.join(err), err[-5:]
    return line
