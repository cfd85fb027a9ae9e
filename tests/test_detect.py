"""detect.py on images (a folder with a corrupt file, a glob) and on a short mp4 written here; one-line errors."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import detect
from models.checkpoint import half_state_dict, save_checkpoint
from tests.helpers import COCO128, cli_error_line, lively_tiny_model, requires_coco128, tiny_config
from utils.detection.detector import letterbox_batch


@pytest.fixture(scope='module')
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp('tiny_detect')
    (folder / 'tiny.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=True, nc=80)))
    save_checkpoint({'model': half_state_dict(lively_tiny_model())}, folder / 'tiny.pt')
    return ['--cfg', str(folder / 'tiny.yaml'), '--weight', str(folder / 'tiny.pt'), '--device', 'cpu',
            '--img-size', '64', '--conf-thres', '0.5']


def _write_clip(path: Path, frames: int = 5) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
    for i in range(frames):
        frame = np.full((64, 96, 3), 40 * (i % 5), np.uint8)
        cv2.rectangle(frame, (10 + 5 * i, 10), (50 + 5 * i, 50), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def _inference_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if 'Inference' in r.getMessage()]


def _copy_coco128_images(folder: Path, n: int) -> Path:
    folder.mkdir()
    for f in sorted((COCO128 / 'images' / 'train2017').glob('*.jpg'))[:n]:
        shutil.copy(f, folder / f.name)
    return folder


@requires_coco128
def test_detect_folder_with_a_corrupt_image(tmp_path: Path, tiny: list, caplog) -> None:
    src = _copy_coco128_images(tmp_path / 'src', 3)
    (src / 'broken.jpg').write_bytes(b'not an image')
    (src / 'broken.mp4').write_bytes(b'not a video')
    caplog.set_level(logging.INFO)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(src), '--project', str(tmp_path / 'runs'),
                                                     '--save-txt', '--save-conf', '--dy-thres', '0.5']))
    assert sorted(p.name for p in run.glob('*.jpg')) == sorted(p.name for p in src.glob('0*.jpg'))
    assert 'broken.jpg: cannot be decoded' in caplog.text and 'broken.mp4: cannot open this video' in caplog.text
    lines = [r.getMessage() for r in caplog.records if 'Inference' in r.getMessage()]
    assert len(lines) == 3 and all((' easy path, ' in m) or (' hard path, ' in m) for m in lines)
    for txt in (run / 'labels').glob('*.txt'):
        rows = np.loadtxt(txt, ndmin=2)
        assert rows.shape[1] == 6 and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()


def test_detect_video(tmp_path: Path, tiny: list, caplog) -> None:
    video = _write_clip(tmp_path / 'clip.mp4')
    caplog.set_level(logging.INFO)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(video), '--project', str(tmp_path / 'runs')]))
    lines = [r.getMessage() for r in caplog.records if 'Inference' in r.getMessage()]
    assert len(lines) == 5 and lines[0].startswith('video 1/1 (1/5) ') and lines[-1].startswith('video 1/1 (5/5) ')
    capture = cv2.VideoCapture(str(run / 'clip.mp4'))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()


@pytest.mark.parametrize('source,message', [('nowhere/', 'no such file or folder'), ('{empty}', 'no images or videos'),
                                            ('{empty}/bad.mp4', 'cannot open this video')])
def test_detect_bad_source_is_one_line(tmp_path: Path, tiny: list, capsys, source: str, message: str) -> None:
    source = source.replace('{empty}', str(tmp_path))
    if source.endswith('bad.mp4'):
        Path(source).write_bytes(b'not a video')
    with pytest.raises(SystemExit) as e:
        detect.main(tiny + ['--source', source, '--project', str(tmp_path / 'runs')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and 'Traceback' not in '\n'.join(err)


def test_letterbox_batch_keeps_each_images_scale() -> None:
    rng = np.random.default_rng(0)
    wide, tall = rng.integers(0, 255, (100, 200, 3), np.uint8), rng.integers(0, 255, (200, 100, 3), np.uint8)
    alone = [letterbox_batch([im], 64, 32)[0] for im in (wide, tall)]
    together = letterbox_batch([wide, tall], 64, 32)
    assert [a.shape for a in alone] == [(3, 32, 64), (3, 64, 32)] and together.shape == (2, 3, 64, 64)
    # 200x100 at 64 is 32x64: centred in 64x64 it starts at row 16 (16 more padding rows than alone)
    np.testing.assert_array_equal(together[0, :, 16:48], alone[0])
    np.testing.assert_array_equal(together[1, :, :, 16:48], alone[1])
    assert (together[0, :, :16] == 114).all() and (together[1, :, :, :16] == 114).all()


def test_detect_video_batched_equals_batch_1_and_draws_the_overlay(tmp_path: Path, tiny: list, caplog) -> None:
    video = _write_clip(tmp_path / 'clip.mp4')
    caplog.set_level(logging.INFO)
    runs = {}
    for batch in (1, 3):
        caplog.clear()
        runs[batch] = detect.run_detect(detect.parse_opt(tiny + [
            '--source', str(video), '--project', str(tmp_path / 'runs'), '--name', f'b{batch}',
            '--batch-size', str(batch), '--save-txt', '--save-conf', '--conf-thres', '0.001']))
        lines = _inference_lines(caplog)
        assert [m.split(')')[0] for m in lines] == [f'video 1/1 ({i}/5' for i in range(1, 6)]
    labels1 = sorted(p.name for p in (runs[1] / 'labels').glob('*.txt'))
    assert labels1 and labels1 == sorted(p.name for p in (runs[3] / 'labels').glob('*.txt'))
    for name in labels1:
        np.testing.assert_allclose(np.loadtxt(runs[3] / 'labels' / name, ndmin=2),
                                   np.loadtxt(runs[1] / 'labels' / name, ndmin=2), atol=2e-3)
    capture = cv2.VideoCapture(str(runs[3] / 'clip.mp4'))
    for _ in range(4):
        ok, drawn = capture.read()
    capture.release()
    status = drawn[:8, :8].astype(int)  # frame 4 is grey 120 except the black status box with white text
    assert ok and status.mean() < 40 and drawn[:20, :60].max() > 150


@requires_coco128
def test_detect_images_batched_and_crops(tmp_path: Path, tiny: list, caplog) -> None:
    src = _copy_coco128_images(tmp_path / 'src', 5)
    caplog.set_level(logging.INFO)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(src), '--project', str(tmp_path / 'runs'),
                                                     '--batch-size', '4', '--save-txt', '--save-crop', '--nosave',
                                                     '--conf-thres', '0.001']))
    lines = _inference_lines(caplog)
    assert len(lines) == 5 and not list(run.glob('*.jpg'))
    rows = {p.stem: np.loadtxt(p, ndmin=2) for p in (run / 'labels').glob('*.txt')}
    crops = sorted((run / 'crops').rglob('*.jpg'))
    assert rows and len(crops) == sum(len(r) for r in rows.values())
    for stem, r in rows.items():
        image = cv2.imread(str(src / f'{stem}.jpg'))
        h, w = image.shape[:2]
        for k, (_, cx, cy, bw, bh) in enumerate(r):
            crop = next(c for c in crops if c.name == f'{stem}_{k}.jpg')
            ch, cw = cv2.imread(str(crop)).shape[:2]
            assert abs(cw - min(bw * w * 1.02 + 10, w)) <= 12 and abs(ch - min(bh * h * 1.02 + 10, h)) <= 12


def test_detect_stream_list_batches_every_stream(tmp_path: Path, tiny: list, caplog) -> None:
    clip = _write_clip(tmp_path / 'clip.mp4', frames=8)
    streams = tmp_path / 'streams.txt'
    streams.write_text(f'{clip}\n\n{clip}\n')
    caplog.set_level(logging.INFO)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(streams), '--project', str(tmp_path / 'runs')]))
    lines = _inference_lines(caplog)
    assert lines and all(m.startswith(('0: ', '1: ')) for m in lines)
    assert sorted(p.name for p in run.glob('*.mp4')) == ['clip.mp4', 'clip_2.mp4']


@pytest.mark.parametrize('content,message', [(None, 'no such stream list'), ('\n \n', 'stream list is empty'),
                                             ('nowhere.mp4\n', 'cannot open this video')])
def test_detect_bad_stream_list_is_one_line(tmp_path: Path, tiny: list, capsys, content, message: str) -> None:
    streams = tmp_path / 'streams.txt'
    if content is not None:
        streams.write_text(content)
    with pytest.raises(SystemExit) as e:
        detect.main(tiny + ['--source', str(streams), '--project', str(tmp_path / 'runs')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and 'Traceback' not in '\n'.join(err)


def test_detect_rounds_img_size_up_with_a_warning(tmp_path: Path, tiny: list, caplog) -> None:
    video = _write_clip(tmp_path / 'clip.mp4', frames=1)
    caplog.set_level(logging.INFO)
    args = [a if a != '64' else '50' for a in tiny]
    detect.run_detect(detect.parse_opt(args + ['--source', str(video), '--project', str(tmp_path / 'runs')]))
    assert '--img-size 50 must be a multiple of the max stride 16, updating to 64' in caplog.text


def test_dy_thres_help_says_what_out_of_range_values_do(capsys) -> None:
    with pytest.raises(SystemExit):
        detect.parse_opt(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'T <= 0: all easy' in text and 'T > 1: all hard' in text


def test_view_img_without_a_display_warns_and_saves(tmp_path: Path, tiny: list, caplog, monkeypatch) -> None:
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    monkeypatch.setattr('sys.platform', 'linux')
    video = _write_clip(tmp_path / 'clip.mp4', frames=1)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(video), '--project', str(tmp_path / 'runs'),
                                                     '--view-img']))
    assert 'cannot open windows' in caplog.text and (run / 'clip.mp4').is_file()


def test_view_img_with_a_display_shows_each_drawn_image_once(tmp_path: Path, tiny: list,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--view-img where windows can open: each image is shown once, in a window named after its path, as the very
    frame saved (boxes drawn), and given a waitKey so the window paints; nothing is shown twice or left out."""
    shown: list[tuple[str, np.ndarray]] = []
    waits: list[int] = []
    monkeypatch.setattr(detect, 'display_available', lambda: True)
    monkeypatch.setattr(detect.cv2, 'imshow', lambda name, image: shown.append((name, image.copy())))
    monkeypatch.setattr(detect.cv2, 'waitKey', lambda delay=0: waits.append(delay) or -1)
    src = tmp_path / 'src'
    src.mkdir()
    for i in range(2):  # PNG: saved losslessly, so the saved file can be compared with the shown frame exactly
        image = np.full((64, 96, 3), 60 + 80 * i, np.uint8)
        cv2.rectangle(image, (10 + 20 * i, 10), (60 + 20 * i, 50), (0, 0, 255), -1)
        cv2.imwrite(str(src / f'im{i}.png'), image)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(src), '--project', str(tmp_path / 'runs'),
                                                     '--view-img', '--conf-thres', '0.001']))  # boxes drawn
    assert [name for name, _ in shown] == [str(src / f'im{i}.png') for i in range(2)]
    assert waits == [1, 1]
    for name, image in shown:
        saved = cv2.imread(str(run / Path(name).name))
        assert saved is not None and np.array_equal(image, saved)
        assert not np.array_equal(image, cv2.imread(name))  # the drawn frame, not the source


