"""The original README's five commands chained end to end on the CPU, each run as the user types it; then the real Dy-YOLOv7
configs through the same training code.

    train_step1.py → train_step2.py → get_dynamic_thres.py → test.py → detect.py (images, then a video)

Each command is the original README's own line (COMMANDS; a test checks docs/getting_started.md still lists them) with these words
changed: `--device cpu`, `--epochs 1` for step 1 (step 2 keeps its `--epochs 2`), image size 64 (`--img`,
`--img-size`; detect.py keeps its default 640, as the README's line gives none), our 1/8-width
`cfg/dy-yolov7-tiny-step{1,2}.yaml`, `--data data/synthetic/data.yaml` (6 synthetic 64-px images: 2 train, 4
val, 3 classes) with `--num-classes 3`, and the threshold and source filled in. DYNAMICDET_PIPELINE_MODEL=
dy-yolov7 runs the same chain on the real configs (~75 s here, ~2 GB of checkpoints). Every command runs in one work
folder laid out like the user's (cfg/ and hyp/ linked to the repository's, runs/, weights/), so relative paths
such as `runs/train/dy-yolov7-step1/weights/last.pt` and `weights/dy-yolov7.pt` are the README's own; step 2's
last.pt is copied to `weights/dy-yolov7.pt`.

The commands run in this process, each script executed as `__main__` with sys.argv set to the command's words
(runpy), rather than as subprocesses: a new interpreter spends ~7 s here importing torch, torchvision,
matplotlib and tensorboard before the script's first line, so the six commands would spend ~45 s, this module's
whole budget, before doing anything. runpy runs the scripts' `if __name__ == '__main__':` lines too; what only a
new interpreter adds (the script's folder first on sys.path) is Python's own, and other tests launch scripts
that way (export.py, demo.py, train_step1.py under torch.distributed.run). Each command runs on one thread: two
threads on 2 cores shared with another busy process spin-wait (step 2 once took 154 s instead of 9 s).

The real configs (77.7 M parameters) go through train_step1.py's and train_step2.py's options and trainers for
one epoch each on 2 images, stopped before validation, checkpoints and plots, which do not depend on the config
and which the chain checks: step 1 trains the whole cascaded detector, step 2 loads its weights strictly and
trains only the router. That is where the configs matter (layer wiring, both heads' loss, the router's place,
every step-1 tensor finding its step-2 place), in ~12 s instead of the whole chain's ~75 s on them.
"""
from __future__ import annotations

import contextlib
import filecmp
import io
import logging
import math
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train_step1
import train_step2
from models.checkpoint import half_state_dict, save_checkpoint
from tests.helpers import recording_scores
from utils.data.synthetic import generate_dataset
from utils.train.step2 import Step2Trainer
from utils.train.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
MODEL = os.environ.get('DYNAMICDET_PIPELINE_MODEL', 'dy-yolov7-tiny')
COMMANDS = {  # the original README's lines, verbatim (docs/getting_started.md)
    'step1': "python train_step1.py --workers 8 --device 0 --batch-size 16 --epochs 300 --img 640 "
             "--cfg cfg/dy-yolov7-step1.yaml --weight '' --data data/coco.yaml --hyp hyp/hyp.scratch.p5.yaml "
             "--name dy-yolov7-step1",
    'step2': "python train_step2.py --workers 4 --device 0 --batch-size 1 --epochs 2 --img 640 --adam "
             "--cfg cfg/dy-yolov7-step2.yaml --weight runs/train/dy-yolov7-step1/weights/last.pt "
             "--data data/coco.yaml --hyp hyp/hyp.finetune.dynamic.adam.yaml --name dy-yolov7-step2",
    'thresholds': "python get_dynamic_thres.py --device 0 --batch-size 1 --img-size 640 "
                  "--cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --data data/coco.yaml --task val",
    'test': "python test.py --img-size 640 --batch-size 1 --conf 0.001 --iou 0.65 --device 0 "
            "--cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --data data/coco.yaml "
            "--dy-thres <DY_THRESHOLD>",
    'detect': "python detect.py --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --num-classes 80 "
              "--source <IMAGE/VIDEO> --device 0 --dy-thres <DY_THRESHOLD>",
}
DATA = 'data/synthetic/data.yaml'
N_TRAIN, N_VAL, NUM_CLASSES, IMG = 2, 4, 3, 64
STEP1_RUN, STEP2_RUN = Path('runs/train/dy-yolov7-step1'), Path('runs/train/dy-yolov7-step2')
WEIGHTS = 'weights/dy-yolov7.pt'
VIDEO_FRAMES = N_VAL  # one frame per val image
ROUTE = re.compile(r': (?:[^:]*, )?(easy|hard) path, Done\. ')


