"""Holding a latency budget (utils/detection/latency.py): the controller on a simulated stream (deterministic times,
so the figures do not depend on this machine), and --target-ms through detect.py and test.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import detect
import get_dynamic_thres
import test as test_script
from tests import test_predictor
from utils.detection.latency import LatencyController, PathTimes

routed = test_predictor.routed  # the tiny routed model and its 6 images
PARTS = {'part1': 0.008, 'easy': 0.001, 'hard': 0.010, 'easy_path': 0.009, 'hard_path': 0.018}
TIMES = PathTimes(PARTS, PARTS)


def simulate(target_ms: float, frames: int, load_from: int = 10 ** 9, load: float = 1.3) -> LatencyController:
    """A stream of `frames` frames whose router scores are uniform in 0..1 and whose time is the measured time of the
    path each takes, times `load` from frame `load_from` on (another process sharing the cores)."""
    rng = np.random.default_rng(0)
    controller = LatencyController(target_ms / 1e3, TIMES, lambda share: 1 - share)  # scores uniform in 0..1
    for i in range(frames):
        score = float(rng.random())
        route = 'easy' if score >= controller.threshold else 'hard'
        factor = load if i >= load_from else 1.0
        controller.update(factor * TIMES.path(route) * (1 + 0.05 * rng.standard_normal()), route, score)
    return controller


def window_means(controller: LatencyController, start: int, size: int = 100) -> list[float]:
    """Mean ms per frame over consecutive windows of `size` frames from `start`."""
    ms = 1e3 * np.asarray([row[1] for row in controller.rows])
    return [float(ms[i:i + size].mean()) for i in range(start, len(ms) - size + 1, size)]


@pytest.mark.parametrize('share', [0.25, 0.5, 0.75])
def test_the_controller_holds_the_target_and_recovers_from_a_load_step(share: float) -> None:
    """Targets 25/50/75 % of the way from the easy path's time to the hard path's: every 100-frame window after the
    first 30 frames within 10 % of the target; with 1.3x slower frames from frame 300, back within 10 % (mean of 20
    frames) within 50 frames, holding it with a larger easy share."""
    easy, hard = 1e3 * TIMES.path('easy'), 1e3 * TIMES.path('hard')
    target = easy + share * (hard - easy)
    steady = simulate(target, 530)
    assert all(abs(m / target - 1) < 0.1 for m in window_means(steady, 30)), window_means(steady, 30)
    loaded = simulate(target, 600, load_from=300)
    ms = 1e3 * np.asarray([row[1] for row in loaded.rows])
    back = next(i for i in range(300, 580) if abs(ms[i:i + 20].mean() / target - 1) < 0.1)
    assert back - 300 <= 50, back
    assert loaded.share > steady.share


def test_targets_outside_the_paths_say_so_once(caplog) -> None:
    """Below the easy path's time: every frame easy and one warning; above the hard path's: every frame hard."""
    with caplog.at_level('INFO'):
        fast = simulate(5.0, 100)
    assert fast.threshold == 0.0 and [r.message for r in caplog.records if 'below the easy path' in r.message] == [
        "WARNING: --target-ms 5: below the easy path's 10.0 ms here: every frame takes the easy path, and the target "
        'is not met']
    assert simulate(40.0, 100).threshold > 1  # all hard


def test_target_ms_through_detect_and_test(routed: dict, tmp_path: Path, caplog) -> None:
    """get_dynamic_thres.py --time-paths logs each path's time here; detect.py --target-ms times the paths, routes,
    and writes budget.csv / budget.png with a summary line; test.py --target-ms says the share it expects here; both
    need the percentiles get_dynamic_thres.py saves."""
    flags = ['--cfg', str(routed['cfg']), '--weight', str(routed['weights']), '--img-size', '64', '--device', 'cpu']
    (tmp_path / 'data.yaml').write_text(f'train: {routed["images"]}\nval: {routed["images"]}\nnc: 3\nnames: [a, b, c]\n')
    with caplog.at_level('INFO'):
        get_dynamic_thres.run(get_dynamic_thres.parse_opt([*flags, '--data', str(tmp_path / 'data.yaml'),
                                                           '--project', str(tmp_path), '--time-paths']))
        run = detect.run_detect(detect.parse_opt([*flags, '--num-classes', '3', '--source', str(routed['images']),
                                                  '--project', str(tmp_path), '--nosave', '--target-ms', '1000']))
        test_script.run_test(test_script.parse_opt([*flags, '--data', str(tmp_path / 'data.yaml'), '--project',
                                                    str(tmp_path), '--target-ms', '1000']))
    rows = (run / 'budget.csv').read_text().splitlines()
    assert rows[0] == 'frame,ms,window_mean_ms,easy_share,threshold' and len(rows) == 1 + len(test_predictor.SIZES)
    assert (run / 'budget.png').is_file()
    messages = [r.message for r in caplog.records]
    assert any(m.startswith('Path times here at 96x96, batch 1,') and 'easy path' in m for m in messages)
    assert any(m.startswith('Latency budget: target 1000 ms: achieved mean') for m in messages)
    assert sum(m.startswith('--target-ms 1000: ') and '% easy expected here' in m for m in messages) == 2