def test_prefetch_keeps_order_prepares_ahead_and_raises_in_order() -> None:
    from utils.detection.sources import SourceError, prefetch
    assert list(prefetch(iter(range(5)), lambda i: i * i)) == [(i, i * i) for i in range(5)]

    def failing():
        yield 1
        raise SourceError('bad.mp4: cannot open this video')
    got = []
    with pytest.raises(SourceError, match='bad.mp4'):
        for item in prefetch(failing(), str):
            got.append(item)
    assert got == [(1, '1')]
    early = prefetch(iter(range(100)), str, depth=1)
    assert next(early) == (0, '0')
    early.close()  # stopping early ends the worker thread
    import threading
    assert not any(t.name == 'prefetch' and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize('nc', [None, 5])
def test_detect_with_nothing_readable_or_a_wrong_class_count_leaves_no_run_folder(tmp_path: Path, tiny: list,
                                                                                  capsys, nc) -> None:
    source = tmp_path / 'bad.jpg'
    source.write_text('not an image')
    if nc is None:
        message = 'no image or video frame could be read'
    else:
        _write_clip(tmp_path / 'clip.mp4', frames=1)
        source, message = tmp_path / 'clip.mp4', 'the checkpoint detects 80 classes, the model 5'
    extra = [] if nc is None else ['--num-classes', str(nc)]
    argv = tiny + extra + ['--source', str(source), '--project', str(tmp_path / 'runs'), '--save-txt']
    assert message in cli_error_line(detect.main, argv, capsys)
    assert not (tmp_path / 'runs' / 'exp').exists()
