"""Unusual but valid inputs work, and bad ones get one line naming the file: thin images, JPEGs with bytes after
the image, triangle and mixed polygon files, byte-order marks, single-image splits, folders named like globs,
checkpoints for another class count, thresholds out of range, routing flags on a model without a router."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import detect
import test as test_script
from models.checkpoint import CheckpointError, load_weights
from models.yolo import Model
from tests.helpers import random_image, tiny_config
from utils.cli import OutputFolderError, check_writable, run_cli, warn_existing_labels
from utils.data.data_config import DataConfigError, list_image_files, load_data_config
from utils.data.label_cache import scan_one
from utils.data.labels import read_label_file
from utils.data.letterbox import letterbox
from utils.datasets import LoadImagesAndLabels
from utils.detection.sources import list_sources
from utils.evaluation.router_budget import apply_routing_flags
from utils.train.setup import TrainOptionError, check_label_classes


def _read_labels(folder: Path, content: str | bytes, name: str = 'a.txt'):
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return read_label_file(path)


def test_a_thin_image_resizes_to_at_least_one_pixel(tmp_path: Path) -> None:
    boxed, ratio, _ = letterbox(np.zeros((30, 4000, 3), np.uint8), 640, auto=False)
    assert boxed.shape == (640, 640, 3) and ratio == (0.16, 0.16)
    image = random_image(tmp_path / 'images' / 'thin.jpg', w=4000, h=12)  # 12 px × 640 / 4000 = 1.9 → 1 row
    ds = LoadImagesAndLabels(str(image.parent), img_size=64, batch_size=1)
    img, _, _, (hw0, _) = ds[0]
    assert img.shape == (3, 64, 64) and hw0 == (12, 4000)


def test_jpeg_with_bytes_after_the_image_is_read_and_a_cut_one_is_not(tmp_path: Path) -> None:
    data = random_image(tmp_path / 'a.jpg').read_bytes()
    (tmp_path / 'trailing.jpg').write_bytes(data + bytes(16))  # phones append a video after the image
    (tmp_path / 'cut.jpg').write_bytes(data[:-2] + bytes(16))  # the end-of-image marker is gone
    assert scan_one(str(tmp_path / 'trailing.jpg'), str(tmp_path / 'none.txt'), 3)[3] == 'missing'
    *_, status, messages = scan_one(str(tmp_path / 'cut.jpg'), str(tmp_path / 'none.txt'), 3)
    assert status == 'corrupt' and 'truncated JPEG' in messages[0]


def test_triangles_only_are_polygons_and_box_rows_in_a_polygon_file_warn(tmp_path: Path) -> None:
    parsed = _read_labels(tmp_path, '0 0.1 0.2 0.5 0.2 0.3 0.6\n1 0.6 0.6 0.8 0.6 0.7 0.9\n')
    assert parsed.status == 'found' and len(parsed.segments) == 2 and not parsed.messages
    np.testing.assert_allclose(parsed.labels[0], [0, 0.3, 0.4, 0.4, 0.4], atol=1e-6)
    parsed = _read_labels(tmp_path, '0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n1 0.7 0.7 0.2 0.2\n')
    assert len(parsed.labels) == 2 and any('lines [2] have 5 fields in a polygon file' in m for m in parsed.messages)


def test_byte_order_marks_are_ignored_in_labels_and_lists(tmp_path: Path) -> None:
    parsed = _read_labels(tmp_path, '\ufeff0 0.5 0.5 0.25 0.25\n')
    assert parsed.status == 'found' and parsed.labels.tolist() == [[0, 0.5, 0.5, 0.25, 0.25]]
    image = random_image(tmp_path / 'images' / 'a.jpg')
    listing = tmp_path / 'list.txt'
    listing.write_bytes(f'\ufeff{image}\n'.encode())
    assert list_image_files(str(listing)) == [str(image)]


def test_a_single_image_is_a_split_and_an_undecodable_list_is_one_line(tmp_path: Path) -> None:
    image = random_image(tmp_path / 'images' / 'a.jpg')
    assert list_image_files(str(image)) == [str(image)]
    listing = tmp_path / 'latin1.txt'
    listing.write_bytes('/data/caf\xe9.jpg\n'.encode('latin-1'))
    with pytest.raises(DataConfigError, match='latin1.txt is not a UTF-8 text list') as info:
        list_image_files(str(listing))
    assert '\n' not in str(info.value)


def test_images_listed_twice_are_used_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = random_image(tmp_path / 'images' / 'a.jpg')
    listing = tmp_path / 'list.txt'
    listing.write_text(f'{image}\n{image}\n')
    with caplog.at_level(logging.WARNING):
        assert list_image_files([str(listing), str(image.parent)]) == [str(image)]
    assert any('2 image paths' in r.getMessage() and 'listed more than once' in r.getMessage() for r in caplog.records)


def test_names_must_be_a_list(tmp_path: Path) -> None:
    data = tmp_path / 'data.yaml'
    data.write_text('train: images\nval: images\nnc: 3\nnames: cat\n')
    with pytest.raises(DataConfigError, match='`names` must be a list'):
        load_data_config(data)


def test_a_folder_named_like_a_glob_is_a_folder(tmp_path: Path) -> None:
    image = random_image(tmp_path / 'run [v1] ü' / 'a.jpg')
    assert list_sources(str(image.parent)) == [str(image)]
    assert list_sources(str(tmp_path / 'run*' / '*.jpg')) == [str(image)]


def test_zero_size_boxes_are_kept_with_a_warning(tmp_path: Path) -> None:
    parsed = _read_labels(tmp_path, '0 0.5 0.5 0 0.2\n1 0.5 0.5 0.2 0.2\n')
    assert len(parsed.labels) == 2 and any('1 rows have zero width or height' in m for m in parsed.messages)


def test_checkpoint_for_another_class_count_says_so(tmp_path: Path) -> None:
    path = tmp_path / 'w.pt'
    torch.save({'model': Model(tiny_config(nc=7)).state_dict()}, path)
    with pytest.raises(CheckpointError, match='the checkpoint detects 7 classes, the model 3') as info:
        load_weights(Model(tiny_config(nc=3)), path)
    assert '\n' not in str(info.value)


def test_label_classes_over_nc_name_a_file() -> None:
    labels = [np.array([[0, .5, .5, .1, .1]]), np.zeros((0, 5)), np.array([[9, .5, .5, .1, .1]])]
    with pytest.raises(TrainOptionError, match=r'labels use class 9 but nc is 3 \(in c.txt; 1 label files over nc\)'):
        check_label_classes(labels, 3, 'data.yaml', ['a.txt', 'b.txt', 'c.txt'])


@pytest.mark.parametrize('flags,message', [(['--conf-thres', '1.5'], '--conf-thres 1.5: must lie between 0 and 1'),
                                           (['--iou-thres', '-1'], '--iou-thres -1.0: must lie between 0 and 1'),
                                           (['--dy-thres', 'nan'], '--dy-thres nan: give a number')])
def test_thresholds_that_cannot_be_meant_are_refused(flags: list[str], message: str, capsys) -> None:
    for script in (test_script, detect):
        with pytest.raises(SystemExit) as e:
            script.parse_opt(flags)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_routing_flags_on_a_model_without_a_router_warn(caplog: pytest.LogCaptureFixture) -> None:
    model = Model(tiny_config(dynamic=False))
    opt = test_script.parse_opt(['--cfg', 'step1.yaml', '--easy-share', '0.5'])
    with caplog.at_level(logging.WARNING):
        apply_routing_flags(model, opt)
    assert any('--easy-share has no effect: step1.yaml has no router' in r.getMessage() for r in caplog.records)
    caplog.clear()
    apply_routing_flags(model, test_script.parse_opt([]))
    assert not caplog.records


def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / 'runs'
    blocker.write_text('a file where the run folder should go')
    with pytest.raises(OutputFolderError, match='choose another --project') as info:
        check_writable(blocker / 'test' / 'exp')
    assert '\n' not in str(info.value)
    check_writable(tmp_path / 'new' / 'exp')  # missing folders below a writable one are fine


@pytest.mark.parametrize('error,code,message', [
    (OSError(28, 'No space left on device', 'runs/exp/best.pt'), 2, 'runs/exp/best.pt: No space left on device'),
    (KeyboardInterrupt(), 130, 'interrupted (Ctrl-C)')])
def test_file_system_errors_and_ctrl_c_mid_run_are_one_line(error: BaseException, code: int, message: str,
                                                            capsys) -> None:
    def run(_opt) -> None:
        raise error
    with pytest.raises(SystemExit) as e:
        run_cli(run, {}, logging.getLogger('test'))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and err[-1].startswith(f'error: {message}') and 'Traceback' not in ''.join(err)


def test_test_py_that_fails_on_its_inputs_leaves_no_run_folder(tmp_path: Path, capsys) -> None:
    random_image(tmp_path / 'images' / 'a.jpg')
    data = tmp_path / 'data.yaml'
    data.write_text(f'val: {tmp_path / "images"}\nnc: 3\n')
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config()))
    with pytest.raises(SystemExit):
        test_script.main(['--cfg', str(cfg), '--weight', str(tmp_path / 'none.pt'), '--data', str(data),
                          '--device', 'cpu', '--img-size', '64', '--project', str(tmp_path / 'runs')])
    assert 'weights file not found' in capsys.readouterr().err and not (tmp_path / 'runs').exists()


def test_reusing_a_run_folder_with_labels_warns_that_rows_append(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        warn_existing_labels(tmp_path)
        (tmp_path / 'labels').mkdir()
        (tmp_path / 'labels' / 'a.txt').write_text('0 0.5 0.5 0.1 0.1\n')
        warn_existing_labels(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f'WARNING: {tmp_path / "labels"} already holds 1 label files; --save-txt appends to them (as the reference '
        f'does): remove them, or drop --exist-ok for a new run folder']
