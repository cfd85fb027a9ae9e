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
from tests.helpers import ROOT, dark_to_bright, quick_step1_files, spread_router, tiny_config

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
    Runtime refused them: 'invalid dimensions'); a larger batch runs in chunks of 6 (it was an ExportError, so test.py
    and get_dynamic_thres.py stopped at their default batch sizes)."""
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
    out, out_easy = runner(torch.cat((x, x, x[:1])))  # 13 images: chunks of 6, 6 and 1 (padded)
    np.testing.assert_array_equal(out_easy, np.concatenate((easy, easy, easy[:1])))
    np.testing.assert_allclose(out, np.concatenate((decoded, decoded, decoded[:1])), rtol=1e-4, atol=1e-3)


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


def _manifest_copy(exported: tuple, folder: Path, **changes) -> Path:
    """The fp32 manifest written into `folder` (its graphs stay where they are unless `files` says otherwise)
    with `changes` applied to its fields."""
    spec = yaml.safe_load(exported[2].read_text())
    spec.update(changes)
    path = folder / 'copy_export.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_manifest_loads_only_its_own_checked_files(exported: tuple, tmp_path: Path, caplog) -> None:
    """Files named outside the manifest's folder ('../x.onnx', an absolute path) are refused in one line (they were
    loaded); a file without a recorded SHA-256 is loaded with one warning saying it is unchecked (it was silent);
    a malformed manifest (files as a list) is one ExportError line (it was an AttributeError)."""
    spec = yaml.safe_load(exported[2].read_text())
    inner = tmp_path / 'inner'
    inner.mkdir()
    for name in (f'../../{exported[2].parent.name}/{spec["files"]["part1"]}',
                 str(exported[2].parent / spec['files']['part1'])):
        path = _manifest_copy(exported, inner, files={**spec['files'], 'part1': name})
        with pytest.raises(ExportError, match='outside its own folder'):
            ExportedDynamicModel(path, 'onnx')
    here = _manifest_copy(exported, exported[2].parent, digests={k: v for k, v in spec['digests'].items()
                                                                  if k != spec['files']['hard']})
    with caplog.at_level('WARNING'):
        ExportedDynamicModel(here, 'onnx')
    assert [r.message for r in caplog.records if 'unchecked' in r.message] == [
        f'WARNING: {exported[2].parent / spec["files"]["hard"]}: copy_export.yaml records no SHA-256 for it, so it is '
        'used unchecked (rerun export.py to record one)']
    for bad, problem in (({'files': ['a.onnx']}, 'files is a list'), ({'img_size': 64}, 'img_size is a int'),
                         ({'nc': None}, 'nc is a NoneType')):
        with pytest.raises(ExportError, match=f'not an export manifest of this version \\({problem}\\)'):
            ExportedDynamicModel(_manifest_copy(exported, tmp_path, **bad), 'onnx')
    (tmp_path / 'list_export.yaml').write_text('- a\n- b\n')
    with pytest.raises(ExportError, match='a list, not a mapping'):
        ExportedDynamicModel(tmp_path / 'list_export.yaml')


def test_an_int8_manifest_names_its_engine(exported: tuple) -> None:
    """--engine onnx on an int8 manifest says int8 graphs run on OpenVINO (it said 'export with --include onnx',
    which cannot help); left out, the engine is OpenVINO (an int8 manifest lists OpenVINO files only)."""
    spec = yaml.safe_load(exported[2].read_text())
    path = _manifest_copy(exported, exported[2].parent, precision='int8',
                          files={f'{part}_openvino': f'int8_{part}.xml' for part in ('part1', 'easy', 'hard')})
    for engine in ('onnx', 'torchscript'):
        with pytest.raises(ExportError, match='int8 graphs run on OpenVINO only; pass --engine openvino'):
            ExportedDynamicModel(path, engine)
    from models.export_manifest import read_manifest
    from models.exported import default_backend
    assert default_backend(read_manifest(path)) == 'openvino' and default_backend(read_manifest(exported[2])) == 'onnx'
    assert spec['precision'] == 'fp32'


@pytest.fixture(scope='module')
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 96-px images (2 for val)."""
    return quick_step1_files(tmp_path_factory.mktemp('data'), 8, seed=3)[0]


