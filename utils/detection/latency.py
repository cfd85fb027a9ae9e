"""Hold a latency budget (extension: the reference routes by a threshold only): each path's time measured where the
model runs, the easy share whose expected per-frame time fits a target, and a controller that keeps moving the
threshold on a stream so that the achieved mean stays at the target when the machine's load changes.

The time held is what detect.py logs on each image's line: inference + NMS per frame (letterboxing runs ahead in
another thread). The controller moves only the threshold: it does not change thread counts (torch's thread pool is
process-wide and cannot be resized safely mid-stream; see docs/deployment.md for what to do instead).
"""
from __future__ import annotations

import csv
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.torch_utils import time_sync

LOGGER = logging.getLogger(__name__)
PARTS = ('part1', 'easy', 'hard')  # backbone 1 + router; head 1; backbone 2 + head 2
ALL_HARD_THRESHOLD = 2.0  # above any sigmoid score (utils.evaluation.router_budget's, which imports this module)
NMS_S = 0.001  # NMS per frame at detect.py's thresholds, a few hundred boxes: ~1 ms on a CPU, added to each path


@dataclass(frozen=True)
class PathTimes:
    """Seconds per frame at batch 1 (medians and 95th percentiles over the timed repetitions) of each part (part1,
    easy: head 1, hard: backbone 2 + head 2) and of each whole routed forward (easy_path: every image easy,
    hard_path: every image hard; what a frame costs, routing and decoding included)."""
    median: dict[str, float]
    p95: dict[str, float]

    def path(self, route: str) -> float:
        """Expected seconds per frame on one path: its whole forward, then NMS."""
        return self.median[f'{route}_path'] + NMS_S

    def expected(self, easy_share: float) -> float:
        """Expected mean seconds per frame when `easy_share` of the frames take the easy path."""
        return easy_share * self.path('easy') + (1 - easy_share) * self.path('hard')

    def share_for(self, target_s: float) -> float:
        """The easy share whose expected mean is target_s, clipped to 0..1."""
        easy, hard = self.path('easy'), self.path('hard')
        return float(np.clip((hard - target_s) / max(hard - easy, 1e-9), 0.0, 1.0))


def _routed(model, x: torch.Tensor, threshold: float) -> None:
    saved = model.dy_thres
    model.dy_thres = threshold
    try:
        model(x)
    finally:
        model.dy_thres = saved


