"""export.py: the three graphs and the routing runner give Model's outputs and routes (ONNX via onnxruntime,
TorchScript); bad input is one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import export
from models.checkpoint import save_checkpoint
from models.exported import ExportedDynamicModel, ExportError
from models.inference import load_for_inference
from models.yolo import Model
from tests.helpers import ROOT, dark_to_bright, spread_router, tiny_config

IMG = 64
THRESHOLDS = ('all easy', 'three easy', 'all hard')


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(config, checkpoint, manifest): the routed tiny config with a router that spreads its scores, exported in
    both formats."""
    folder = tmp_path_factory.mktemp('export')
    cfg = folder / 'tiny-step2.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    torch.manual_seed(0)
    model = Model(cfg).eval()
    spread_router(model)  # a fresh router gives every image nearly the same score
    save_checkpoint({'model': model.state_dict()}, folder / 'tiny.pt')
    manifest = export.run(export.parse_opt(['--cfg', str(cfg), '--weight', str(folder / 'tiny.pt'),
                                            '--num-classes', '3', '--img-size', str(IMG),
                                            '--include', 'onnx', 'torchscript']))
    return cfg, folder / 'tiny.pt', manifest


@pytest.fixture(scope='module')
def reference(exported: tuple) -> tuple[torch.Tensor, dict[str, tuple[float, np.ndarray, np.ndarray]]]:
    """A dark-to-bright batch and, per threshold name, (threshold, Model's detections, Model's easy mask)."""
    cfg, weights, _ = exported
    model = load_for_inference(str(cfg), str(weights), 3, torch.device('cpu'))
    x = dark_to_bright(6, IMG, seed=1)
    with torch.inference_mode():
        model.get_score = True
        scores = model(x)[:, 0].numpy()
        model.get_score = False
        ordered = np.sort(scores)
        assert ordered[3] - ordered[2] > 0.02, scores  # no score near the middle threshold
        outputs = {}
        for name, thres in zip(THRESHOLDS, (0.0, float((ordered[2] + ordered[3]) / 2), 2.0)):
            model.dy_thres = thres
            outputs[name] = thres, model(x)[0].numpy(), scores >= thres
    return x, outputs


@pytest.mark.parametrize('backend', ['torchscript', 'onnx'])
def test_exported_model_routes_and_detects_as_the_model(exported: tuple, reference: tuple, backend: str) -> None:
    if backend == 'onnx':
        pytest.importorskip('onnxruntime', reason='onnxruntime not installed')
    x, outputs = reference
    for name, (thres, decoded, easy) in outputs.items():
        out, out_easy = ExportedDynamicModel(exported[2], backend, dy_thres=thres)(x)
        assert int(easy.sum()) == {'all easy': 6, 'three easy': 3, 'all hard': 0}[name]
        np.testing.assert_array_equal(out_easy, easy)
        assert out.shape == decoded.shape
        np.testing.assert_allclose(out, decoded, rtol=1e-4, atol=1e-3)


def _batch_dims(path: Path) -> list[int | str]:
    """Dimension 0 of every input and output of an ONNX graph: an int when fixed, its symbol's name when free."""
    import onnx
    graph = onnx.load(str(path)).graph
    dims = [v.type.tensor_type.shape.dim[0] for v in (*graph.input, *graph.output)]
    return [d.dim_value if d.HasField('dim_value') else d.dim_param for d in dims]