def test_detect_runs_a_non_square_export_and_says_img_size_is_ignored(exported: tuple, data_yaml: Path,
                                                                      tmp_path: Path, caplog) -> None:
    """detect.py with graphs exported at 64x96 letterboxes every image to 64x96 (it letterboxed to 64x64 and failed
    inside the runner) and says once that --img-size cannot apply (it ignored it without a word); boxes lie in
    the images' own pixels."""
    import detect
    cfg, weights, _ = exported
    manifest = export.run(export.parse_opt(['--cfg', str(cfg), '--weight', str(weights), '--num-classes', '3',
                                            '--img-size', '64', '96', '--out', str(tmp_path / 'wide')]))
    images = data_yaml.parent / 'images' / 'train'
    with caplog.at_level('INFO'):
        run = detect.run_detect(detect.parse_opt([
            '--weight', str(manifest), '--num-classes', '3', '--source', str(images), '--device', 'cpu',
            '--project', str(tmp_path), '--conf-thres', '0', '--save-txt', '--dy-thres', '0.5']))
    ignored = [r.message for r in caplog.records if 'ignored' in r.message]
    assert ignored == ['WARNING: --img-size 640 ignored: the exported graphs take 64x96 images']
    assert len([r for r in caplog.records if ' path, Done.' in r.message]) == len(list(images.iterdir()))
    rows = np.concatenate([np.loadtxt(f, ndmin=2) for f in (run / 'labels').glob('*.txt')])
    assert len(rows) and (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()


def test_easy_share_with_a_manifest_compares_the_export_size(exported: tuple, data_yaml: Path, tmp_path: Path,
                                                             caplog) -> None:
    """Percentiles taken on the 64-px graphs, then test.py --easy-share 0.5 at the default --img-size 640: no
    'the easy share will differ' warning (the graphs run at 64 whatever --img-size says; it warned, and the
    '--img-size ignored' line contradicted it) and half of the images go easy."""
    import get_dynamic_thres
    import test as test_script
    manifest = exported[2]
    get_dynamic_thres.run(get_dynamic_thres.parse_opt([
        '--weight', str(manifest), '--data', str(data_yaml), '--img-size', str(IMG), '--device', 'cpu',
        '--project', str(tmp_path), '--task', 'train']))
    with caplog.at_level('INFO'):
        test_script.run_test(test_script.parse_opt([
            '--weight', str(manifest), '--data', str(data_yaml), '--device', 'cpu', '--project', str(tmp_path),
            '--easy-share', '0.5', '--task', 'train', '--batch-size', '4']))
    messages = [r.message for r in caplog.records]
    assert not [m for m in messages if 'will differ' in m], messages
    assert [m for m in messages if 'ignored' in m] == ['WARNING: --img-size 640 ignored: the exported graphs take '
                                                       '64x64 images']
    assert any(m.startswith('Routing: 3/6 images easy') for m in messages), messages


def test_threads_reach_every_engine(exported: tuple, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """--threads N sets ONNX Runtime's intra-op threads for a manifest and torch's for a checkpoint (so script
    timings match bench_speed.py's at that count); a negative count is one argparse line."""
    import argparse

    import test as test_script
    from models.exported_model import load_inference_model
    from tests.helpers import cli_error_line
    cfg, weights, manifest = exported
    opt = argparse.Namespace(weight=str(manifest), engine=None, threads=1, ov_mode='latency', bf16=None,
                             compile=None, cfg='')
    model = load_inference_model(opt, 3, torch.device('cpu'))
    assert model.runner.parts['part1'].session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setattr(torch, 'set_num_threads', calls := [].append)
    load_inference_model(argparse.Namespace(**{**vars(opt), 'weight': str(weights), 'cfg': str(cfg), 'threads': 3}),
                         3, torch.device('cpu'))
    assert calls.__self__ == [3]
    line = cli_error_line(test_script.main, ['--weight', str(manifest), '--threads', '-1'], capsys, flag_error=True)
    assert '--threads -1: give a count of at least 1' in line