def _argv(command: str, model: str = MODEL, **flags: str) -> list[str]:
    """A README line as sys.argv ([script, *words]) on our CPU, data and model; `flags` (dashes as underscores)
    replace further flags' values."""
    words = shlex.split(command.replace('cfg/dy-yolov7-', f'cfg/{model}-'))[1:]
    ours = {'--device': 'cpu', '--img': str(IMG), '--img-size': str(IMG), '--data': DATA,
            '--num-classes': str(NUM_CLASSES), **{f'--{k.replace("_", "-")}': v for k, v in flags.items()}}
    for i, word in enumerate(words[:-1]):
        if word in ours:
            words[i + 1] = ours[word]
    missing = set(flags) - {w[2:].replace('-', '_') for w in words}
    assert not missing, f'{command}: no flag for {missing}'
    return words


@contextlib.contextmanager
def _as_typed(work: Path, argv: list[str]) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Inside: the working directory is `work`, sys.argv is argv, torch runs one thread, and stdout / stderr
    (print, logging, tqdm) go to the two buffers yielded; all restored after, logging's handlers too."""
    root = logging.getLogger()
    saved = os.getcwd(), sys.argv, root.handlers[:], root.level, torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.chdir(work)
    sys.argv = argv
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    except BaseException:
        sys.stderr.write(f'{shlex.join(argv)} failed; its output:\n{out.getvalue()}\n{err.getvalue()}\n')
        raise
    finally:
        os.chdir(saved[0])
        sys.argv, root.handlers[:] = saved[1], saved[2]
        root.setLevel(saved[3])
        torch.set_num_threads(saved[4])


