"""Data YAML reading and image-list resolution (the reference's utils/datasets.py).

A data YAML names `train`, `val` and optionally `test` (each a txt list of image paths, a directory, or a list of
either), `nc` and `names`. Relative paths resolve against the YAML's `path` key when present, else the YAML's own
folder; the reference resolved them against the working directory, so that is tried last for YAMLs written for it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from utils.data.labels import IMG_FORMATS
from utils.errors import UserError
from utils.yaml_io import read_yaml_mapping

LOGGER = logging.getLogger(__name__)
SPLITS = ('train', 'val', 'test')


class DataConfigError(UserError, ValueError):
    """A data YAML or image list that cannot be used; the message is one line naming the file and the fix."""


def _resolve(entry: str, base: Path) -> str:
    if str(entry).startswith('wandb-artifact://'):  # a W&B dataset artifact, downloaded by training (wandb_logging)
        return str(entry)
    p = Path(os.path.expanduser(str(entry)))
    if p.is_absolute():
        return str(p)
    for root in (base, Path.cwd()):
        if (root / p).exists():
            return str((root / p).resolve())
    return str((base / p).resolve())


def _check_names(cfg: dict, path: Path) -> None:
    names = cfg.get('names')
    if isinstance(names, dict):  # {0: person, ...}: newer YOLO YAMLs
        names = [names[k] for k in sorted(names)]
        cfg['names'] = names
    if names is not None and not isinstance(names, list):
        raise DataConfigError(f'{path}: `names` must be a list of class names (or a mapping from class id), '
                              f'got {names!r}')
    if 'nc' not in cfg and names is not None:
        cfg['nc'] = len(names)
    if 'nc' not in cfg:
        raise DataConfigError(f'{path}: has neither `nc` nor `names`; add `nc: <number of classes>` and `names: [...]`')
    if not isinstance(cfg['nc'], int) or cfg['nc'] < 1:
        raise DataConfigError(f'{path}: `nc` must be a positive integer, got {cfg["nc"]!r}')
    if names is None:
        cfg['names'] = [str(i) for i in range(cfg['nc'])]
    elif len(names) != cfg['nc']:
        raise DataConfigError(f'{path}: `nc` is {cfg["nc"]} but `names` has {len(names)} entries; make them agree')


def load_data_config(path: str | Path, required: tuple[str, ...] = ('train', 'val')) -> dict:
    """Read a data YAML: check its keys, resolve split paths to absolute strings (a list per split)."""
    path = Path(path)
    cfg = read_yaml_mapping(path, DataConfigError, 'a data config (train/val/nc/names)',
                            f'data YAML {path} not found; pass --data with the path of an existing YAML file')
    missing = [k for k in required if not cfg.get(k)]
    if missing:
        raise DataConfigError(f'{path}: missing {", ".join(missing)}; add `{missing[0]}: <txt list, image folder '
                              f'or list of them>`')
    _check_names(cfg, path)
    base = path.parent
    if cfg.get('path'):  # a relative `path:` is relative to the YAML's folder
        base = path.parent / Path(os.path.expanduser(str(cfg['path'])))
    for split in SPLITS:
        if cfg.get(split):
            entries = cfg[split] if isinstance(cfg[split], (list, tuple)) else [cfg[split]]
            cfg[split] = [_resolve(e, base) for e in entries]
    return cfg


def _hidden(relative: Path) -> bool:
    return any(part.startswith('.') for part in relative.parts)


def _read_list(txt: Path) -> list[str]:
    if txt.suffix[1:].lower() in IMG_FORMATS:  # one image given as the split
        return [str(txt)]
    folder = str(txt.parent) + os.sep
    files = []
    try:  # utf-8-sig: a byte-order mark (Windows Notepad) is not part of the first path
        text = txt.read_text(encoding='utf-8-sig')
    except UnicodeDecodeError as e:
        raise DataConfigError(f'{txt} is not a UTF-8 text list of image paths ({e.reason} at byte {e.start}); '
                              f'save it as UTF-8, one path per line') from None
    for line in text.splitlines():
        line = line.strip()
        if line:
            # './x' in a list is relative to the list's folder; other relative lines to the working directory
            files.append(line.replace('./', folder, 1) if line.startswith('./') else line)
    return files


def list_image_files(paths: str | list[str]) -> list[str]:
    """Image paths from txt lists, folders (searched recursively) and single images; image extensions only, sorted."""
    files: list[str] = []
    for p in (paths if isinstance(paths, (list, tuple)) else [paths]):
        p = Path(p)
        if p.is_dir():
            # like the reference's glob('**/*.*'): hidden files and folders are not searched
            files += [str(f) for f in p.rglob('*.*') if not _hidden(f.relative_to(p))]
        elif p.is_file():
            files += _read_list(p)
        else:
            raise DataConfigError(f'{p} does not exist; check the split paths in the data YAML')
    listed = [f.replace('/', os.sep) for f in files if f.rsplit('.', 1)[-1].lower() in IMG_FORMATS]
    images = sorted(set(listed))  # the reference's cache (a dict by path) kept each image once too
    if len(images) < len(listed):
        LOGGER.warning(f'WARNING: {len(listed) - len(images)} image paths in {paths} are listed more than once; '
                       f'each image is used once')
    if not images:
        raise DataConfigError(f'no images found in {paths}; expected a txt list of image paths or an image folder '
                              f'({", ".join(IMG_FORMATS)})')
    return images
