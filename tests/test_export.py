"""export.py: the three graphs and the routing runner give Model's outputs and routes (ONNX via onnxruntime,
TorchScript); bad input is one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export
from models.checkpoint import save_checkpoint
from models.exported import ExportedDynamicModel, ExportError
from models.inference import load_for_inference
from models.yolo import Model

ROOT = Path(__file__).resolve().parents[1]
CFG2 = str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml')
IMG = 96


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny step-2 checkpoint whose router spreads its scores, exported in both formats."""
    folder = tmp_path_factory.mktemp('export')
    torch.manual_seed(0)
    model = Model(CFG2, nc=3)
    with torch.no_grad():
        for p in model.router.parameters():
            p.normal_(0, 1.0)  # a fresh router gives every image nearly the same score
    save_checkpoint({'model': model.state_dict()}, folder / 'tiny.pt')
    manifest = export.run(export.parse_opt(['--cfg', CFG2, '--weight', str(folder / 'tiny.pt'), '--num-classes', '3',
                                            '--img-size', str(IMG), '--include', 'onnx', 'torchscript']))
    return folder / 'tiny.pt', manifest


def _reference(weights: Path, x: torch.Tensor, thres: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model = load_for_inference(CFG2, str(weights), 3, torch.device('cpu'))
    with torch.inference_mode():
        model.get_score = True
        scores = model(x)[:, 0].numpy()
        model.get_score = False
        model.dy_thres = thres
        decoded = model(x)[0].numpy()
    return decoded, scores >= thres, scores


@pytest.mark.parametrize('backend', ['torchscript', 'onnx'])
def test_exported_model_routes_and_detects_as_the_model(exported: tuple, backend: str) -> None:
    if backend == 'onnx':
        pytest.importorskip('onnxruntime', reason='onnxruntime not installed')
    weights, manifest = exported
    x = torch.rand(6, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    x = x * torch.linspace(0.1, 1.0, 6).view(6, 1, 1, 1)  # from dark to bright: different router scores
    _, _, scores = _reference(weights, x, 0.5)
    ordered = np.sort(scores)
    assert ordered[-1] - ordered[0] > 1e-3, scores  # the router tells these images apart
    middle = float((ordered[2] + ordered[3]) / 2)  # three easy, three hard, no score near the threshold
    for thres in (0.0, middle, 2.0):
        decoded, easy, _ = _reference(weights, x, thres)
        out, out_easy = ExportedDynamicModel(manifest, backend, dy_thres=thres)(x)
        np.testing.assert_array_equal(out_easy, easy)
        np.testing.assert_allclose(out, decoded, rtol=1e-4, atol=1e-3)
    assert easy.sum() == 0 and out.shape == decoded.shape


def test_manifest_lists_the_graphs_and_the_features(exported: tuple) -> None:
    _, manifest = exported
    runner = ExportedDynamicModel(manifest, 'torchscript')
    spec = runner.spec
    assert spec['img_size'] == [IMG, IMG] and spec['nc'] == 3 and spec['dy_thres'] == 0.5
    assert set(spec['easy_features']) <= set(spec['features']) and set(spec['hard_features']) <= set(spec['features'])
    for name in spec['files'].values():
        assert (manifest.parent / name).is_file()


def test_bad_export_input_is_one_line(tmp_path: Path, exported: tuple) -> None:
    weights, _ = exported
    step1 = str(ROOT / 'cfg' / 'dy-yolov7-tiny-step1.yaml')
    torch.manual_seed(0)
    save_checkpoint({'model': Model(step1, nc=3).state_dict()}, tmp_path / 's1.pt')
    for args, expected in ((['--cfg', step1, '--weight', str(tmp_path / 's1.pt')], 'not a step-2 config'),
                           (['--cfg', CFG2, '--weight', str(tmp_path / 'none.pt')], 'not found'),
                           (['--cfg', CFG2, '--weight', str(weights), '--img-size', '8'], '--img-size')):
        done = subprocess.run([sys.executable, str(ROOT / 'export.py'), '--num-classes', '3', *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and expected in done.stderr.strip().splitlines()[-1], done.stderr[-500:]
    with pytest.raises(ExportError, match='no such export manifest'):
        ExportedDynamicModel(tmp_path / 'missing.yaml')