def _run(work: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """`python argv…` in `work`, in this process: the script runs as __main__; asserts it exits with 0 (or
    returns) and gives back its args, stdout and stderr."""
    code = 0
    with _as_typed(work, argv) as (out, err):
        try:
            runpy.run_path(str(ROOT / argv[0]), run_name='__main__')
        except SystemExit as e:
            code = e.code or 0
    done = subprocess.CompletedProcess(['python', *argv], code, out.getvalue(), err.getvalue())
    assert code == 0, _explain(done, f'exit code {code}')
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


def _user_folder(folder: Path, n_train: int, n_val: int) -> Path:
    """`folder` laid out like the user's: cfg/ and hyp/ linked, a synthetic data set under data/synthetic."""
    for name in ('cfg', 'hyp'):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    generate_dataset(folder / 'data' / 'synthetic', n_train + n_val, img_size=IMG,
                     val_fraction=n_val / (n_train + n_val), seed=0, num_classes=NUM_CLASSES)
    return folder


@pytest.fixture(scope='module')
def work(tmp_path_factory: pytest.TempPathFactory):
    """The user's folder; checkpoints removed after."""
    folder = _user_folder(tmp_path_factory.mktemp('pipeline'), N_TRAIN, N_VAL)
    yield folder
    for checkpoint in folder.rglob('*.pt'):
        checkpoint.unlink()


@pytest.fixture(scope='module')
def step1(work: Path) -> subprocess.CompletedProcess:
    """README step 1 (`--epochs 1`)."""
    return _run(work, _argv(COMMANDS['step1'], epochs='1'))


@pytest.fixture(scope='module')
def step2(work: Path, step1: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """README step 2 on step 1's last.pt; its last.pt then becomes weights/dy-yolov7.pt."""
    done = _run(work, _argv(COMMANDS['step2']))
    (work / 'weights').mkdir(exist_ok=True)
    shutil.copyfile(work / STEP2_RUN / 'weights' / 'last.pt', work / WEIGHTS)
    return done


@pytest.fixture(scope='module')
def thresholds(work: Path, step2) -> tuple[list[str], np.ndarray, subprocess.CompletedProcess]:
    """get_dynamic_thres.py's 11 thresholds as printed (strings), the router scores it collected, and the run."""
    with pytest.MonkeyPatch.context() as patch:
        recorded = recording_scores(patch)
        done = _run(work, _argv(COMMANDS['thresholds']))
    out = done.stdout.splitlines()
    stars = [i for i, line in enumerate(out) if line.strip() == '*' * 51]
    assert len(stars) == 2 and stars[1] > stars[0] + 1, _explain(done, 'no block between two lines of 51 stars')
    assert len(recorded) == 1, _explain(done, f'router scores collected {len(recorded)} times')
    return out[stars[0] + 1].split(), recorded[0], done


@pytest.fixture(scope='module')
def middle(thresholds) -> str:
    """The 6th threshold (about half the images easy), as printed."""
    return thresholds[0][5]


@pytest.fixture(scope='module')
def detections(work: Path, step2, middle: str) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """detect.py on the val images folder, then on an mp4 of the val images: {'images'|'video': (run, dir)}."""
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
        done = _run(work, _argv(COMMANDS['detect'], source=source, dy_thres=middle))
        made = sorted(set((work / 'runs' / 'detect').glob('*')) - before)
        assert len(made) == 1, _explain(done, f'expected one new run folder under runs/detect, found {made}')
        runs[kind] = done, made[0]
    return runs


def test_the_commands_are_the_documented_ones() -> None:
    """The lines this module runs are the original README's, word for word, as docs/getting_started.md lists them."""
    documented = (ROOT / 'docs' / 'getting_started.md').read_text()
    assert [name for name, line in COMMANDS.items() if line not in documented] == []


def test_step1_writes_the_stripped_checkpoint_and_one_results_row_per_epoch(work: Path, step1) -> None:
    run = work / STEP1_RUN
    rows = _results_rows(run)
    assert [r[0] for r in rows] == ['0/0'], rows  # --epochs 1: epoch 0 of 0..0
    assert all(math.isfinite(float(v)) for v in rows[0][2:]), rows
    last = _load(run / 'weights' / 'last.pt')
    assert last['epoch'] == -1 and last['optimizer'] is None and last['ema'] is None  # stripped: model <- EMA
    assert last['model'] and not any('router' in k for k in last['model'])  # step 1 has no router
    assert all(_finite(v) for v in last['model'].values())


def _assert_router_optimizer(optimizer: dict, router: dict[str, torch.Size]) -> None:
    """An optimizer state_dict over the router's tensors alone (shapes `router`), stepped, with non-zero moments."""
    state = optimizer['state']
    assert sum(len(g['params']) for g in optimizer['param_groups']) == len(state) == len(router)
    assert sorted(tuple(s['exp_avg'].shape) for s in state.values()) == sorted(tuple(s) for s in router.values())
    assert all(float(s['step']) > 0 and _finite(s['exp_avg']) for s in state.values())
    assert any(s['exp_avg'].abs().max() > 0 for s in state.values())


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
    _assert_router_optimizer(_load(weights / 'epoch_000.pt')['optimizer'], {k: model[k].shape for k in router})
    rows = _results_rows(work / STEP2_RUN)
    assert [r[0] for r in rows] == ['0/1', '1/1'], rows
    assert all(math.isfinite(float(v)) for r in rows for v in r[2:]), rows


def test_get_dynamic_thres_prints_11_ordered_thresholds(thresholds) -> None:
    values, scores, done = thresholds
    assert len(values) == 11 and values[0] == '0' and values[-1] == '1', _explain(done, f'thresholds {values}')
    numbers = [float(v) for v in values]
    assert all(a <= b for a, b in zip(numbers, numbers[1:])), numbers
    assert all(0 < v < 1 for v in numbers[1:-1]), numbers  # percentiles of sigmoid scores
    assert len(scores) == N_VAL and numbers[1:-1] == [np.percentile(scores, q) for q in range(10, 100, 10)]
    shares = [line for line in done.stdout.splitlines() if line.startswith('First: ')]
    assert len(shares) == 11 and shares[5].startswith('First: 50%\tSecond: 50%') and shares[5].endswith(values[5])


def test_test_py_at_the_middle_threshold_prints_the_all_row_and_routes_half(work: Path, thresholds,
                                                                            middle: str) -> None:
    done = _run(work, _argv(COMMANDS['test'], dy_thres=middle))
    number = r'\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)'
    rows = [m for line in _lines(done) if (m := re.fullmatch(r'\s+all' + number * 6 + r'\s*', line))]
    assert len(rows) == 1, _explain(done, "expected one 'all' row")
    images, labels, *metrics = (float(x) for x in rows[0].groups())
    expected_labels = sum(len(p.read_text().splitlines())
                          for p in (work / 'data' / 'synthetic' / 'labels' / 'val').glob('*.txt'))
    assert images == N_VAL and labels == expected_labels, rows[0].group(0)
    assert all(0 <= m <= 1 for m in metrics), rows[0].group(0)
    # the images whose score (as get_dynamic_thres collected it) is at or above the threshold take the easy path;
    # the threshold is these very scores' median, so that is half of them unless the two middle scores tie
    scores = thresholds[1]
    easy = int((scores >= float(middle)).sum())
    routing = [line for line in _lines(done) if line.startswith('Routing: ')]
    assert len(routing) == 1 and routing[0].startswith(f'Routing: {easy}/{N_VAL} images easy'), \
        _explain(done, f'routing line {routing}, scores {scores}')
    middle_two = np.sort(scores)[N_VAL // 2 - 1:N_VAL // 2 + 1]
    assert easy == N_VAL // 2 or middle_two[0] >= np.float32(float(middle)), (scores, middle)


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


def _first_epoch_only(trainer: type[Trainer], kept: dict) -> type[Trainer]:
    """`trainer` stopping after its first epoch's training steps, before validation, checkpoints and plots;
    kept['trainer'] and kept['loss'] receive the trainer and the epoch's mean loss items."""
    class FirstEpochOnly(trainer):
        def end_epoch(self, epoch: int, mloss: torch.Tensor, line: str) -> bool:
            kept.update(trainer=self, loss=mloss)
            return True  # stop: the trainer's own early stopping

        def finish(self, epochs_run: int, t0: float) -> None:
            pass
    return FirstEpochOnly


def _train_real(work: Path, command: str, trainer: type[Trainer], **flags: str) -> Trainer:
    """A README training line on the real config in `work`, through its script's options and `trainer` for one
    epoch; returns the trainer after it, its loss items checked finite."""
    script = train_step1 if command == 'step1' else train_step2
    argv, kept = _argv(COMMANDS[command], model='dy-yolov7', **flags), {}
    with _as_typed(work, argv):
        train(script.parse_opt(argv[1:]), _first_epoch_only(trainer, kept))
    assert kept and all(math.isfinite(v) for v in kept['loss'].tolist()), kept
    return kept['trainer']


@pytest.fixture(scope='module')
def real_step1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    """Step 1 of the real config for one epoch (one batch of 2 images) in a user's folder of its own, its weights
    left where step 2's README line reads them, as a finished run leaves them (`model`: the EMA in fp16)."""
    work = _user_folder(tmp_path_factory.mktemp('real'), 2, 1)
    trainer = _train_real(work, 'step1', Trainer, epochs='1')
    weights = work / STEP1_RUN / 'weights' / 'last.pt'
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({'model': half_state_dict(trainer.ema.ema), 'epoch': -1}, weights)
    yield trainer, work
    for checkpoint in work.rglob('*.pt'):
        checkpoint.unlink()


def test_real_step1_config_trains_the_whole_cascaded_detector(real_step1) -> None:
    trainer, _ = real_step1
    model = trainer.model
    assert trainer.ema.updates == 1  # one optimizer step (one batch, accumulation reached at once)
    assert not model.dynamic and not any('router' in k for k in model.state_dict())
    momentum = [s['momentum_buffer'] for s in trainer.optimizer.state.values()]
    assert len(momentum) == len(list(model.parameters()))  # every tensor got a gradient: both backbones and heads
    assert all(_finite(m) for m in momentum) and any(m.abs().max() > 0 for m in momentum)


def test_real_step2_config_loads_step1_and_trains_only_the_router(real_step1) -> None:
    _, work = real_step1
    trainer = _train_real(work, 'step2', Step2Trainer)  # stopped after epoch 0 of 2: two router steps
    step1 = _load(work / STEP1_RUN / 'weights' / 'last.pt')['model']
    state = trainer.model.state_dict()
    router = {k: v.shape for k, v in state.items() if 'router' in k}
    assert router and sorted(k for k in state if k not in router) == sorted(step1)
    for k, v in step1.items():  # every detector tensor is step 1's, BN statistics included (fp16 → float exactly)
        assert torch.equal(state[k], v.to(state[k].dtype)), k
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in trainer.model.router.named_parameters(prefix='router')}
    _assert_router_optimizer(trainer.optimizer.state_dict(), {n: state[n].shape for n in trainable})
