"""An image's route does not depend on the batch it is evaluated in: test.py and get_dynamic_thres.py letterbox each
image of a dynamic model to its own batch-1 shape and batch images of one shape together (the reference's rect
batches padded every image to its batch's shape, which moved the router's pooled features: the demo's model routed
64/128 images easy at batch 1 and 75/128 at batch 32 at the same threshold)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import get_dynamic_thres
import test as test_script
from models.checkpoint import save_checkpoint
from models.yolo import Model
from tests.helpers import recording_scores, spread_router, tiny_config

SIZES = [(64, 48), (48, 64), (64, 64), (80, 40), (40, 80), (64, 40), (56, 64), (64, 56), (72, 48), (48, 72),
         (64, 32), (32, 64)]  # (w, h): aspect ratios that make rect shapes differ between images


@pytest.fixture(scope='module')
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 images of mixed aspect ratios and brightness, one box each, and a tiny routed model whose router spreads
    their scores."""
    folder = tmp_path_factory.mktemp('routes')
    rng = np.random.default_rng(0)
    for sub in ('images', 'labels'):
        (folder / sub).mkdir()
    for i, (w, h) in enumerate(SIZES):
        img = (rng.integers(0, 256, (h, w, 3)) * (0.1 + 0.9 * i / len(SIZES))).astype(np.uint8)
        assert cv2.imwrite(str(folder / 'images' / f'{i:02d}.png'), img)
        (folder / 'labels' / f'{i:02d}.txt').write_text('0 0.5 0.5 0.4 0.4\n')
    (folder / 'data.yaml').write_text(yaml.safe_dump({'train': str(folder / 'images'), 'val': str(folder / 'images'),
                                                      'nc': 3, 'names': ['a', 'b', 'c']}))
    cfg = folder / 'tiny-step2.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    torch.manual_seed(0)
    model = Model(cfg).eval()
    spread_router(model)
    save_checkpoint({'model': model.state_dict()}, folder / 'tiny.pt')
    return {'data': folder / 'data.yaml', 'cfg': cfg, 'weights': folder / 'tiny.pt'}


def common_flags(dataset: dict, tmp_path: Path, batch: int) -> list[str]:
    """The split flags of both scripts at --img-size 64 on the CPU."""
    return ['--cfg', str(dataset['cfg']), '--weight', str(dataset['weights']), '--data', str(dataset['data']),
            '--img-size', '64', '--device', 'cpu', '--batch-size', str(batch), '--project', str(tmp_path),
            '--name', f'b{batch}']


def test_scores_routes_and_detections_equal_batch_1s(dataset: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Router scores (get_dynamic_thres.py) at batch 1 and 12 (several shapes in one batch) agree to float rounding;
    test.py at a threshold in the middle of the widest gap between scores routes the same images easy and writes the
    same detections."""
    recorded = recording_scores(monkeypatch)
    for batch in (1, 12):
        get_dynamic_thres.run(get_dynamic_thres.parse_opt(common_flags(dataset, tmp_path / 'thres', batch)))
    scores = recorded
    for other in scores[1:]:
        np.testing.assert_allclose(other, scores[0], atol=1e-5)
    ordered = np.sort(scores[0])
    gap = int(np.argmax(np.diff(ordered[2:-2]))) + 2  # keep a few images on each side
    threshold = float(ordered[gap:gap + 2].mean())
    labels, routing = {}, {}
    for batch in (1, 12):
        caplog.clear()
        with caplog.at_level('INFO'):
            test_script.run_test(test_script.parse_opt([
                *common_flags(dataset, tmp_path / 'test', batch), '--dy-thres', str(threshold), '--save-txt',
                '--save-conf', '--conf-thres', '0.001']))
        routing[batch] = [r.message.split(' at dy_thres')[0] for r in caplog.records if r.message.startswith('Routing')]
        folder = tmp_path / 'test' / f'b{batch}' / 'labels'
        labels[batch] = {f.name: np.loadtxt(f, ndmin=2) for f in sorted(folder.glob('*.txt'))}
    assert routing[1] == routing[12] and f'{len(SIZES) - gap - 1}/{len(SIZES)} images easy' in routing[1][0]
    for batch in (12,):
        assert labels[batch].keys() == labels[1].keys() and labels[1]
        for name, rows in labels[1].items():
            np.testing.assert_allclose(labels[batch][name], rows, atol=1e-4)


def detect_routes(dataset: dict, tmp_path: Path, caplog, *flags: str) -> dict[str, str]:
    """detect.py on the 12 images with `flags`: each image's route, from its log line."""
    import detect
    caplog.clear()
    with caplog.at_level('INFO'):
        detect.run_detect(detect.parse_opt([
            '--cfg', str(dataset['cfg']), '--weight', str(dataset['weights']), '--num-classes', '3', '--source',
            str(dataset['data'].parent / 'images'), '--img-size', '64', '--device', 'cpu', '--project', str(tmp_path),
            '--nosave', *flags]))
    lines = [r.message for r in caplog.records if ' path, Done.' in r.message]
    return {Path(m.split(':')[0]).name: m.split(': ', 1)[1].split(' path')[0].split(', ')[-1] for m in lines}


def test_detect_routes_as_at_batch_1_and_gives_the_easy_share_asked(dataset: dict, tmp_path: Path,
                                                                    caplog) -> None:
    """detect.py routes every image as at batch 1 when it runs 12 at once (its batches padded images to the
    largest one's shape), and --easy-share 0.5 sends 6 of the 12 images get_dynamic_thres.py measured down the easy
    path (it letterboxed them unlike test.py, whose percentiles the share comes from, and got another share)."""
    alone = detect_routes(dataset, tmp_path, caplog, '--dy-thres', '0.5')
    together = detect_routes(dataset, tmp_path, caplog, '--dy-thres', '0.5', '--batch-size', '12')
    assert len(alone) == len(SIZES) and together == alone
    get_dynamic_thres.run(get_dynamic_thres.parse_opt(common_flags(dataset, tmp_path / 'thres', 1)))
    routes = detect_routes(dataset, tmp_path, caplog, '--easy-share', '0.5', '--batch-size', '12')
    assert sorted(routes.values()).count('easy') == len(SIZES) // 2, routes