def test_static_batch_fixes_the_batch_axis_and_the_runner_still_routes(exported: tuple, reference: tuple,
                                                                       tmp_path: Path) -> None:
    """--static-batch --batch-size 6: every input and output of the three ONNX graphs has batch 6 (an int; without
    the flag a free 'batch' symbol), for runtimes that need fixed shapes; the runner still routes per image and
    detects as the model, a mixed batch's heads and a smaller batch getting padded to 6 images (before the fix ONNX
    Runtime refused them: 'invalid dimensions'); a larger batch is one ExportError line."""
    pytest.importorskip('onnxruntime', reason='onnxruntime not installed')
    cfg, weights, manifest = exported
    static = export.run(export.parse_opt(['--cfg', str(cfg), '--weight', str(weights), '--num-classes', '3',
                                          '--img-size', str(IMG), '--batch-size', '6', '--static-batch',
                                          '--include', 'onnx', '--out', str(tmp_path)]))
    spec = yaml.safe_load(static.read_text())
    assert spec['batch'] == 6 and spec['dynamic_batch'] is False
    free = yaml.safe_load(manifest.read_text())
    for part in ('part1', 'easy', 'hard'):
        fixed_dims, free_dims = _batch_dims(tmp_path / spec['files'][part]), _batch_dims(
            manifest.parent / free['files'][part])
        assert len(fixed_dims) == len(free_dims) >= 2 and fixed_dims == [6] * len(fixed_dims), (part, fixed_dims)
        assert free_dims == ['batch'] * len(free_dims), (part, free_dims)
    x, outputs = reference
    runner = ExportedDynamicModel(static, 'onnx')
    for thres, decoded, easy in outputs.values():
        runner.dy_thres = thres
        out, out_easy = runner(x)
        np.testing.assert_array_equal(out_easy, easy)
        np.testing.assert_allclose(out, decoded, rtol=1e-4, atol=1e-3)
    thres, decoded, easy = outputs['three easy']
    runner.dy_thres = thres
    out, out_easy = runner(x[:5])  # a smaller (last) batch is padded too
    np.testing.assert_array_equal(out_easy, easy[:5])
    np.testing.assert_allclose(out, decoded[:5], rtol=1e-4, atol=1e-3)
    with pytest.raises(ExportError, match='--static-batch for batches of at most 6'):
        runner(torch.cat((x, x[:1])))


def test_manifest_lists_the_graphs_and_the_features(exported: tuple) -> None:
    manifest = exported[2]
    runner = ExportedDynamicModel(manifest, 'torchscript')
    spec = runner.spec
    assert spec['img_size'] == [IMG, IMG] and spec['nc'] == 3 and spec['dy_thres'] == 0.5
    assert set(spec['easy_features']) <= set(spec['features']) and set(spec['hard_features']) <= set(spec['features'])
    for name in spec['files'].values():
        assert (manifest.parent / name).is_file()


def test_bad_export_input_is_one_line(tmp_path: Path, exported: tuple, capsys) -> None:
    """A step-1 config, a missing checkpoint (in process) and a too small --img-size (through the script, as a
    user runs it) each end with exit code 2 and one line naming the problem; a missing manifest is an
    ExportError."""
    cfg, weights, _ = exported
    step1 = tmp_path / 'tiny-step1.yaml'
    step1.write_text(yaml.safe_dump(tiny_config(dynamic=False, nc=3)))
    torch.manual_seed(0)
    save_checkpoint({'model': Model(step1).state_dict()}, tmp_path / 's1.pt')
    for args, expected in (([str(step1), str(tmp_path / 's1.pt')], 'not a step-2 config'),
                           ([str(cfg), str(tmp_path / 'none.pt')], 'not found')):
        with pytest.raises(SystemExit) as e:
            export.main(['--num-classes', '3', '--cfg', args[0], '--weight', args[1]])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and expected in err[-1] and 'Traceback' not in '\n'.join(err), err[-5:]
    done = subprocess.run([sys.executable, str(ROOT / 'export.py'), '--num-classes', '3', '--cfg', str(cfg),
                           '--weight', str(weights), '--img-size', '8'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and '--img-size' in done.stderr.strip().splitlines()[-1], done.stderr[-500:]
    assert 'Traceback' not in done.stderr
    with pytest.raises(ExportError, match='no such export manifest'):
        ExportedDynamicModel(tmp_path / 'missing.yaml')
