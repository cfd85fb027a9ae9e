"""Label files: path rule, polygons, and row-by-row repair of dirty labels with a reason each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SHARED
from utils.data.labels import img2label_paths, read_label_file, segments2boxes


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / 'a.txt'
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_label_path_rule_replaces_first_images_only() -> None:
    assert img2label_paths(['/d/images/x/images/a.b.jpg']) == ['/d/labels/x/images/a.b.txt']


def test_polygons_become_bounding_boxes() -> None:
    boxes = segments2boxes([np.array([[0.1, 0.2], [0.5, 0.2], [0.3, 0.6]], np.float32)])
    np.testing.assert_allclose(boxes, [[0.3, 0.4, 0.4, 0.4]], atol=1e-7)


def test_polygon_file(tmp_path: Path) -> None:
    parsed = read_label_file(_write(tmp_path, '3 0.1 0.2 0.5 0.2 0.3 0.6 0.1 0.5\n1 0.5 0.5 0.2 0.2\n'))
    assert parsed.status == 'found' and len(parsed.segments) == 2
    np.testing.assert_allclose(parsed.labels[0], [3, 0.3, 0.4, 0.4, 0.4], atol=1e-7)
    # in a polygon file every line is a polygon: '0.5 0.5 0.2 0.2' is the 2-point polygon (0.5, 0.5), (0.2, 0.2)
    np.testing.assert_allclose(parsed.labels[1], [1, 0.35, 0.35, 0.3, 0.3], atol=1e-7)


@pytest.mark.parametrize('text,n_rows,message', [
    ('0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n', 1, 'removed 1 duplicate rows'),
    ('0 1.005 0.5 0.2 0.2\n', 1, 'clipped 1 rows slightly outside [0, 1]'),
    ('0 1.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n', 1, 'dropped 1 rows with coordinates far outside [0, 1]'),
    ('7 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n', 1, 'dropped 1 rows with class ids outside 0..4: [7.0]'),
    ('-1 0.5 0.5 0.2 0.2\n', 0, 'dropped 1 rows with class ids outside 0..4: [-1.0]'),
    ('0 nan 0.5 0.2 0.2\n', 0, 'dropped 1 rows with coordinates far outside [0, 1]'),
])
def test_dirty_rows_are_repaired_with_a_reason(tmp_path: Path, text: str, n_rows: int, message: str) -> None:
    parsed = read_label_file(_write(tmp_path, text), nc=5)
    assert len(parsed.labels) == n_rows and message in parsed.messages
    assert parsed.status == ('found' if n_rows else 'empty')
    assert (parsed.labels[:, 1:] >= 0).all() and (parsed.labels[:, 1:] <= 1).all()


@pytest.mark.parametrize('content,status,message', [
    ('0 0.5 0.5 0.2\n', 'corrupt', 'line 1 has 4 columns, expected 5'),
    ('0 0.5 0.5 0.2 0.2\nfoo bar\n', 'corrupt', 'line 2 has 2 columns'),
    ('0 a 0.5 0.2 0.2\n', 'corrupt', 'unreadable labels'),
    (b'\xff\xfe\x00garbage', 'corrupt', 'unreadable labels'),
    ('', 'empty', None),
    ('\n  \n', 'empty', None),
])
def test_unusable_files(tmp_path: Path, content, status: str, message) -> None:
    parsed = read_label_file(_write(tmp_path, content))
    assert parsed.status == status and len(parsed.labels) == 0
    if message:
        assert any(message in m for m in parsed.messages)


def test_missing_file_is_a_background(tmp_path: Path) -> None:
    parsed = read_label_file(tmp_path / 'none.txt')
    assert parsed.status == 'missing' and parsed.labels.shape == (0, 5)


@pytest.mark.skipif(not (SHARED / 'data' / 'coco128').is_dir(), reason='../shared/data/coco128 not found')
def test_coco128_labels_and_segments_read_clean() -> None:
    root = SHARED / 'data' / 'coco128'
    files = sorted((root / 'labels' / 'train2017').glob('*.txt'))
    parsed = [read_label_file(f, nc=80) for f in files]
    assert len(parsed) == 126 and all(p.status == 'found' and not p.messages for p in parsed)
    polygons = [read_label_file(f) for f in sorted((root / 'segments' / 'train2017').glob('*.txt'))]
    assert len(polygons) == 100
    assert all(not p.messages and len(p.segments) == len(p.labels) for p in polygons)
    assert [p.status for p in polygons].count('empty') == 2  # the two background images
