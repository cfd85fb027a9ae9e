"""Dirty dataset inputs (issue 3, the reference's utils/datasets.py): every bad image or label is warned about by name
with a reason and
skipped or repaired, the summary line counts them, loading never crashes (workers included), nothing but the
label cache is written, and the cache is pickle-free, atomic, rebuilt when stale and optional when unwritable."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import utils.data.label_cache as label_cache
from tests.helpers import random_image
from utils.data.label_cache import CACHE_VERSION, DatasetError, scan_one
from utils.data.labels import read_label_file
from utils.datasets import LoadImagesAndLabels

NC = 3
GOOD = '0 0.5 0.5 0.2 0.2\n1 0.25 0.75 0.1 0.3\n'


def _label(root: Path, stem: str, text: str) -> Path:
    path = root / 'labels' / 'train' / f'{stem}.txt'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob('*')}


def _messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def _summary(caplog: pytest.LogCaptureFixture) -> str:
    lines = [m for m in _messages(caplog, logging.INFO) if 'images and labels...' in m]
    assert len(lines) == 1, lines
    return lines[0]


def _dirty_dataset(root: Path) -> tuple[Path, dict[str, Path]]:
    """One image per problem under root/images/train, labels under root/labels/train, list root/train.txt."""
    img = root / 'images' / 'train'
    paths = {name: img / f'{name}.jpg' for name in
             ('good', 'trunc', 'zero', 'text', 'columns', 'classes', 'coords', 'dups', 'empty', 'missing',
              'absent', 'tiny')}
    paths['png'] = img / 'png.png'
    for i, name in enumerate(('good', 'columns', 'classes', 'coords', 'dups', 'empty', 'missing', 'png')):
        random_image(paths[name], seed=i)
    data = random_image(paths['trunc']).read_bytes()
    paths['trunc'].write_bytes(data[:len(data) // 2])
    paths['zero'].write_bytes(b'')
    paths['text'].write_text('this is not a JPEG\n')
    random_image(paths['tiny'], w=8, h=8)
    for name in ('good', 'trunc', 'zero', 'text', 'absent', 'tiny', 'png'):
        _label(root, name, GOOD)
    _label(root, 'columns', '0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n')
    _label(root, 'classes', '3 0.5 0.5 0.2 0.2\n-1 0.5 0.5 0.2 0.2\n2 0.4 0.4 0.2 0.2\n')
    _label(root, 'coords', '0 1.005 0.5 0.2 0.2\n1 0.5 1.8 0.2 0.2\n2 -0.004 0.5 0.1 0.1\n')
    _label(root, 'dups', '1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.1 0.1\n')
    _label(root, 'empty', '')
    # a shuffled list: './' lines are relative to the list's folder; 'absent' is listed but does not exist
    lines = [f'./images/train/{p.name}' for p in paths.values()][::-1]
    lst = root / 'train.txt'
    lst.write_text('\n'.join(lines) + '\n')
    return lst, paths


@pytest.fixture
def dirty(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    return _dirty_dataset(tmp_path / 'data')


def test_dirty_split_skips_repairs_and_counts(dirty: tuple[Path, dict[str, Path]],
                                              caplog: pytest.LogCaptureFixture) -> None:
    lst, paths = dirty
    root = lst.parent
    before = _tree(root)
    caplog.set_level(logging.INFO)
    ds = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)

    kept = ['classes', 'coords', 'dups', 'empty', 'good', 'missing', 'png']
    assert ds.img_files == [str(paths[k]) for k in kept]  # sorted, corrupt ones dropped
    labels = dict(zip(kept, ds.labels))
    np.testing.assert_allclose(labels['good'], [[0, .5, .5, .2, .2], [1, .25, .75, .1, .3]], atol=1e-6)
    np.testing.assert_allclose(labels['png'], labels['good'])
    np.testing.assert_allclose(labels['classes'], [[2, .4, .4, .2, .2]], atol=1e-6)
    np.testing.assert_allclose(labels['coords'], [[0, 1, .5, .2, .2], [2, 0, .5, .1, .1]], atol=1e-6)
    np.testing.assert_allclose(labels['dups'], [[1, .5, .5, .2, .2], [0, .3, .3, .1, .1]], atol=1e-6)
    assert labels['empty'].shape == labels['missing'].shape == (0, 5)
    np.testing.assert_array_equal(ds.shapes, [[64, 48]] * len(kept))
    assert ds.scan_counts == {'found': 5, 'missing': 1, 'empty': 1, 'corrupt': 6}
    assert _summary(caplog).endswith('5 found, 1 missing, 1 empty, 6 corrupt')

    warnings = _messages(caplog)
    label = root / 'labels' / 'train'
    expected = {
        paths['trunc']: 'truncated JPEG', paths['zero']: 'zero-byte file', paths['text']: 'not a readable image',
        paths['columns']: 'line 2 has 4 columns, expected 5', paths['absent']: 'image not found',
        paths['tiny']: 'image size 8x8 is below 10 px',
        label / 'classes.txt': 'dropped 2 rows with class ids outside 0..2: [-1.0, 3.0]',
        label / 'coords.txt': 'dropped 1 rows with coordinates far outside [0, 1]',
        label / 'dups.txt': 'removed 1 duplicate rows', label / 'missing.txt': 'no label file'}
    for path, reason in expected.items():
        assert any(str(path) in m and reason in m for m in warnings), (path, reason, warnings)
    assert any(str(label / 'coords.txt') in m and 'clipped 2 rows slightly outside' in m for m in warnings)
    assert not any(str(paths[k]) in m for k in ('good', 'png') for m in warnings)
    assert not any(str(label / 'empty.txt') in m for m in warnings)  # a background image: counted, no warning
    assert all('\n' not in m for m in warnings)

    for i in range(len(ds)):
        img, targets, path, _ = ds[i]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
        assert path == ds.img_files[i] and len(targets) == len(ds.labels[i])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=LoadImagesAndLabels.collate_fn)
    seen, rows = [], 0
    for imgs, targets, batch_paths, _ in loader:
        assert imgs.shape[1:] == (3, 64, 64)
        seen += batch_paths
        rows += len(targets)
    assert seen == ds.img_files and rows == 2 + 1 + 2 + 2 + 2  # good, classes, coords, dups, png

    assert _tree(root) - before == {'train.cache'} and before <= _tree(root)


def test_cache_is_pickle_free_reused_and_rebuilt_when_a_label_changes(dirty: tuple[Path, dict[str, Path]],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    lst, paths = dirty
    cache = lst.with_suffix('.cache')
    caplog.set_level(logging.INFO)
    first = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    with np.load(cache, allow_pickle=False) as z:
        assert str(z['version']) == CACHE_VERSION
        assert z['files'].tolist() == first.img_files
    assert not [p for p in cache.parent.iterdir() if p.suffix == '.tmp']

    caplog.clear()
    again = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    summary = _summary(caplog)
    assert summary.startswith('Scanned cache') and summary.endswith('5 found, 1 missing, 1 empty, 6 corrupt')
    assert again.img_files == first.img_files
    for a, b in zip(again.labels, first.labels):
        np.testing.assert_array_equal(a, b)
    assert any('truncated JPEG' in m for m in _messages(caplog))  # warnings are repeated from the cache

    good = Path(str(paths['good']).replace('/images/', '/labels/')).with_suffix('.txt')
    good.write_text('2 0.1 0.2 0.05 0.05\n')  # also a different size; bump the time as well
    os.utime(good, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns + 10**9))
    caplog.clear()
    edited = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    assert _summary(caplog).startswith('Scanning')
    np.testing.assert_allclose(edited.labels[edited.img_files.index(str(paths['good']))],
                               [[2, .1, .2, .05, .05]], atol=1e-6)

    caplog.clear()
    LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=2)  # other nc: other class checks, rebuild
    summary = _summary(caplog)
    assert summary.startswith('Scanning') and summary.endswith('3 found, 1 missing, 3 empty, 6 corrupt')


def _rewrite_version(cache: Path, version: str) -> None:
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays['version'] = np.array(version)
    with open(cache, 'wb') as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize('damage', ['stale version', 'truncated', 'torch pickle', 'garbage'])
def test_bad_cache_is_rebuilt(dirty: tuple[Path, dict[str, Path]], caplog: pytest.LogCaptureFixture,
                              damage: str) -> None:
    lst, _ = dirty
    cache = lst.with_suffix('.cache')
    first = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    if damage == 'stale version':
        _rewrite_version(cache, '0.1')
    elif damage == 'truncated':
        cache.write_bytes(cache.read_bytes()[:200])
    elif damage == 'torch pickle':  # what the reference writes
        torch.save({'version': 0.1, 'hash': 0, 'results': (1, 0, 0, 0, 1)}, cache)
    else:
        cache.write_bytes(b'\x00' * 50)
    caplog.set_level(logging.INFO)
    caplog.clear()  # the first scan's line, when INFO was already on (pytest 7 keeps levels set by other tests)
    again = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    assert _summary(caplog).startswith('Scanning')
    assert again.img_files == first.img_files
    with np.load(cache, allow_pickle=False) as z:
        assert str(z['version']) == CACHE_VERSION


def _refuse(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, 'Permission denied')


@pytest.mark.parametrize('failing', ['folder', 'rename'])
def test_unwritable_cache_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    root = tmp_path / 'data'
    for i in range(3):
        random_image(root / 'images' / 'train' / f'{i}.jpg', seed=i)
        _label(root, str(i), GOOD)
    lists = tmp_path / 'lists'
    lists.mkdir()
    lst = lists / 'train.txt'
    lst.write_text(''.join(f'{root}/images/train/{i}.jpg\n' for i in range(3)))
    if failing == 'rename':
        monkeypatch.setattr(label_cache.os, 'replace', _refuse)
    elif os.geteuid() == 0:  # root writes into read-only folders
        monkeypatch.setattr(label_cache.tempfile, 'mkstemp', _refuse)
    else:
        lists.chmod(0o555)
    caplog.set_level(logging.INFO)
    try:
        ds = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    finally:
        lists.chmod(0o755)
    assert len(ds) == 3 and _summary(caplog).endswith('3 found, 0 missing, 0 empty, 0 corrupt')
    assert any('cache not saved' in m for m in _messages(caplog))
    assert sorted(p.name for p in lists.iterdir()) == ['train.txt']  # no cache, no temp file left behind
    assert len(ds[2][1]) == 2


def test_every_image_corrupt_is_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / 'data'
    (root / 'images').mkdir(parents=True)
    (root / 'images' / 'a.jpg').write_bytes(b'')
    (root / 'images' / 'b.png').write_text('not a png')
    lst = root / 'val.txt'
    lst.write_text('./images/a.jpg\n./images/b.png\n')
    with pytest.raises(DatasetError) as info:
        LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    message = str(info.value)
    assert '\n' not in message and str(lst) in message and 'all 2 are corrupt' in message


def test_training_split_without_labels_is_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / 'data'
    random_image(root / 'images' / 'a.jpg')
    lst = root / 'train.txt'
    lst.write_text('./images/a.jpg\n')
    assert len(LoadImagesAndLabels(str(lst), img_size=64, batch_size=1, nc=NC)) == 1  # evaluation: background
    with pytest.raises(DatasetError) as info:
        LoadImagesAndLabels(str(lst), img_size=64, batch_size=1, augment=True, hyp={'mosaic': 1.0}, nc=NC)
    assert '\n' not in str(info.value) and 'no labels found' in str(info.value)


def test_folder_split_with_a_directory_named_like_an_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / 'data'
    folder = root / 'images' / 'train'
    random_image(folder / 'a.jpg')
    random_image(folder / 'sub' / 'b.jpg', seed=1)  # folders are searched recursively
    (folder / 'dir.jpg').mkdir()
    _label(root, 'a', GOOD)
    before = _tree(root)
    caplog.set_level(logging.INFO)
    ds = LoadImagesAndLabels(str(folder), img_size=64, batch_size=2, nc=NC)
    assert ds.img_files == [str(folder / 'a.jpg'), str(folder / 'sub' / 'b.jpg')]
    assert any(str(folder / 'dir.jpg') in m and 'not a file' in m for m in _messages(caplog))
    assert _summary(caplog).endswith('1 found, 1 missing, 0 empty, 1 corrupt')
    assert _tree(root) - before == {'labels/train.cache'}  # folder split: <labels dir>.cache


def test_image_deleted_after_scan_is_replaced_by_the_next(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / 'data'
    for i in range(4):
        random_image(root / 'images' / 'train' / f'{i}.jpg', seed=i)
        _label(root, str(i), GOOD)
    lst = root / 'train.txt'
    lst.write_text(''.join(f'./images/train/{i}.jpg\n' for i in range(4)))
    ds = LoadImagesAndLabels(str(lst), img_size=64, batch_size=2, nc=NC)
    gone = root / 'images' / 'train' / '1.jpg'
    gone.unlink()
    (root / 'images' / 'train' / '2.jpg').write_bytes(b'garbage')  # rewritten: cannot be decoded any more
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=LoadImagesAndLabels.collate_fn)
    paths = [p for _, _, batch_paths, _ in loader for p in batch_paths]
    assert [Path(p).name for p in paths] == ['0.jpg', '3.jpg', '3.jpg', '3.jpg']
    caplog.set_level(logging.WARNING)
    assert Path(ds[1][2]).name == '3.jpg'
    assert any(str(gone) in m and 'using the next image instead' in m for m in _messages(caplog))


def test_exif_rotation_swaps_the_scanned_size(tmp_path: Path) -> None:
    path = tmp_path / 'images' / 'r.jpg'
    path.parent.mkdir()
    exif = Image.Exif()
    exif[274] = 6  # rotated 90°
    Image.new('RGB', (40, 20), (200, 10, 10)).save(path, exif=exif)
    _, size, _, status, _ = scan_one(str(path), str(tmp_path / 'labels' / 'r.txt'), NC)
    assert size == (20, 40) and status == 'missing'


@pytest.mark.parametrize('ext', ['png', 'bmp', 'tif', 'webp'])
def test_other_formats_scan(tmp_path: Path, ext: str) -> None:
    path = random_image(tmp_path / f'a.{ext}', w=30, h=20)
    label = tmp_path / 'a.txt'
    label.write_text(GOOD)
    labels, size, _, status, messages = scan_one(str(path), str(label), NC)
    assert (size, status, messages, len(labels)) == ((30, 20), 'found', [], 2)


def test_header_claiming_a_huge_image_is_corrupt_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = random_image(tmp_path / 'a.png', w=64, h=48)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # 64 * 48 > 2 * 100: PIL's decompression-bomb error
    *_, status, messages = scan_one(str(path), str(tmp_path / 'a.txt'), NC)
    assert status == 'corrupt' and str(path) in messages[0] and 'exceeds limit' in messages[0]


def test_unreadable_label_file_is_corrupt_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    label = tmp_path / 'a.txt'
    label.write_text(GOOD)
    read_text = Path.read_text

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        if self == label:
            raise PermissionError(13, 'Permission denied', str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, 'read_text', refuse)
    parsed = read_label_file(label, NC)
    assert parsed.status == 'corrupt' and 'Permission denied' in parsed.messages[0]
    assert len(parsed.labels) == 0


def test_cache_temp_file_is_in_the_cache_folder_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    mkstemp = tempfile.mkstemp

    def spy(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = mkstemp(*args, **kwargs)
        made.append(name)
        return fd, name

    monkeypatch.setattr(label_cache.tempfile, 'mkstemp', spy)
    random_image(tmp_path / 'images' / 'a.jpg')
    lst = tmp_path / 'l.txt'
    lst.write_text('./images/a.jpg\n')
    LoadImagesAndLabels(str(lst), img_size=64, batch_size=1, nc=NC)
    assert len(made) == 1 and Path(made[0]).parent == tmp_path and not Path(made[0]).exists()
    assert (tmp_path / 'l.cache').stat().st_mode & 0o777 == 0o644  # readable by other users, like the list
