"""Run by tests/test_openvino_runtime.py in its own interpreter (see tests/test_openvino.py for why). How the OpenVINO
runner compiles and runs the graphs (models/openvino_runtime.py): a --static-batch int8 export, --bf16's fp32
nodes and its fallback on CPUs without bf16, throughput mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from models.exported import ExportedDynamicModel
from tests import openvino_checks
from tests.helpers import dark_to_bright

pytest.importorskip('openvino', reason='openvino not installed (requirements.txt)')
pytest.importorskip('nncf', reason='nncf not installed (requirements.txt)')
IMG = openvino_checks.IMG


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped demo detector in the tiny step-2 config with a spread router (as tests/openvino_checks.py's
    fixture), exported once with --static-batch --batch-size 2 and --int8 on 3 synthetic images: 'manifest' (fp32)
    and 'int8'. One export serves every check here (the suite's time)."""
    return openvino_checks.export_demo_detector(tmp_path_factory.mktemp('runtime'), 4, '--static-batch',
                                                '--batch-size', '2', '--calib-images', '3')


def test_static_batch_int8_export_calibrates_in_its_batch_and_runs_any_batch(exported: dict) -> None:
    """export.py --static-batch --batch-size 2 --int8: calibration runs in batches of 2 (it fed batches of one to
    graphs of batch 2 and crashed with OpenVINO's RuntimeError traceback), and the int8 graphs run 5 images in
    chunks of 2 with scores as the fp32 graphs give them within int8's error."""
    spec = yaml.safe_load(exported['int8'].read_text())
    assert spec['batch'] == 2 and spec['dynamic_batch'] is False and spec['calibration']['images'] == 3
    assert yaml.safe_load(exported['manifest'].read_text())['batch'] == 2
    x = dark_to_bright(5, IMG, seed=1).numpy()
    static = ExportedDynamicModel(exported['int8'])
    assert static.parts['part1'].batch == 2
    fp32 = ExportedDynamicModel(exported['manifest'], 'openvino')
    s8, s32 = static.scores_and_features(x)[0], fp32.scores_and_features(x)[0]
    assert s8.shape == (5,) and np.abs(s8 - s32).max() < 0.1
    decoded, easy = static(x)
    assert decoded.shape[0] == 5 and easy.shape == (5,)


def test_bf16_with_a_manifest_keeps_router_and_decode_in_fp32(exported: dict, monkeypatch: pytest.MonkeyPatch,
                                                              caplog) -> None:
    """--bf16 with a manifest ran the whole OpenVINO graph in bf16, router and decode included (and an int8
    manifest's fp32 parts). Now, on a CPU with native bf16, every router node of part 1 and every IDetect decode
    node of the heads is marked to run in fp32 and nothing else is; keep-routes compiles part 1 in fp32; on a CPU
    without native bf16, the graphs are compiled fp32 with one warning saying so. The log names what runs how."""
    import models.openvino_runtime as runtime
    from models.exported_model import ExportedModel
    spec = yaml.safe_load(exported['manifest'].read_text())
    monkeypatch.setattr(runtime, 'cpu_has_bf16', lambda: True)
    runner = ExportedDynamicModel(exported['manifest'], 'openvino', precision='bf16')
    model = runtime.read_ir(exported['manifest'].parent / spec['files']['part1_openvino'])
    router = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_friendly_name().startswith('/router/')}
    assert len(router) > 5 and set(runner.parts['part1'].kept) - {'score'} == router
    for part, section in (('easy', 'model_h'), ('hard', 'model_h2')):
        own = f'/{section}/{section}.{spec["detect_index"][section]}/'
        kept = runner.parts[part].kept
        assert kept and all(k.startswith(own) or k == 'detections' for k in kept)
        assert any('Sigmoid' in k for k in kept) and any('Concat' in k for k in kept)
    assert all(p.precision == 'bf16' for p in runner.parts.values())
    routes = ExportedModel(exported['int8'], precision='bf16', keep_routes=True)
    assert [routes.runner.parts[p].precision for p in ('part1', 'easy', 'hard')] == ['fp32', 'bf16', 'bf16']
    assert routes.description() == (
        f'openvino int8 (unquantized ops bf16; router, decode and part 1 fp32) graphs at {IMG}x{IMG}, latency mode')
    monkeypatch.setattr(runtime, 'cpu_has_bf16', lambda: False)
    with caplog.at_level('WARNING'):
        plain = ExportedDynamicModel(exported['manifest'], 'openvino', precision='bf16')
    assert all(p.precision == 'fp32' and not p.kept for p in plain.parts.values())
    assert [r.message for r in caplog.records if 'bf16' in r.message] == [
        'WARNING: --bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so OpenVINO runs the graphs in fp32 (its '
        'bf16 would be emulated and slower)']


def test_throughput_mode_gives_latency_modes_outputs(exported: dict) -> None:
    """--ov-mode throughput (several requests in flight) returns what latency mode returns, image for image; the
    thread count and the mode are OpenVINO's compiled properties."""
    x = dark_to_bright(6, IMG, seed=2).numpy()
    latency = ExportedDynamicModel(exported['int8'], dy_thres=0.5, threads=1)
    throughput = ExportedDynamicModel(exported['int8'], dy_thres=0.5, mode='throughput', threads=1)
    assert throughput.parts['hard'].queue is not None and latency.parts['hard'].queue is None
    for runner, hint in ((latency, 'LATENCY'), (throughput, 'THROUGHPUT')):  # --threads and --ov-mode reach OpenVINO
        compiled = runner.parts['part1'].compiled
        assert compiled.get_property('INFERENCE_NUM_THREADS') == 1
        assert str(compiled.get_property('PERFORMANCE_HINT')) == hint
    (d1, e1), (d2, e2) = latency(x), throughput(x)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-4)


def test_the_predictor_gives_detects_results_on_an_openvino_fp32_manifest(exported: dict, tmp_path: Path,
                                                                         caplog) -> None:
    """Predictor(manifest, engine='openvino') and detect.py --engine openvino on the same images: equal boxes,
    confidences, classes and routes (tests/test_predictor.py does the same for a checkpoint)."""
    from tests.test_predictor import assert_equals_detect, detect_run
    from utils.detection.predictor import Predictor
    images = exported['data'].parent / 'images' / 'train'
    run, routes = detect_run(exported['manifest'], '', images, tmp_path, caplog, '--conf-thres', '0.001',
                             '--engine', 'openvino', '--dy-thres', '0.5')
    predictions = Predictor(exported['manifest'], num_classes=3, engine='openvino', conf_thres=0.001,
                            img_size=IMG)(images)
    assert len(predictions) == len(routes) >= 2
    assert_equals_detect(predictions, run, routes)
