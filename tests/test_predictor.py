"""The predictor (utils/detection/predictor.py) gives detect.py's results: the same boxes as its saved labels, the
same routes, for paths, folders, globs and OpenCV arrays; the docs' example runs as written. (Its equality with
detect.py on an OpenVINO fp32 manifest: tests/openvino_runtime_checks.py.)"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import detect
from models.checkpoint import save_checkpoint
from models.yolo import Model
from tests.helpers import ROOT, spread_router, tiny_config
from utils.detection.predictor import Prediction, Predictor
from utils.detection.sources import SourceError

SIZES = [(64, 48), (48, 64), (64, 64), (80, 40), (40, 80), (56, 64)]


@pytest.fixture(scope='module')
def routed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny routed model whose router spreads scores, and 6 images of mixed sizes and brightness."""
    folder = tmp_path_factory.mktemp('predictor')
    (folder / 'images').mkdir()
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate(SIZES):
        img = (rng.integers(0, 256, (h, w, 3)) * (0.1 + 0.9 * i / len(SIZES))).astype(np.uint8)
        assert cv2.imwrite(str(folder / 'images' / f'{i}.png'), img)
    cfg = folder / 'tiny-step2.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    model = Model(cfg).eval()
    spread_router(model)
    save_checkpoint({'model': model.state_dict()}, folder / 'tiny.pt')
    return {'cfg': cfg, 'weights': folder / 'tiny.pt', 'images': folder / 'images'}


def as_labels(prediction: Prediction, shape: tuple[int, ...]) -> np.ndarray:
    """A prediction as detect.py's --save-txt --save-conf rows: class cx cy w h conf, normalised by the image size."""
    h, w = shape[:2]
    b = prediction.boxes
    xywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                     (b[:, 3] - b[:, 1]) / h], 1)
    return np.column_stack([prediction.class_ids, xywh, prediction.confidences])


def detect_run(weights: Path, cfg: str, images: Path, out: Path, caplog, *flags: str) -> tuple[Path, dict]:
    """detect.py --save-txt --save-conf on the images: its run folder and each image's logged route."""
    caplog.clear()
    with caplog.at_level('INFO'):
        run = detect.run_detect(detect.parse_opt([
            '--weight', str(weights), *(['--cfg', cfg] if cfg else []), '--num-classes', '3', '--source', str(images),
            '--img-size', '64', '--device', 'cpu', '--project', str(out), '--save-txt', '--save-conf', '--nosave',
            *flags]))
    routes = {Path(r.message.split(':')[0]).name: re.search(r'(easy|hard) path', r.message).group(1)
              for r in caplog.records if ' path, Done.' in r.message}
    return run, routes


def assert_equals_detect(predictions: list[Prediction], run: Path, routes: dict) -> None:
    """Each prediction's rows equal detect.py's label file (to its printed precision) and its route the logged one."""
    for p in predictions:
        name = Path(p.source).name
        shape = cv2.imread(p.source).shape
        saved = run / 'labels' / f'{Path(name).stem}.txt'
        rows = np.loadtxt(saved, ndmin=2) if saved.is_file() else np.zeros((0, 6))
        np.testing.assert_allclose(as_labels(p, shape), rows, atol=2e-6, rtol=1e-5)
        assert p.route == routes[name] and p.score is not None


def test_predictor_gives_detects_labels_and_routes(routed: dict, tmp_path: Path, caplog) -> None:
    """The same images through detect.py and the predictor (folder, glob, arrays; batch 1 and 6): equal boxes,
    confidences, classes and routes; scores on both sides of the threshold."""
    run, routes = detect_run(routed['weights'], str(routed['cfg']), routed['images'], tmp_path, caplog,
                             '--conf-thres', '0.001', '--dy-thres', '0.6')
    assert set(routes.values()) == {'easy', 'hard'}
    kwargs = dict(cfg=routed['cfg'], num_classes=3, img_size=64, conf_thres=0.001, dy_thres=0.6)
    folder = Predictor(routed['weights'], **kwargs)(routed['images'])
    assert [Path(p.source).name for p in folder] == sorted(routes) and all(len(p.boxes) for p in folder)
    assert_equals_detect(folder, run, routes)
    batched = Predictor(routed['weights'], batch_size=6, **kwargs)(str(routed['images'] / '*.png'))
    assert_equals_detect(batched, run, routes)
    arrays = Predictor(routed['weights'], **kwargs)([cv2.imread(p.source) for p in folder])
    for a, p in zip(arrays, folder):
        assert a.source.startswith('<array ') and a.route == p.route
        np.testing.assert_array_equal(a.boxes, p.boxes)
    assert all({'preprocess', 'inference', 'nms'} == set(p.times) for p in folder)
    with pytest.raises(SourceError, match='array 0: expected an H x W x 3 uint8 BGR image'):
        Predictor(routed['weights'], **kwargs)(np.zeros((4, 4), np.float32))


def test_the_docs_predictor_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/inference.md's predictor example, executed from the repository root: one line per image (the array,
    then the four shipped sample images), each with boxes."""
    text = (ROOT / 'docs' / 'inference.md').read_text()
    example = text.split('<!-- the predictor example: run by tests/test_predictor.py -->\n```python\n', 1)[1]
    example = example.split('```', 1)[0]
    monkeypatch.chdir(ROOT)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, 'docs/inference.md', 'exec'), {})  # noqa: S102 (the docs' own code, as a user runs it)
    lines = printed.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith('<array 0>') and all(' None ' in line for line in lines)
