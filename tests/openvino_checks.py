"""Run by tests/test_openvino.py in its own interpreter. OpenVINO export and int8 quantization (export.py --include openvino --int8): the fp32 IR gives the model's
detections and routes, the int8 graphs keep the router and the box decode in fp32 and route well-separated scores
as fp32 does, and test.py / get_dynamic_thres.py / detect.py evaluate an export manifest; bad input is one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import detect
import export
import get_dynamic_thres
import test as test_script
from models.checkpoint import save_checkpoint
from models.exported import ExportedDynamicModel, ExportError
from models.inference import load_for_inference
from models.yolo import Model
from tests.helpers import ROOT, cli_error_line, dark_to_bright, quick_step1_files, spread_router
from utils.data.data_config import list_image_files, load_data_config
from utils.train.step2 import load_detector

pytest.importorskip('openvino', reason='openvino not installed (requirements.txt)')
pytest.importorskip('nncf', reason='nncf not installed (requirements.txt)')

IMG = 64


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped demo detector in the tiny step-2 config (the shipped configs' module kinds: on the suite's toy
    config OpenVINO's CPU plugin returns near-zero int8 features, a fusion fault described in docs/deployment.md)
    with a router that spreads its scores, exported as ONNX + OpenVINO at 64 px and quantized to int8 on 6
    synthetic training images (the demo's kind of images)."""
    return export_demo_detector(tmp_path_factory.mktemp('openvino'), 8, '--calib-images', '6')


def export_demo_detector(folder: Path, images: int, *flags: str) -> dict[str, Path]:
    """The shipped demo detector in the tiny step-2 config with a spread router, saved in folder and exported at
    IMG px to OpenVINO with --int8 calibrated on `images` synthetic images (export.py `flags` added): its cfg,
    weights, fp32 and int8 manifests and data YAML."""
    data, _ = quick_step1_files(folder, images, seed=3)
    cfg = ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'
    model = Model(cfg, nc=3)
    load_detector(model, str(ROOT / 'data' / 'demo' / 'dy-yolov7-tiny-demo.pt'))
    model.eval()
    spread_router(model)
    save_checkpoint({'model': model.state_dict()}, folder / 'tiny.pt')
    manifest = export.run(export.parse_opt(['--cfg', str(cfg), '--weight', str(folder / 'tiny.pt'), '--num-classes',
                                            '3', '--img-size', str(IMG), '--include', 'openvino', '--int8',
                                            '--data', str(data), *flags]))
    return {'cfg': cfg, 'weights': folder / 'tiny.pt', 'manifest': manifest, 'data': data,
            'int8': folder / 'tiny_int8_export.yaml'}


def scores_of(model: Model, x: torch.Tensor) -> np.ndarray:
    """The PyTorch model's router scores."""
    with torch.inference_mode():
        model.get_score = True
        scores = model(x)[:, 0].numpy()
        model.get_score = False
    return scores


def test_openvino_fp32_gives_the_models_detections_and_routes(exported: dict) -> None:
    """The fp32 IR, run with an explicit f32 precision hint, equals the PyTorch model within fp32 rounding."""
    model = load_for_inference(str(exported['cfg']), str(exported['weights']), 3, torch.device('cpu'))
    x = dark_to_bright(6, IMG, seed=1)
    middle = float(np.sort(scores_of(model, x))[2:4].mean())
    model.dy_thres = middle
    with torch.inference_mode():
        decoded = model(x)[0].numpy()
    out, easy = ExportedDynamicModel(exported['manifest'], 'openvino', dy_thres=middle)(x)
    assert int(easy.sum()) == 3
    np.testing.assert_allclose(out, decoded, rtol=1e-4, atol=1e-3)


