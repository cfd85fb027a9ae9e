"""The README's five commands chained end to end on the CPU, each a subprocess typed the way a user types it.

    train_step1.py → train_step2.py → get_dynamic_thres.py → test.py → detect.py (images, then a video)

Flags are the original project's, verbatim, except: `--device cpu`, image size 64 (`--img` / `--img-size`;
detect.py keeps its default 640, as the original command gives none), `--epochs 1` for step 1 (step 2 keeps its
`--epochs 2`), `--data data/synthetic/data.yaml` (24 synthetic 64-px images: 16 train, 8 val, 3 classes) and
`--num-classes 3`. The configs are the real `cfg/dy-yolov7-step{1,2}.yaml`; set DYNAMICDET_PIPELINE_MODEL=
dy-yolov7-tiny to run the same chain with our 1/8-width `cfg/dy-yolov7-tiny-step{1,2}.yaml`.

Every command runs in one work folder laid out like the user's (cfg/ and hyp/ linked to the repository's,
runs/, weights/), so relative paths such as `runs/train/dy-yolov7-step1/weights/last.pt` and
`weights/dy-yolov7.pt` are the README's own; step 2's last.pt is copied to `weights/dy-yolov7.pt`.

The subprocesses get OMP_NUM_THREADS=1 unless it is already set: with two OpenMP threads on 2 cores shared with
another busy process, step 2 took 154 s instead of 9 s (threads spin-waiting for a descheduled partner).
The module took 69-80 s on 2 cores (another process using ~1.2 of them) with the real configs; the checkpoints
(~2 GB) are deleted at the end.
"""
from __future__ import annotations

import filecmp
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
MODEL = os.environ.get('DYNAMICDET_PIPELINE_MODEL', 'dy-yolov7')
CFG1, CFG2 = f'cfg/{MODEL}-step1.yaml', f'cfg/{MODEL}-step2.yaml'
DATA = 'data/synthetic/data.yaml'
N_TRAIN, N_VAL, NUM_CLASSES, IMG = 16, 8, 3, 64
STEP1_RUN, STEP2_RUN = Path('runs/train/dy-yolov7-step1'), Path('runs/train/dy-yolov7-step2')
WEIGHTS = 'weights/dy-yolov7.pt'
VIDEO_FRAMES = 5
ROUTE = re.compile(r': (?:[^:]*, )?(easy|hard) path, Done\. ')


