"""Data YAMLs and image lists (the reference's utils/datasets.py): path resolution, names/nc checks, list rules,
one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from utils.data.data_config import DataConfigError, list_image_files, load_data_config
from utils.data.synthetic import generate_dataset
from utils.datasets import LoadImagesAndLabels


def _yaml(tmp_path: Path, text: str, name: str = 'data.yaml') -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'x')


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataConfigError) as info:
        load_data_config(path, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    return message


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_dir = tmp_path / 'cfg'
    _touch(cfg_dir / 'train.txt', cfg_dir / 'sub' / 'val.txt')
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    cfg = load_data_config(_yaml(cfg_dir, 'train: train.txt\nval: sub/val.txt\nnc: 2\nnames: [a, b]\n'))
    assert cfg['train'] == [str(cfg_dir / 'train.txt')] and cfg['val'] == [str(cfg_dir / 'sub' / 'val.txt')]
    assert 'test' not in cfg or not cfg['test']
    assert cfg['nc'] == 2 and cfg['names'] == ['a', 'b']


def test_a_relative_yaml_path_is_not_joined_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path / 'd' / 'sets' / 'train.txt', tmp_path / 'd' / 'sets' / 'val.txt')
    monkeypatch.chdir(tmp_path)
    _yaml(tmp_path / 'd' / 'sets', 'train: train.txt\nval: val.txt\nnc: 1\n')
    cfg = load_data_config(Path('d/sets/data.yaml'))  # relative to the working directory
    assert cfg['train'] == [str(tmp_path / 'd' / 'sets' / 'train.txt')]


def test_path_key_and_lists_of_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / 'datasets' / 'x'
    _touch(base / 'a.txt', base / 'b.txt', base / 'v.txt', tmp_path / 'abs.txt')
    (base / 'images').mkdir()
    monkeypatch.chdir(tmp_path / 'datasets')
    text = (f'path: ../datasets/x\ntrain: [a.txt, b.txt, {tmp_path / "abs.txt"}]\nval: images\ntest: v.txt\n'
            'names: {1: car, 0: person}\n')
    cfg = load_data_config(_yaml(tmp_path / 'cfg', text))  # `path` relative to the YAML folder
    assert cfg['train'] == [str(base / 'a.txt'), str(base / 'b.txt'), str(tmp_path / 'abs.txt')]
    assert cfg['val'] == [str(base / 'images')] and cfg['test'] == [str(base / 'v.txt')]
    assert cfg['names'] == ['person', 'car'] and cfg['nc'] == 2  # dict form, by key; nc from names


def test_working_directory_is_the_fallback_for_reference_yamls(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path / 'coco' / 'train.txt')
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config(_yaml(tmp_path / 'data', 'train: ./coco/train.txt\nval: ./coco/missing.txt\nnc: 1\n'))
    assert cfg['train'] == [str(tmp_path / 'coco' / 'train.txt')]
    assert cfg['val'] == [str(tmp_path / 'data' / 'coco' / 'missing.txt')]  # nowhere: named against the YAML
    assert cfg['names'] == ['0']


@pytest.mark.parametrize('text,expected', [
    ('train: t.txt\nval: v.txt\nnc: 3\nnames: [a, b]\n', '`nc` is 3 but `names` has 2 entries'),
    ('train: t.txt\nval: v.txt\n', 'has neither `nc` nor `names`'),
    ('train: t.txt\nval: v.txt\nnc: 0\n', '`nc` must be a positive integer, got 0'),
    ('train: t.txt\nval: v.txt\nnc: two\n', "`nc` must be a positive integer, got 'two'"),
    ('val: v.txt\nnc: 1\n', 'missing train; add `train:'),
    ('train: t.txt\nnc: 1\n', 'missing val; add `val:'),
    ('nc: 1\n', 'missing train, val'),
    ('train: t.txt\nval: ""\nnc: 1\n', 'missing val'),
    ('- train\n- val\n', 'a data config (train/val/nc/names) must be a mapping of keys, got list'),
    ('', 'got NoneType'),
    ('train: [t.txt\nval: v.txt\n', 'not valid YAML for a data config'),
])
def test_bad_yaml_is_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = _yaml(tmp_path, text, 'mydata.yaml')
    message = _error(path)
    assert message.startswith(str(path)) and expected in message


def test_required_splits_can_be_narrowed(tmp_path: Path) -> None:
    path = _yaml(tmp_path, 'val: v.txt\nnc: 1\n')
    assert load_data_config(path, required=('val',))['val'] == [str(tmp_path / 'v.txt')]


def test_missing_yaml_file(tmp_path: Path) -> None:
    message = _error(tmp_path / 'nope.yaml')
    assert str(tmp_path / 'nope.yaml') in message and 'not found' in message
    assert 'not found' in _error(tmp_path)  # a folder is not a YAML file


def test_list_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lists = tmp_path / 'lists'
    lists.mkdir()
    monkeypatch.chdir(tmp_path)
    lst = lists / 'train.txt'
    lst.write_text('./img/b.JPG\r\n\n  ./img/a.png  \nimg/c.jpeg\n./img/notes.txt\n./img/d.mp4\n./img/noext\n'
                   '/abs/e.webp\n./img/sub/.f.TIFF\n')
    assert list_image_files(str(lst)) == sorted([  # './' → the list's folder; other relative lines stay as they are
        f'{lists}/img/b.JPG', f'{lists}/img/a.png', 'img/c.jpeg', '/abs/e.webp', f'{lists}/img/sub/.f.TIFF'])


def test_folders_are_searched_recursively_and_mixed_with_lists(tmp_path: Path) -> None:
    folder = tmp_path / 'images'
    names = ['z.jpg', 'A.PNG', 'deep/er/m.Bmp', 'deep/y.dng', 'skip.txt', 'skip.mov', 'deep/noext']
    _touch(*(folder / n for n in names))
    lst = tmp_path / 'extra.txt'
    lst.write_text('./more/k.jpg\n')
    got = list_image_files([str(folder), str(lst)])
    expected = [str(folder / n) for n in ['z.jpg', 'A.PNG', 'deep/er/m.Bmp', 'deep/y.dng']]
    assert got == sorted(expected + [str(tmp_path / 'more' / 'k.jpg')])
    assert got.index(str(folder / 'A.PNG')) < got.index(str(folder / 'deep/er/m.Bmp'))  # plain string order


def test_list_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError) as info:
        list_image_files([str(tmp_path / 'gone.txt')])
    assert str(tmp_path / 'gone.txt') in str(info.value) and 'does not exist' in str(info.value)
    empty = tmp_path / 'empty'
    _touch(empty / 'readme.md')
    with pytest.raises(DataConfigError) as info:
        list_image_files(str(empty))
    assert 'no images found' in str(info.value) and str(empty) in str(info.value)
    assert '\n' not in str(info.value)


def test_errors_print_as_one_line_from_a_fresh_interpreter(tmp_path: Path) -> None:
    path = _yaml(tmp_path, 'train: t.txt\nval: v.txt\nnc: 3\nnames: [a, b]\n')
    code = ('import sys\nfrom utils.data.data_config import DataConfigError, load_data_config\n'
            'try:\n    load_data_config(sys.argv[1])\nexcept DataConfigError as e:\n    print(e)\n')
    out = subprocess.run([sys.executable, '-c', code, str(path)], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, 'PYTHONPATH': str(ROOT)}).stdout
    assert out == f'{path}: `nc` is 3 but `names` has 2 entries; make them agree\n'


def test_synthetic_dataset_through_yaml_and_dataset(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / 'syn', n=8, img_size=64, val_fraction=0.25, seed=0, num_classes=3)
    cfg = load_data_config(data)
    assert cfg['nc'] == 3 and len(cfg['names']) == 3
    train = list_image_files(cfg['train'])
    val = list_image_files(cfg['val'])
    assert len(train) + len(val) == 8 and not set(train) & set(val)
    ds = LoadImagesAndLabels(cfg['train'], img_size=64, batch_size=2, nc=cfg['nc'])
    assert ds.img_files == train and sum(ds.scan_counts.values()) == len(train)
    assert ds.scan_counts['corrupt'] == 0 and ds.scan_counts['missing'] == 0
    assert all(len(x) for x in ds.labels) == (ds.scan_counts['empty'] == 0)
