"""COCO JSON -> YOLO labels: equal to the released labels (coco128 fixture, an official-format slice), image lists,
and one-line errors on bad input."""
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
from utils.data.coco2yolo import coco91_to_80, convert_coco_json, main, write_image_list

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
    for path in reference.glob('*.txt'):  # character for character: both print %g ('0.0969375', '0.5955', '1')
        assert (out / path.name).read_text() == path.read_text(), path.name


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


# A slice of COCO's instances_train2017.json (the annotations of 6 train2017 images, copied from coco128's JSON,
# listed out of image order as in the official file) and the lines of the released labels for those images.
# It holds category ids with gaps (3, 8, 13 -> classes 2, 7, 11; 67, 81, 85, 88, 90 -> 60, 71, 74, 77, 79), a
# crowd box (149), a box touching the border (142: '1'), small values printed with more decimals (149, 133),
# an image without annotations (250) and, added, one whose only annotation is a crowd box.
SLICE_IMAGES = [(64, 480, 640), (133, 640, 480), (142, 480, 640), (149, 640, 428), (208, 640, 480), (250, 640, 480),
                (999999, 640, 480)]
SLICE_ANNOTATIONS = [  # (id, image_id, category_id, bbox, iscrowd)
    (350246, 64, 3, [52.36, 387.77, 176.36, 157.62], 0), (317921, 133, 65, [13.99, 2.87, 626.01, 418.65], 0),
    (1367656, 64, 8, [52.64, 353.78, 124.58, 59.47], 0), (82331, 142, 44, [256.71, 88.94, 160.07, 253.87], 0),
    (466969, 149, 1, [388.03, 324.65, 9.61, 13.33], 0), (1132256, 208, 81, [1.08, 108.94, 638.92, 366.75], 0),
    (1389088, 64, 13, [115.84, 226.59, 37.02, 75.17], 0), (1673328, 133, 88, [525.34, 20.93, 47.95, 28.72], 0),
    (413425, 142, 67, [0.0, 226.36, 480.0, 226.22], 0), (900100011, 149, 1, [104, 310, 459, 34], 1),
    (479044, 149, 1, [339.42, 316.81, 6.88, 13.08], 0), (2197833, 208, 90, [157.81, 170.21, 191.76, 88.89], 0),
    (2197111, 64, 85, [112.04, 42.19, 154.3, 152.31], 0), (498873, 149, 1, [333.22, 315.73, 6.3, 13.95], 0),
    (900100012, 999999, 1, [0, 0, 640, 480], 1)]
RELEASED_LINES = {
    '000000000064.txt': ['2 0.292792 0.729031 0.367417 0.246281', '7 0.239438 0.599242 0.259542 0.0929219',
                         '11 0.279896 0.412773 0.077125 0.117453', '74 0.394146 0.184914 0.321458 0.237984'],
    '000000000133.txt': ['59 0.51093 0.442073 0.978141 0.872188', '77 0.858305 0.0735208 0.0749219 0.0598333'],
    '000000000142.txt': ['39 0.701552 0.337305 0.333479 0.396672', '60 0.5 0.530422 1 0.353469'],
    '000000000149.txt': ['0 0.613805 0.7741 0.0150156 0.0311449', '0 0.535719 0.755491 0.01075 0.0305607',
                         '0 0.525578 0.753984 0.00984375 0.0325935'],
    '000000000208.txt': ['71 0.500844 0.60899 0.998312 0.764062', '79 0.396391 0.447198 0.299625 0.185188']}


def test_official_slice_gives_the_released_label_lines(tmp_path: Path) -> None:
    images = [{'id': i, 'file_name': f'{i:012d}.jpg', 'width': w, 'height': h, 'license': 1} for i, w, h in SLICE_IMAGES]
    annotations = [{'id': a, 'image_id': i, 'category_id': c, 'bbox': b, 'iscrowd': crowd, 'area': b[2] * b[3],
                    'segmentation': {'counts': [], 'size': [1, 1]} if crowd else []}
                   for a, i, c, b, crowd in SLICE_ANNOTATIONS]
    categories = [{'id': i, 'name': f'c{i}', 'supercategory': 's'} for i in coco91_to_80()]  # COCO's 80 ids
    stats = convert_coco_json(write_coco(tmp_path, annotations, categories, images), tmp_path / 'out')
    assert {p.name: p.read_text().splitlines() for p in (tmp_path / 'out').iterdir()} == RELEASED_LINES
    assert (stats['files'], stats['backgrounds'], stats['crowd_skipped'], stats['objects']) == (5, 2, 2, 13)


@requires_coco128
def test_official_slice_lines_are_in_the_fixture() -> None:
    for name, lines in RELEASED_LINES.items():  # the literal lines above are the fixture's, not retyped guesses
        fixture = (COCO128 / 'labels' / 'train2017' / name).read_text().splitlines()
        assert all(line in fixture for line in lines), name
    assert not (COCO128 / 'labels' / 'train2017' / '000000000250.txt').exists()


def test_image_list_from_an_image_info_json(tmp_path: Path, caplog) -> None:
    # image_info_test-dev2017.json's form: images and categories, no annotations key
    info = {'info': {}, 'licenses': [], 'categories': [{'id': 1, 'name': 'person'}],
            'images': [{'id': 581929, 'file_name': '000000581929.jpg', 'width': 640, 'height': 480},
                       {'id': 1, 'file_name': '000000000001.jpg', 'width': 640, 'height': 480},
                       {'id': 57, 'file_name': '000000000057.jpg', 'width': 640, 'height': 480}]}
    json_path = tmp_path / 'image_info_test-dev2017.json'
    json_path.write_text(json.dumps(info))
    (tmp_path / 'coco' / 'images' / 'test2017').mkdir(parents=True)
    (tmp_path / 'coco' / 'images' / 'test2017' / '000000000001.jpg').write_bytes(b'')
    list_path = tmp_path / 'coco' / 'test-dev2017.txt'
    with caplog.at_level(logging.INFO, logger='utils.data.coco2yolo'):
        assert main(['--json', str(json_path), '--image-list', str(list_path)]) == 0
    assert list_path.read_text() == ('./images/test2017/000000000001.jpg\n./images/test2017/000000000057.jpg\n'
                                     './images/test2017/000000581929.jpg\n')
    assert [r.getMessage() for r in caplog.records] == [
        f'2 of the 3 listed images are not in {tmp_path / "coco" / "images" / "test2017"}',
        f'wrote 3 image paths to {list_path}']
    assert write_image_list(json_path, tmp_path / 'val.txt', './images/val2017/') == 3
    assert (tmp_path / 'val.txt').read_text().splitlines()[0] == './images/val2017/000000000001.jpg'


@pytest.mark.parametrize('content, message', [
    ('{"annotations": []}', 'no list under key(s) images'), ('{"images": [{"id": 1}]}', 'images[0]: needs a file_name')])
def test_image_list_bad_input_is_one_line(tmp_path: Path, caplog, content: str, message: str) -> None:
    json_path = tmp_path / 'info.json'
    json_path.write_text(content)
    assert main(['--json', str(json_path), '--image-list', str(tmp_path / 'list.txt')]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and not (tmp_path / 'list.txt').exists()