def measure_paths(model, shape: tuple[int, int], reps: int = 10, warmup: int = 2) -> PathTimes:
    """Time part 1 (backbone 1 + router), head 1, backbone 2 + head 2, and the whole routed forward with every image
    easy and with every image hard, on the model's own engine, device and thread count, at batch 1 and `shape`
    (h, w), after `warmup` passes: medians and 95th percentiles."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype if device.type == 'cuda' else torch.float32
    x = torch.zeros(1, 3, *shape, device=device, dtype=dtype)
    steps = {'part1': lambda: model._backbone(x), 'easy_path': lambda: _routed(model, x, 0.0),
             'hard_path': lambda: _routed(model, x, ALL_HARD_THRESHOLD)}
    samples: dict[str, list[float]] = {k: [] for k in (*PARTS, 'easy_path', 'hard_path')}
    with torch.inference_mode():
        b1, _ = model._backbone(x)
        steps.update(easy=lambda: model._easy(b1), hard=lambda: model._hard(x, b1))
        for rep in range(warmup + reps):
            for name, step in steps.items():
                t0 = time_sync(device)
                step()
                if rep >= warmup:
                    samples[name].append(time_sync(device) - t0)
    return PathTimes({k: statistics.median(v) for k, v in samples.items()},
                     {k: float(np.percentile(v, 95)) for k, v in samples.items()})


@dataclass
class LatencyController:
    """Moves the threshold after each frame so that the mean per-frame time stays at target_s.

    Each frame's time against the measured time of the path it took gives the machine's current load factor
    (an exponential average, `smoothing` per frame); the easy share is the one whose expected time at that load is
    the target, plus a slow correction from the mean of the last `window` frames against the target. The share
    becomes a threshold through the stream's own recent router scores once `window` are known (before: the saved
    percentiles). All easy when even that misses the target, all hard when the hard path fits; each said once."""
    target_s: float
    times: PathTimes
    threshold_of: Callable[[float], float]  # the saved percentiles' threshold for an easy share
    window: int = 50
    smoothing: float = 0.1
    correction: float = 0.02  # share moved per frame per path gap of the window mean's error
    load: float = field(init=False, default=1.0)
    bias: float = field(init=False, default=0.0)
    share: float = field(init=False)
    threshold: float = field(init=False)
    recent: deque = field(init=False)
    scores: deque = field(init=False)
    rows: list = field(init=False, default_factory=list)
    said: set = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.recent, self.scores = deque(maxlen=self.window), deque(maxlen=self.window)
        self.share = self.times.share_for(self.target_s)
        self._say_bounds()
        self.threshold = self._threshold()

    def _say_bounds(self) -> None:
        easy, hard = self.load * self.times.path('easy'), self.load * self.times.path('hard')
        # said when it shows: all easy, a full window, and its mean more than 10 % over (not on a transient)
        missed = not self.rows or (len(self.recent) >= self.window and np.mean(self.recent) > 1.1 * self.target_s)
        if self.target_s < easy and self.share >= 1 and missed and 'easy' not in self.said:
            self.said.add('easy')
            LOGGER.warning(f'WARNING: --target-ms {1e3 * self.target_s:g}: below the easy path\'s {1e3 * easy:.1f} ms '
                           'here: every frame takes the easy path, and the target is not met')
        elif self.target_s >= hard and self.share <= 0 and 'hard' not in self.said:
            self.said.add('hard')
            LOGGER.info(f'--target-ms {1e3 * self.target_s:g}: the hard path ({1e3 * hard:.1f} ms) fits: every '
                        'frame takes it')

    def _threshold(self) -> float:
        if self.share >= 1:
            return 0.0
        if self.share <= 0:
            return ALL_HARD_THRESHOLD
        if len(self.scores) >= self.window:  # the stream's own scores: the share holds on what it is showing
            return float(np.quantile(np.asarray(self.scores), 1 - self.share))
        return self.threshold_of(self.share)

    def update(self, frame_s: float, route: str, score: float | None) -> float:
        """Record one frame's time (inference + NMS), its route and router score; returns the next threshold."""
        self.recent.append(frame_s)
        if score is not None:
            self.scores.append(score)
        if route in ('easy', 'hard'):
            self.load += self.smoothing * (frame_s / self.times.path(route) - self.load)
        easy, hard = self.load * self.times.path('easy'), self.load * self.times.path('hard')
        gap = max(hard - easy, 1e-9)
        if len(self.recent) >= self.window // 2:  # the slow correction, once the window mean says something
            self.bias = float(np.clip(self.bias + self.correction * (np.mean(self.recent) - self.target_s) / gap,
                                      -0.5, 0.5))
        self.share = float(np.clip((hard - self.target_s) / gap + self.bias, 0.0, 1.0))
        self._say_bounds()
        self.threshold = self._threshold()
        self.rows.append((len(self.rows), frame_s, float(np.mean(self.recent)), self.share, self.threshold))
        return self.threshold

    def summary(self) -> str:
        """Target, achieved mean / p50 / p95 over all frames, and the easy share at the end."""
        frames = np.asarray([r[1] for r in self.rows]) * 1e3
        if not len(frames):
            return f'target {1e3 * self.target_s:g} ms: no frame'
        return (f'target {1e3 * self.target_s:g} ms: achieved mean {frames.mean():.1f}, p50 {np.median(frames):.1f}, '
                f'p95 {np.percentile(frames, 95):.1f} ms over {len(frames)} frames; easy share now '
                f'{100 * self.share:.0f} %, threshold {self.threshold:.4g}')

    def save(self, folder: Path) -> Path:
        """budget.csv (frame, ms, window mean ms, easy share, threshold) and budget.png in folder; the CSV's path."""
        path = folder / 'budget.csv'
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(('frame', 'ms', 'window_mean_ms', 'easy_share', 'threshold'))
            writer.writerows((i, f'{1e3 * s:.3f}', f'{1e3 * m:.3f}', f'{sh:.4f}', f'{t:.6g}')
                             for i, s, m, sh, t in self.rows)
        _plot(self, folder / 'budget.png')
        return path


def _plot(controller: LatencyController, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = np.asarray(controller.rows, dtype=float)
    if not len(rows):
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.plot(rows[:, 0], 1e3 * rows[:, 1], lw=0.5, alpha=0.5, label='frame')
    top.plot(rows[:, 0], 1e3 * rows[:, 2], label=f'mean of the last {controller.window}')
    top.axhline(1e3 * controller.target_s, color='k', ls='--', label='target')
    top.set_ylabel('ms per frame')
    top.legend(fontsize=8)
    bottom.plot(rows[:, 0], rows[:, 3], label='easy share')
    bottom.plot(rows[:, 0], np.minimum(rows[:, 4], 1.0), label='threshold')
    bottom.set_xlabel('frame')
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class LatencyBudgetError(UserError, ValueError):
    """A latency target that cannot be meant (not a positive number of milliseconds)."""


def controller_for(model, shape: tuple[int, int], target_ms: float, threshold_of: Callable[[float], float]
                   ) -> LatencyController:
    """Measure the paths where the model runs and start a controller for target_ms (threshold_of: the saved
    percentiles' threshold for an easy share)."""
    if not target_ms > 0:
        raise LatencyBudgetError(f'--target-ms {target_ms}: give a positive time per frame in milliseconds')
    t0 = time.perf_counter()
    times = measure_paths(model, shape)
    m, p = ({k: f'{1e3 * v:.1f}' for k, v in d.items()} for d in (times.median, times.p95))
    LOGGER.info(f'Paths measured here in {time.perf_counter() - t0:.1f} s at {shape[0]}x{shape[1]}, batch 1 '
                f'(median / p95 ms): easy path {m["easy_path"]} / {p["easy_path"]}, hard path {m["hard_path"]} / '
                f'{p["hard_path"]}; part 1 {m["part1"]} / {p["part1"]}, head 1 {m["easy"]} / {p["easy"]}, '
                f'backbone 2 + head 2 {m["hard"]} / {p["hard"]}')
    return LatencyController(target_ms / 1e3, times, threshold_of)
