"""The synthetic data set generator: layout, label format, exact boxes, determinism, easy/hard mix and the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data.synthetic import CLASS_NAMES, generate_dataset, main, render_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    """n=20, 256 px, val fraction 0.25, seed 0, 3 classes."""
    out = tmp_path_factory.mktemp('synthetic') / 'ds'
    generate_dataset(out, 20)
    return out


def read_labels(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out.glob('labels/*/*.txt'))}


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Normalised cx, cy, w, h of the pixels of mask, pixel i covering [i, i + 1)."""
    h, w = mask.shape
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return np.array([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])


def test_layout_and_counts(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ['data.yaml', 'images', 'labels', 'train.txt', 'val.txt']
    lists = {split: (dataset / f'{split}.txt').read_text().splitlines() for split in ('train', 'val')}
    assert (len(lists['train']), len(lists['val'])) == (15, 5)
    for split, entries in lists.items():
        assert all(e.startswith(f'./images/{split}/') and e.endswith('.jpg') for e in entries)
        assert sorted(p.name for p in (dataset / 'images' / split).iterdir()) == sorted(Path(e).name for e in entries)
        for entry in entries:
            image = cv2.imread(str(dataset / entry))
            assert image is not None and max(image.shape[:2]) == 256 and min(image.shape[:2]) >= 192
            assert (dataset / 'labels' / split / Path(entry).with_suffix('.txt').name).is_file()
    assert len(list(dataset.glob('labels/*/*.txt'))) == 20


def test_label_format(dataset):
    rows = [line.split() for text in read_labels(dataset).values() for line in text.splitlines()]
    assert len(rows) >= 20
    for row in rows:
        assert len(row) == 5 and row[0] in {'0', '1', '2'}
        assert all(len(v.split('.')[1]) == 6 for v in row[1:])
        cx, cy, w, h = map(float, row[1:])
        assert 0 < w <= 1 and 0 < h <= 1
        assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 - 1e-6 <= 1 and 0 <= cy - h / 2 + 1e-6 and cy + h / 2 - 1e-6 <= 1


def test_labels_are_tight_boxes_of_the_written_shapes(dataset):
    for index in range(20):
        rendered = render_image(0, index)
        (image_path,) = dataset.glob(f'images/*/{index:06d}.jpg')
        images = (cv2.imread(str(image_path)), rendered.image)
        written, drawn = (cv2.blur(im, (5, 5)).astype(np.float32) for im in images)
        assert np.abs(written - drawn).mean() < 3  # the file is this rendering, up to JPEG's loss of pixel noise
        label_path = dataset / 'labels' / image_path.parent.name / f'{index:06d}.txt'
        labels = np.loadtxt(label_path, ndmin=2).reshape(-1, 5)
        assert labels[:, 0].tolist() == rendered.class_ids
        for row, mask, full_area in zip(labels, rendered.masks, rendered.full_areas):
            np.testing.assert_allclose(row[1:], mask_box(mask), atol=1e-6)
            assert mask.sum() >= 0.4 * full_area  # at most 60 % occluded
        if rendered.masks:
            assert np.stack(rendered.masks).sum(0).max() == 1  # each pixel belongs to at most one object


def test_objects_are_drawn_in_their_colour():
    """Inside a visible mask the image is one flat colour plus pixel noise: the mask is what was painted."""
    for index in range(8):
        rendered = render_image(0, index)
        for mask in rendered.masks:
            inside = rendered.image[mask].astype(np.float32)
            assert inside.std(0).max() < 12


def fill_ratios(num_classes: int, indices: range) -> dict[int, list[float]]:
    """Per class, mask area / box area of the objects of easy images (never occluded)."""
    ratios: dict[int, list[float]] = {c: [] for c in range(num_classes)}
    for index in indices:
        rendered = render_image(1, index, 384, num_classes)  # easy shapes of 30-80 px: little pixelation
        if rendered.kind == 'easy':
            for class_id, mask in zip(rendered.class_ids, rendered.masks):
                _, _, w, h = mask_box(mask) * np.array([1, 1, mask.shape[1], mask.shape[0]])
                ratios[class_id].append(mask.sum() / (w * h))
    return ratios


def test_classes_have_distinct_geometry():
    ratios = fill_ratios(5, range(80))
    assert all(len(r) >= 3 for r in ratios.values())
    circle, square, triangle, cross, ring = (np.array(ratios[c]) for c in range(5))
    assert np.all((circle > 0.72) & (circle < 0.86))  # pi / 4
    assert np.all(square > 0.97)
    assert np.all(triangle <= 0.52)  # a triangle fills at most half of its box
    assert np.all((cross > 0.4) & (cross < 0.72))
    assert np.all((ring > 0.4) & (ring < 0.72))


def test_easy_and_hard_images_differ():
    rendered = [render_image(2, index) for index in range(60)]
    kinds = [r.kind for r in rendered]
    assert kinds.count('easy') >= 15 and kinds.count('hard') >= 15
    for r in rendered:
        sides = [mask_box(m)[2:] * r.image.shape[1::-1] for m in r.masks]
        short = min(r.image.shape[:2])
        if r.kind == 'easy':
            assert 1 <= len(r.masks) <= 2 and all(0.05 * short <= max(s) <= 0.22 * short for s in sides)
        elif r.kind == 'hard':
            assert len(r.masks) >= 3 and all(max(s) <= 0.18 * short for s in sides)
        else:
            assert not r.masks
    busy = {kind: np.mean([np.abs(cv2.Laplacian(r.image, cv2.CV_32F)).mean() for r in rendered if r.kind == kind])
            for kind in ('easy', 'hard')}
    assert busy['hard'] > 1.5 * busy['easy']


def test_background_images_get_empty_label_files(tmp_path):
    generate_dataset(tmp_path / 'ds', 120, img_size=64, val_fraction=0.0)
    empty = [name for name, text in read_labels(tmp_path / 'ds').items() if not text]
    assert 1 <= len(empty) <= 10
    assert (tmp_path / 'ds' / 'val.txt').read_text() == ''


def test_same_seed_same_output_other_seed_differs(tmp_path, dataset):
    generate_dataset(tmp_path / 'again', 20)
    generate_dataset(tmp_path / 'other', 20, seed=1)
    assert read_labels(tmp_path / 'again') == read_labels(dataset)
    for name in ('train.txt', 'val.txt'):
        assert (tmp_path / 'again' / name).read_bytes() == (dataset / name).read_bytes()
    assert read_labels(tmp_path / 'other') != read_labels(dataset)


def test_first_images_do_not_depend_on_n(tmp_path, dataset):
    generate_dataset(tmp_path / 'small', 7)
    small = read_labels(tmp_path / 'small')
    assert small == {name: text for name, text in read_labels(dataset).items() if name in small}
    for split in ('train', 'val'):
        entries = (tmp_path / 'small' / f'{split}.txt').read_text().splitlines()
        assert entries == (dataset / f'{split}.txt').read_text().splitlines()[:len(entries)]


def test_data_yaml(dataset):
    text = (dataset / 'data.yaml').read_text()
    assert text.splitlines()[0].startswith('# generated by utils.synthetic') and '--seed 0' in text
    data = yaml.safe_load(text)
    assert data['nc'] == 3 and data['names'] == list(CLASS_NAMES[:3])
    assert (dataset / data['train']).is_file() and (dataset / data['val']).is_file()


def test_regenerating_over_own_output_replaces_it(tmp_path):
    out = tmp_path / 'ds'
    assert main(['--out', str(out), '--n', '8', '--img', '64']) == 0
    assert main(['--out', str(out), '--n', '4', '--img', '64', '--classes', '5']) == 0
    assert len(list(out.glob('images/*/*.jpg'))) == 4 and len(list(out.glob('labels/*/*.txt'))) == 4
    assert yaml.safe_load((out / 'data.yaml').read_text())['nc'] == 5


@pytest.mark.parametrize('args', [
    ['--n', '0'], ['--n', 'many'], ['--img', '32'], ['--classes', '0'], ['--classes', '6'],
    ['--val-fraction', '1'], ['--val-fraction', '-0.1'], ['--seed', '-1'], ['--bogus'], 'no-out',
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args):
    argv = ['--n', '3'] if args == 'no-out' else ['--out', str(tmp_path / 'ds'), '--n', '3', *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('synthetic: error:')
    assert not (tmp_path / 'ds').exists()


def test_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('mine')
    assert main(['--out', str(tmp_path), '--n', '2']) == 2
    assert 'not made by utils.synthetic' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_module_entry_point(tmp_path):
    ok = subprocess.run([sys.executable, '-m', 'utils.data.synthetic', '--out', str(tmp_path / 'ds'), '--n', '3',
                         '--img', '64'], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and '3 train + 0 val images' in ok.stderr
    bad = subprocess.run([sys.executable, '-m', 'utils.data.synthetic', '--out', str(tmp_path / 'x'), '--n', '-5'],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and 'Traceback' not in bad.stderr