def test_int8_keeps_router_and_decode_in_fp32_and_routes_as_fp32(exported: dict) -> None:
    """No FakeQuantize inside the router or the IDetect layer (its decode and, as docs/deployment.md decides with
    figures, its 1x1 output convolutions m.*); every other convolution reads int8 inputs, and the nodes NNCF left
    out are exactly those fp32_patterns names (NNCF matches patterns from the start of a name only: the decode's
    pattern also took the m.* convolutions without saying so; now the patterns are whole names and say so); scores move less than the gap between
    well-separated images, so routes at the middle threshold equal fp32's; boxes of confident detections stay within
    a few pixels of fp32's."""
    import re

    import openvino as ov

    from models.export_manifest import read_manifest
    from models.openvino_export import HEAD_CONVS_FP32, fp32_patterns
    spec = yaml.safe_load(exported['int8'].read_text())
    assert spec['precision'] == 'int8' and spec['calibration']['images'] == 6 and HEAD_CONVS_FP32
    patterns = fp32_patterns(read_manifest(exported['int8']))
    for part, scope in (('part1', '/router/'), ('easy', '/model_h/model_h.{}/'.format(spec['detect_index']['model_h'])),
                        ('hard', '/model_h2/model_h2.{}/'.format(spec['detect_index']['model_h2']))):
        ops = ov.Core().read_model(str(exported['int8'].parent / spec['files'][f'{part}_openvino'])).get_ordered_ops()
        quantized = [op.get_friendly_name() for op in ops if op.get_type_name() == 'FakeQuantize']
        assert len(quantized) > 10, part
        assert [name for name in quantized if scope in name] == [], part
        # int8 weights reach a convolution dequantized (Convert / Multiply); fp32 ones straight from a Constant
        convs = {op.get_friendly_name(): op.input_value(1).get_node().get_type_name() != 'Constant'
                 for op in ops if op.get_type_name() == 'Convolution'}
        kept = {name for name in convs if any(re.fullmatch(p, name) for p in patterns[part])}
        assert {name for name, int8 in convs.items() if not int8} == kept, part
        assert part == 'part1' or len(kept) == 3, (part, kept)  # the head's three 1x1 output convolutions
    x = dark_to_bright(6, IMG, seed=1)
    fp32 = ExportedDynamicModel(exported['manifest'], 'openvino')
    int8 = ExportedDynamicModel(exported['int8'], 'openvino')
    s32, s8 = (m.scores_and_features(x.numpy())[0] for m in (fp32, int8))
    ordered = np.sort(s32)
    assert np.abs(s8 - s32).max() < (ordered[3] - ordered[2]) / 2
    fp32.dy_thres = int8.dy_thres = float(ordered[2:4].mean())
    (d32, e32), (d8, e8) = fp32(x), int8(x)
    np.testing.assert_array_equal(e8, e32)
    confident = d32[..., 4] > np.quantile(d32[..., 4], 0.99)
    assert np.abs(d8[confident][:, :4] - d32[confident][:, :4]).max() < 0.1 * IMG


def test_test_py_evaluates_manifests_and_openvino_equals_onnx(exported: dict, tmp_path: Path) -> None:
    """test.py --weight <manifest>: the fp32 graphs give the same metrics under onnxruntime and OpenVINO (both
    fp32)."""
    def run(manifest: Path, *extra: str) -> tuple:
        return test_script.run_test(test_script.parse_opt([
            '--weight', str(manifest), '--data', str(exported['data']), '--img-size', str(IMG), '--batch-size', '2',
            '--device', 'cpu', '--project', str(tmp_path), '--dy-thres', '0.5', *extra]))[0]
    onnx, openvino = run(exported['manifest']), run(exported['manifest'], '--engine', 'openvino')
    np.testing.assert_allclose(openvino, onnx, atol=1e-3)  # (the int8 manifest runs in the next test's scripts)