def _run(cwd: Path, script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python script args` in cwd; asserts exit code 0, showing the command and its output tails otherwise."""
    env = {**os.environ}
    env.setdefault('OMP_NUM_THREADS', '1')
    command = [sys.executable, str(ROOT / script), *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, _explain(done, f'exit code {done.returncode}')
    return done


def _explain(done: subprocess.CompletedProcess, problem: str) -> str:
    """The failed command, what went wrong and the last lines it wrote (tqdm's carriage returns as newlines)."""
    tail = lambda text: '\n'.join(text.replace('\r', '\n').splitlines()[-40:])  # noqa: E731
    return (f'{shlex.join(str(a) for a in done.args)}: {problem}\n--- stdout ---\n{tail(done.stdout)}\n'
            f'--- stderr ---\n{tail(done.stderr)}')


def _lines(done: subprocess.CompletedProcess) -> list[str]:
    """stdout then stderr, one entry per line or tqdm refresh."""
    return (done.stdout + '\n' + done.stderr).replace('\r', '\n').splitlines()


def _results_rows(run: Path) -> list[list[str]]:
    return [line.split() for line in (run / 'results.txt').read_text().splitlines() if line.strip()]


def _load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN/inf (numpy: torch's fp16 isfinite on 2 shared cores took 6 s for the step-1 weights, numpy 0.1 s)."""
    return bool(np.isfinite(tensor.numpy()).all())


@pytest.fixture(scope='module')
def work(tmp_path_factory: pytest.TempPathFactory):
    """The user's folder: cfg/ and hyp/ linked, the synthetic data set under data/; checkpoints removed after."""
    folder = tmp_path_factory.mktemp('pipeline')
    for name in ('cfg', 'hyp'):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    generate_dataset(folder / 'data' / 'synthetic', N_TRAIN + N_VAL, img_size=IMG,
                     val_fraction=N_VAL / (N_TRAIN + N_VAL), seed=0, num_classes=NUM_CLASSES)
    yield folder
    for checkpoint in folder.rglob('*.pt'):
        checkpoint.unlink()


@pytest.fixture(scope='module')
def step1(work: Path) -> subprocess.CompletedProcess:
    return _run(work, 'train_step1.py', '--workers', '8', '--device', 'cpu', '--batch-size', '16', '--epochs', '1',
                '--img', str(IMG), '--cfg', CFG1, '--weight', '', '--data', DATA, '--hyp', 'hyp/hyp.scratch.p5.yaml',
                '--name', 'dy-yolov7-step1')


@pytest.fixture(scope='module')
def step2(work: Path, step1: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    done = _run(work, 'train_step2.py', '--workers', '4', '--device', 'cpu', '--batch-size', '1', '--epochs', '2',
                '--img', str(IMG), '--adam', '--cfg', CFG2, '--weight', str(STEP1_RUN / 'weights' / 'last.pt'),
                '--data', DATA, '--hyp', 'hyp/hyp.finetune.dynamic.adam.yaml', '--name', 'dy-yolov7-step2')
    (work / 'weights').mkdir(exist_ok=True)
    shutil.copyfile(work / STEP2_RUN / 'weights' / 'last.pt', work / WEIGHTS)
    return done


@pytest.fixture(scope='module')
def thresholds(work: Path, step2: subprocess.CompletedProcess) -> tuple[list[str], subprocess.CompletedProcess]:
    """get_dynamic_thres.py's 11 thresholds as printed (strings), and the run."""
    done = _run(work, 'get_dynamic_thres.py', '--device', 'cpu', '--batch-size', '1', '--img-size', str(IMG),
                '--cfg', CFG2, '--weight', WEIGHTS, '--data', DATA, '--task', 'val')
    out = done.stdout.splitlines()
    stars = [i for i, line in enumerate(out) if line.strip() == '*' * 51]
    assert len(stars) == 2 and stars[1] > stars[0] + 1, _explain(done, 'no block between two lines of 51 stars')
    return out[stars[0] + 1].split(), done


@pytest.fixture(scope='module')
def middle(thresholds) -> str:
    """The 6th threshold (about half the images easy), as printed."""
    return thresholds[0][5]


@pytest.fixture(scope='module')
def detections(work: Path, step2, middle: str) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """detect.py on the val images folder, then on a 5-frame mp4 made of val images: {'images'|'video': (run, dir)}."""
    val_images = sorted((work / 'data' / 'synthetic' / 'images' / 'val').glob('*.jpg'))
    clip = work / 'inference' / 'clip.mp4'
    clip.parent.mkdir()
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*'mp4v'), 5, (IMG, IMG))
    for path in val_images[:VIDEO_FRAMES]:
        writer.write(cv2.resize(cv2.imread(str(path)), (IMG, IMG)))
    writer.release()
    runs = {}
    for kind, source in (('images', 'data/synthetic/images/val'), ('video', 'inference/clip.mp4')):
        before = set((work / 'runs' / 'detect').glob('*'))
        done = _run(work, 'detect.py', '--cfg', CFG2, '--weight', WEIGHTS, '--num-classes', str(NUM_CLASSES),
                    '--source', source, '--device', 'cpu', '--dy-thres', middle)
        made = sorted(set((work / 'runs' / 'detect').glob('*')) - before)
        assert len(made) == 1, _explain(done, f'expected one new run folder under runs/detect, found {made}')
        runs[kind] = done, made[0]
    return runs


def test_step1_writes_the_stripped_checkpoint_and_one_results_row_per_epoch(work: Path, step1) -> None:
    run = work / STEP1_RUN
    rows = _results_rows(run)
    assert [r[0] for r in rows] == ['0/0'], rows  # --epochs 1: epoch 0 of 0..0
    assert all(math.isfinite(float(v)) for v in rows[0][2:]), rows
    last = _load(run / 'weights' / 'last.pt')
    assert last['epoch'] == -1 and last['optimizer'] is None and last['ema'] is None  # stripped: model <- EMA
    assert last['model'] and not any('router' in k for k in last['model'])  # step 1 has no router
    assert all(_finite(v) for v in last['model'].values())


def test_step2_trains_only_the_router_on_the_frozen_step1_detector(work: Path, step2) -> None:
    before = _load(work / STEP1_RUN / 'weights' / 'last.pt')['model']  # what step 2 read: the stripped 'model'
    weights = work / STEP2_RUN / 'weights'
    after = _load(weights / 'last.pt')
    assert after['epoch'] == -1 and after['optimizer'] is None
    model = after['model']
    router = [k for k in model if 'router' in k]
    assert router and sorted(k for k in model if 'router' not in k) == sorted(before)
    for k, v in before.items():  # every detector tensor, BN running statistics included, bit for bit
        assert model[k].dtype == v.dtype and torch.equal(model[k], v), k
    assert all(_finite(model[k]) for k in router)
    assert filecmp.cmp(work / WEIGHTS, weights / 'last.pt', shallow=False)  # weights/dy-yolov7.pt is step 2's
    # the router was trained: epoch 0's full checkpoint holds an optimizer over the router's tensors alone,
    # stepped, with non-zero moments (the fp16 weights barely move: lr0 1e-5, still warming up from 0)
    optimizer = _load(weights / 'epoch_000.pt')['optimizer']
    state = optimizer['state']
    assert sum(len(g['params']) for g in optimizer['param_groups']) == len(state) == len(router)
    assert sorted(tuple(s['exp_avg'].shape) for s in state.values()) == sorted(tuple(model[k].shape) for k in router)
    assert all(float(s['step']) > 0 and _finite(s['exp_avg']) for s in state.values())
    assert any(s['exp_avg'].abs().max() > 0 for s in state.values())
    rows = _results_rows(work / STEP2_RUN)
    assert [r[0] for r in rows] == ['0/1', '1/1'], rows
    assert all(math.isfinite(float(v)) for r in rows for v in r[2:]), rows


def test_get_dynamic_thres_prints_11_ordered_thresholds(thresholds) -> None:
    values, done = thresholds
    assert len(values) == 11 and values[0] == '0' and values[-1] == '1', _explain(done, f'thresholds {values}')
    numbers = [float(v) for v in values]
    assert all(a <= b for a, b in zip(numbers, numbers[1:])), numbers
    assert all(0 < v < 1 for v in numbers[1:-1]), numbers  # percentiles of sigmoid scores
    shares = [line for line in done.stdout.splitlines() if line.startswith('First: ')]
    assert len(shares) == 11 and shares[5].startswith('First: 50%\tSecond: 50%') and shares[5].endswith(values[5])


def test_test_py_at_the_middle_threshold_prints_the_all_row_and_routes_half(work: Path, middle: str) -> None:
    done = _run(work, 'test.py', '--img-size', str(IMG), '--batch-size', '1', '--conf', '0.001', '--iou', '0.65',
                '--device', 'cpu', '--cfg', CFG2, '--weight', WEIGHTS, '--data', DATA, '--dy-thres', middle)
    number = r'\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)'
    rows = [m for line in _lines(done) if (m := re.fullmatch(r'\s+all' + number * 6 + r'\s*', line))]
    assert len(rows) == 1, _explain(done, "expected one 'all' row")
    images, labels, *metrics = (float(x) for x in rows[0].groups())
    expected_labels = sum(len(p.read_text().splitlines())
                          for p in (work / 'data' / 'synthetic' / 'labels' / 'val').glob('*.txt'))
    assert images == N_VAL and labels == expected_labels, rows[0].group(0)
    assert all(0 <= m <= 1 for m in metrics), rows[0].group(0)
    # the 6th threshold is the median of these very scores: half of the val images score at or above it
    routing = [line for line in _lines(done) if line.startswith('Routing: ')]
    assert len(routing) == 1 and routing[0].startswith(f'Routing: {N_VAL // 2}/{N_VAL} images easy'), \
        _explain(done, f'routing line {routing}')


def test_detect_on_images_writes_one_drawn_image_each_and_logs_the_route(work: Path, detections) -> None:
    done, run = detections['images']
    assert run == work / 'runs' / 'detect' / 'exp'
    sources = sorted(p.name for p in (work / 'data' / 'synthetic' / 'images' / 'val').glob('*.jpg'))
    assert sorted(p.name for p in run.iterdir()) == sources
    for name in sources:
        drawn, source = cv2.imread(str(run / name)), cv2.imread(str(work / 'data/synthetic/images/val' / name))
        assert drawn is not None and drawn.shape == source.shape, name
    routes = {m.group(0).split(':')[0].split('/')[-1]: m.group(1) for line in _lines(done)
              if (m := re.match(r'\S+\.jpg' + ROUTE.pattern, line))}
    assert sorted(routes) == sources, _explain(done, f'route per image: {routes}')


def test_detect_on_a_video_writes_an_mp4_and_logs_the_route_of_every_frame(work: Path, detections) -> None:
    done, run = detections['video']
    assert run == work / 'runs' / 'detect' / 'exp2'  # the second run of detect.py in this folder
    assert sorted(p.name for p in run.iterdir()) == ['clip.mp4']
    capture = cv2.VideoCapture(str(run / 'clip.mp4'))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    assert len(frames) == VIDEO_FRAMES and all(f.shape == (IMG, IMG, 3) for f in frames)
    routes = [m.group(1) for line in _lines(done)
              if line.startswith('video 1/1 (') and (m := ROUTE.search(line))]
    assert len(routes) == VIDEO_FRAMES, _explain(done, f'routes {routes}')
    assert [line.split(')')[0] for line in _lines(done) if line.startswith('video 1/1 (')] == \
        [f'video 1/1 ({i}/{VIDEO_FRAMES}' for i in range(1, VIDEO_FRAMES + 1)]
