"""COCO test-dev: `test.py --task test` writes the file the COCO server takes (name, zip, 91-id categories)."""
from __future__ import annotations

import argparse
import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch

import test as test_script
from utils.evaluation.coco_eval import (
    TESTDEV_SERVER,
    CocoIds,
    SubmissionError,
    submission_json_name,
    submission_method,
    write_testdev_submission,
)

NAME = 'detections_test-dev2017_dy-yolov7_results'


def make_opt(data: str = 'data/coco.yaml', task: str = 'test', single_cls: bool = False) -> argparse.Namespace:
    """The test.py options write_json reads."""
    return argparse.Namespace(task=task, data=data, single_cls=single_cls, weight='runs/train/x/weights/dy-yolov7.pt')


def coco_rows() -> list[dict]:
    """Rows of one test-dev image's detections [x1, y1, x2, y2, conf, cls] with classes 0, 79 and 11."""
    detections = torch.tensor([[10.0, 20.0, 50.0, 80.0, 0.9, 0.0],
                               [0.5, 1.25, 100.5, 41.25, 0.123456, 79.0],
                               [5.0, 5.0, 6.0, 7.0, 0.01, 11.0]])
    return CocoIds(80, None, is_coco=True).rows(detections, '../coco/images/test2017/000000000001.jpg')


def test_task_test_writes_the_server_zip(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger='utils.evaluation.coco_eval'):
        assert test_script.write_json(make_opt(), coco_rows(), tmp_path, None, [1] * 20288) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'{NAME}.json', f'{NAME}.zip']
    with zipfile.ZipFile(tmp_path / f'{NAME}.zip') as archive:
        assert archive.namelist() == [f'{NAME}.json']  # the one member, at the archive's top level
        rows = json.loads(archive.read(f'{NAME}.json'))
    assert rows == [
        {'image_id': 1, 'category_id': 1, 'bbox': [10.0, 20.0, 40.0, 60.0], 'score': 0.9},
        {'image_id': 1, 'category_id': 90, 'bbox': [0.5, 1.25, 100.0, 40.0], 'score': 0.12346},
        {'image_id': 1, 'category_id': 13, 'bbox': [5.0, 5.0, 1.0, 2.0], 'score': 0.01}]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f'COCO test-dev: {tmp_path / NAME}.zip (3 detections on 20288 images) is the file to upload '
                        f'to the COCO detection server, {TESTDEV_SERVER}']


def test_other_image_count_is_warned(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger='utils.evaluation.coco_eval'):
        write_testdev_submission(coco_rows(), tmp_path, 'dy-yolov7', 5000)
    assert [r.getMessage() for r in caplog.records] == [
        'WARNING: 5000 images evaluated; the server scores all 20288 of test-dev2017 (the list from '
        'image_info_test-dev2017.json, see docs/datasets.md)']


@pytest.mark.parametrize('stem, method', [('dy-yolov7', 'dy-yolov7'), ('dy_yolov7x-2', 'dy_yolov7x-2'),
                                          ('dy-yolov7.manifest', 'dy-yolov7-manifest'), ('best (1)', 'best-1'),
                                          ('...', 'dynamicdet')])
def test_method_keeps_letters_digits_underscores_dashes(stem: str, method: str) -> None:
    assert submission_method(stem) == method
    assert submission_json_name(stem) == f'detections_test-dev2017_{method}_results.json'


def test_ids_outside_coco_scheme_are_a_one_line_error(tmp_path: Path) -> None:
    rows = CocoIds(80, None, is_coco=False).rows(torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.5, 0.0]]), '1.jpg')
    with pytest.raises(SubmissionError, match=r"^category ids 0 are not COCO's: [^\n]*$"):
        write_testdev_submission(rows, tmp_path, 'x', 1)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('opt', [make_opt(task='val'), make_opt(data='data/mine.yaml'), make_opt(single_cls=True)])
def test_val_and_non_coco_test_keep_the_predictions_json(tmp_path: Path, opt: argparse.Namespace) -> None:
    test_script.write_json(opt, [], tmp_path, None, [])
    assert [p.name for p in tmp_path.iterdir()] == ['dy-yolov7_predictions.json']