def test_get_dynamic_thres_and_detect_take_a_manifest(exported: dict, tmp_path: Path) -> None:
    """get_dynamic_thres.py prints 11 ascending thresholds from the int8 graphs' scores and writes router.json;
    detect.py draws an image with them."""
    thresholds = get_dynamic_thres.run(get_dynamic_thres.parse_opt([
        '--weight', str(exported['int8']), '--data', str(exported['data']), '--img-size', str(IMG), '--device', 'cpu',
        '--batch-size', '2', '--project', str(tmp_path), '--name', 'thres']))
    values = [float(t) for t in thresholds]
    assert len(values) == 11 and values == sorted(values)
    assert json.loads((tmp_path / 'thres' / 'router.json').read_text())['images'] == 2
    images = Path(list_image_files(load_data_config(exported['data'])['val'])[0]).parent
    run = detect.run_detect(detect.parse_opt(['--weight', str(exported['int8']), '--num-classes', '3', '--source',
                                              str(images), '--device', 'cpu', '--project', str(tmp_path),
                                              '--name', 'det']))
    assert len(list(run.glob('*.jpg'))) == 2


def test_bad_openvino_input_is_one_line(exported: dict, tmp_path: Path, capsys) -> None:
    """A missing .bin, an IR altered after export, a manifest for another class count, --int8 without --data,
    --engine with a .pt: each one line naming the file or flag."""
    copy = tmp_path / 'copy'
    shutil.copytree(exported['manifest'].parent, copy, ignore=shutil.ignore_patterns('*.pt', 'data'))
    manifest = copy / exported['int8'].name
    (copy / 'tiny_int8_easy.bin').unlink()
    with pytest.raises(ExportError, match=r'tiny_int8_easy\.bin: missing or not the file'):
        ExportedDynamicModel(manifest, 'openvino')
    xml = copy / 'tiny_int8_part1.xml'
    xml.write_text(xml.read_text().replace('<layers>', '<layers> ', 1))
    with pytest.raises(ExportError, match=r'tiny_int8_part1\.xml: missing or not the file'):
        ExportedDynamicModel(manifest, 'openvino')
    two = yaml.safe_load(exported['data'].read_text())
    two.update(nc=2, names=['a', 'b'])
    (tmp_path / 'two.yaml').write_text(yaml.safe_dump(two))
    line = cli_error_line(test_script.main, ['--weight', str(exported['int8']), '--data', str(tmp_path / 'two.yaml'),
                                             '--device', 'cpu', '--project', str(tmp_path)], capsys)
    assert 'exported for 3 classes, the data has 2' in line
    line = cli_error_line(export.main, ['--cfg', str(exported['cfg']), '--weight', str(exported['weights']),
                                        '--num-classes', '3', '--int8'], capsys, flag_error=True)
    assert '--int8 calibrates on images: pass --data' in line
    line = cli_error_line(test_script.main, ['--cfg', str(exported['cfg']), '--weight', str(exported['weights']),
                                             '--engine', 'openvino', '--data', str(exported['data']), '--device',
                                             'cpu', '--project', str(tmp_path)], capsys)
    assert '--engine openvino runs an export manifest' in line


def test_int8_keep_routes_quantizes_only_the_heads(exported: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--int8 keep-routes: part 1 (backbone 1 + router) is saved unquantized, so scores equal the fp32 graphs' bit for
    bit, and only head 1 and backbone 2 + head 2 go through NNCF (its quantization itself is checked above; here
    a stand-in records which graphs reach it)."""
    import nncf

    from models.export_manifest import read_manifest
    from models.openvino_export import quantize_int8
    quantized = []

    def record(model, dataset, **kwargs):
        quantized.append(model.outputs[0].get_any_name())
        return model
    monkeypatch.setattr(nncf, 'quantize', record)
    images = [dark_to_bright(2, IMG, seed=4)[i:i + 1].numpy() for i in range(2)]
    path = quantize_int8(read_manifest(exported['manifest']), exported['manifest'].parent, tmp_path / 'routes',
                         images, 'test', keep_routes=True)
    assert quantized == ['detections', 'detections']  # the two heads, not part 1 (whose first output is the score)
    assert yaml.safe_load(path.read_text())['calibration']['keep_routes'] is True
    x = dark_to_bright(6, IMG, seed=1).numpy()
    fp32, kept = (ExportedDynamicModel(m, 'openvino').scores_and_features(x)[0] for m in (exported['manifest'], path))
    np.testing.assert_array_equal(kept, fp32)
