"""COCO JSON -> YOLO labels: equal to the coco128 fixture labels, and one-line errors on bad input."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import COCO128, ROOT, requires_coco128
from utils.data.coco2yolo import coco91_to_80, convert_coco_json, main

COCO128_JSON = COCO128 / 'annotations' / 'instances_train2017.json'


def read_rows(path: Path) -> list[list[str]]:
    """Whitespace-split non-empty lines of a label file."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def polygon_box(row: list[str]) -> np.ndarray:
    """[cx, cy, w, h] of the bounding box of a `class x1 y1 x2 y2 ...` row."""
    points = np.array(row[1:], float).reshape(-1, 2)
    low, high = points.min(0), points.max(0)
    return np.concatenate([(low + high) / 2, high - low])


@pytest.fixture(scope='module')
def coco128_boxes(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp('boxes')
    return out, convert_coco_json(COCO128_JSON, out)


@pytest.fixture(scope='module')
def coco128_segments(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('segments')
    convert_coco_json(COCO128_JSON, out, segments=True)
    return out


@requires_coco128
def test_boxes_equal_coco128_labels(coco128_boxes) -> None:
    out, _ = coco128_boxes
    reference = COCO128 / 'labels' / 'train2017'
    assert sorted(p.name for p in out.glob('*.txt')) == sorted(p.name for p in reference.glob('*.txt'))
    for path in reference.glob('*.txt'):
        expected, ours = read_rows(path), read_rows(out / path.name)
        assert [row[0] for row in ours] == [row[0] for row in expected], path.name
        # The fixture prints 6 significant digits ('0.0969375'), we round to 6 decimals: up to 5e-7 apart.
        np.testing.assert_allclose(np.array([r[1:] for r in ours], float), np.array([r[1:] for r in expected], float),
                                   rtol=0, atol=1e-6 + 1e-12, err_msg=path.name)


@requires_coco128
def test_backgrounds_get_no_file_and_crowd_is_skipped(coco128_boxes) -> None:
    out, stats = coco128_boxes
    assert (stats['files'], stats['backgrounds'], stats['crowd_skipped'], stats['objects']) == (126, 2, 10, 929)
    assert not (out / '000000000250.txt').exists() and not (out / '000000000508.txt').exists()
    data = json.loads(COCO128_JSON.read_text())
    crowd_images = {a['image_id'] for a in data['annotations'] if a['iscrowd']}
    for image_id in crowd_images:
        kept = sum(1 for a in data['annotations'] if a['image_id'] == image_id and not a['iscrowd'])
        assert len(read_rows(out / f'{image_id:012d}.txt')) == kept


def test_coco91_to_80_map() -> None:
    table = coco91_to_80()
    assert len(table) == 80 and sorted(table.values()) == list(range(80))
    picked = {1: 0, 11: 10, 13: 11, 27: 24, 65: 59, 67: 60, 72: 62, 90: 79}
    assert {category_id: table[category_id] for category_id in picked} == picked
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91} & table.keys()


@requires_coco128
def test_segments_rows_match_box_labels(coco128_boxes, coco128_segments) -> None:
    boxes, _ = coco128_boxes
    assert sorted(p.name for p in coco128_segments.glob('*.txt')) == sorted(p.name for p in boxes.glob('*.txt'))
    for path in boxes.glob('*.txt'):
        box_rows, polygon_rows = read_rows(path), read_rows(coco128_segments / path.name)
        assert [r[0] for r in polygon_rows] == [r[0] for r in box_rows], path.name
        for box_row, polygon_row in zip(box_rows, polygon_rows):
            assert len(polygon_row) % 2 == 1 and len(polygon_row) >= 7
            np.testing.assert_allclose(polygon_box(polygon_row), np.array(box_row[1:], float), atol=1e-3)


# The fixture's polygon files were not made from the JSON polygons, so only part of them can be checked:
# their class column holds the raw COCO ids (1-90) with rows sorted by it, they keep the crowd annotations,
# their points are integer-pixel mask contours (box up to ~0.04 off, median ~0.003), one tiny annotation of
# image 71 (16 x 4 px) is missing, and the 2 background images have empty files. What holds is checked below.
FIXTURE_SEGMENTS_MISSING_ONE = {71}


@requires_coco128
def test_fixture_segments_classes_and_boxes(coco128_segments) -> None:
    data = json.loads(COCO128_JSON.read_text())
    table = coco91_to_80()
    for path in sorted((COCO128 / 'segments' / 'train2017').glob('*.txt')):
        image_id = int(path.stem)
        image = next(i for i in data['images'] if i['id'] == image_id)
        anns = [a for a in data['annotations'] if a['image_id'] == image_id]
        rows = read_rows(path)
        ours = read_rows(coco128_segments / path.name) if anns else []
        fixture_classes = Counter(table[int(r[0])] for r in rows)
        expected = Counter(int(r[0]) for r in ours) + Counter(table[a['category_id']] for a in anns if a['iscrowd'])
        if image_id in FIXTURE_SEGMENTS_MISSING_ONE:
            assert fixture_classes <= expected and fixture_classes.total() == expected.total() - 1
        else:
            assert fixture_classes == expected, path.name
        scale = np.array([image['width'], image['height']] * 2, float)
        for row in rows:
            candidates = [np.array(a['bbox']) for a in anns if a['category_id'] == int(row[0])]
            corners = np.array([[x / scale[0], y / scale[1], (x + w) / scale[0], (y + h) / scale[1]]
                                for x, y, w, h in candidates])
            box = polygon_box(row)
            mine = np.concatenate([box[:2] - box[2:] / 2, box[:2] + box[2:] / 2])
            assert np.abs(corners - mine).max(1).min() < 0.04, path.name


def write_coco(tmp_path: Path, annotations: list[dict], categories: list[dict] | None = None,
               images: list[dict] | None = None) -> Path:
    """A tiny instances JSON in tmp_path; default: two 100 x 50 images and the 80 COCO categories."""
    images = images or [{'id': 1, 'file_name': 'a.jpg', 'width': 100, 'height': 50},
                        {'id': 2, 'file_name': 'sub/b.png', 'width': 100, 'height': 50}]
    categories = categories if categories is not None else [{'id': i, 'name': str(i)} for i in coco91_to_80()]
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': categories}))
    return path


def ann(image_id: int, category_id: int, bbox: list[float], segmentation=None, **extra) -> dict:
    """One annotation dict."""
    return {'image_id': image_id, 'category_id': category_id, 'bbox': bbox, 'iscrowd': 0,
            'segmentation': segmentation if segmentation is not None else [], **extra}


def test_custom_categories_map_sorted_ids(tmp_path: Path) -> None:
    categories = [{'id': 9, 'name': 'c'}, {'id': 2, 'name': 'a'}, {'id': 5, 'name': 'b'}]
    json_path = write_coco(tmp_path, [ann(1, 5, [10, 10, 20, 10]), ann(1, 9, [0, 0, 100, 50]),
                                      ann(2, 2, [50, 0, 50, 25])], categories)
    convert_coco_json(json_path, tmp_path / 'out')
    assert (tmp_path / 'out' / 'a.txt').read_text() == '1 0.2 0.3 0.2 0.2\n2 0.5 0.5 1 1\n'
    assert (tmp_path / 'out' / 'b.txt').read_text() == '0 0.75 0.25 0.5 0.5\n'


def test_segments_join_parts_and_fall_back_to_box_for_rle(tmp_path: Path) -> None:
    rle = {'counts': 'abc', 'size': [50, 100]}
    two_parts = [[10, 5, 30, 5, 30, 15], [10, 10, 20, 15, 10, 15]]
    json_path = write_coco(tmp_path, [ann(1, 13, [10, 5, 20, 10], two_parts), ann(1, 90, [0, 0, 50, 25], rle)])
    convert_coco_json(json_path, tmp_path / 'out', segments=True)
    assert read_rows(tmp_path / 'out' / 'a.txt') == [
        '11 0.100000 0.100000 0.300000 0.100000 0.300000 0.300000 0.100000 0.200000 0.200000 0.300000 0.100000 0.300000'
        .split(), '79 0.000000 0.000000 0.500000 0.000000 0.500000 0.500000 0.000000 0.500000'.split()]


def test_zero_size_boxes_are_skipped(tmp_path: Path) -> None:
    json_path = write_coco(tmp_path, [ann(1, 1, [10, 10, 0, 5]), ann(1, 1, [10, 10, 5, -1]), ann(2, 1, [0, 0, 10, 5])])
    stats = convert_coco_json(json_path, tmp_path / 'out')
    assert (stats['files'], stats['backgrounds'], stats['empty_skipped']) == (1, 1, 2)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['b.txt']


def test_unknown_image_and_category_are_warned_and_skipped(tmp_path: Path, caplog) -> None:
    json_path = write_coco(tmp_path, [ann(7, 1, [0, 0, 10, 5], id=101), ann(1, 12, [0, 0, 10, 5], id=102),
                                      ann(1, 1, [0, 0, 10, 5], id=103)])
    with caplog.at_level(logging.WARNING, logger='utils.data.coco2yolo'):
        stats = convert_coco_json(json_path, tmp_path / 'out')
    assert (stats['unknown_image'], stats['unknown_category'], stats['files']) == (1, 1, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ['annotation 101: unknown image id 7, skipped',
                        'annotation 102: unknown category id 12, skipped']
    assert (tmp_path / 'out' / 'a.txt').read_text() == '0 0.05 0.05 0.1 0.1\n'


@pytest.mark.parametrize('content, message', [
    (None, 'no such file'), ('{"images": [', 'not valid JSON'), ('[1, 2]', 'expected a JSON object'),
    ('{"images": []}', 'no list under key(s) annotations')])
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, caplog, content, message) -> None:
    json_path = tmp_path / 'instances.json'
    if content is not None:
        json_path.write_text(content)
    assert main(['--json', str(json_path), '--out', str(tmp_path / 'out')]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and '\n' not in errors[0]
    assert not (tmp_path / 'out').exists()


def test_cli_summary_line(tmp_path: Path, caplog) -> None:
    json_path = write_coco(tmp_path, [ann(1, 1, [0, 0, 10, 5]), ann(1, 1, [0, 0, 10, 5], iscrowd=1)])
    with caplog.at_level(logging.INFO, logger='utils.data.coco2yolo'):
        assert main(['--json', str(json_path), '--out', str(tmp_path / 'out')]) == 0
    assert caplog.records[-1].getMessage() == (
        f'wrote 1 label files (1 background images, 1 crowd annotations skipped) to {tmp_path / "out"}')


def test_module_cli_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, '-m', 'utils.data.coco2yolo', '--json', str(tmp_path / 'missing.json'),
                             '--out', str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and 'no such file' in result.stderr
    assert 'Traceback' not in result.stderr
