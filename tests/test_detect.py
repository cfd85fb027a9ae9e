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
from tests.helpers import COCO128, requires_coco128, tiny_config
from tests.test_evaluation import _lively_tiny_model


@pytest.fixture(scope='module')
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp('tiny_detect')
    (folder / 'tiny.yaml').write_text(yaml.safe_dump(tiny_config(dynamic=True, nc=80)))
    save_checkpoint({'model': half_state_dict(_lively_tiny_model())}, folder / 'tiny.pt')
    return ['--cfg', str(folder / 'tiny.yaml'), '--weight', str(folder / 'tiny.pt'), '--device', 'cpu',
            '--img-size', '64', '--conf-thres', '0.5']


@requires_coco128
def test_detect_folder_with_a_corrupt_image(tmp_path: Path, tiny: list, caplog) -> None:
    src = tmp_path / 'src'
    src.mkdir()
    for f in sorted((COCO128 / 'images' / 'train2017').glob('*.jpg'))[:3]:
        shutil.copy(f, src / f.name)
    (src / 'broken.jpg').write_bytes(b'not an image')
    caplog.set_level(logging.INFO)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(src), '--project', str(tmp_path / 'runs'),
                                                     '--save-txt', '--save-conf', '--dy-thres', '0.5']))
    assert sorted(p.name for p in run.glob('*.jpg')) == sorted(p.name for p in src.glob('0*.jpg'))
    assert 'broken.jpg: cannot be decoded' in caplog.text
    lines = [r.getMessage() for r in caplog.records if 'Inference' in r.getMessage()]
    assert len(lines) == 3 and all((' easy path, ' in m) or (' hard path, ' in m) for m in lines)
    for txt in (run / 'labels').glob('*.txt'):
        rows = np.loadtxt(txt, ndmin=2)
        assert rows.shape[1] == 6 and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()


def test_detect_video(tmp_path: Path, tiny: list, caplog) -> None:
    video = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
    for i in range(5):
        frame = np.full((64, 96, 3), 40 * i, np.uint8)
        cv2.rectangle(frame, (10 + 5 * i, 10), (50 + 5 * i, 50), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    caplog.set_level(logging.INFO)
    run = detect.run_detect(detect.parse_opt(tiny + ['--source', str(video), '--project', str(tmp_path / 'runs')]))
    lines = [r.getMessage() for r in caplog.records if 'Inference' in r.getMessage()]
    assert len(lines) == 5 and lines[0].startswith('video 1/1 (1/5) ') and lines[-1].startswith('video 1/1 (5/5) ')
    capture = cv2.VideoCapture(str(run / 'clip.mp4'))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()


@pytest.mark.parametrize('source,message', [('nowhere/', 'no such file or folder'), ('{empty}', 'no images or videos')])
def test_detect_bad_source_is_one_line(tmp_path: Path, tiny: list, capsys, source: str, message: str) -> None:
    source = source.replace('{empty}', str(tmp_path))
    with pytest.raises(SystemExit) as e:
        detect.main(tiny + ['--source', source, '--project', str(tmp_path / 'runs')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and 'Traceback' not in '\n'.join(err)
