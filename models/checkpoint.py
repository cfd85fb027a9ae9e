"""Reading and writing checkpoints safely (the reference's train_step1.py checkpoints).

Files are read with `torch.load(..., weights_only=True)`: nothing but tensors, numbers, strings and plain
containers is ever unpickled. The one exception the reference's own training checkpoints need — numpy arrays
such as `best_fitness` — is allow-listed by name; no other class is.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from utils.errors import UserError

from .detect import IDetect

COPY_CHUNK = 16 << 20  # bytes per read when copying a checkpoint file


class CheckpointError(UserError, ValueError):
    """A file that is not a usable checkpoint, or one that does not fit the model; one-line message."""


def _numpy_safe_globals() -> list:
    """numpy's array/scalar reconstruction under both its 1.x (numpy.core) and 2.x (numpy._core) names."""
    core = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed: list = [np.ndarray, np.dtype]
    for fn in (core._reconstruct, core.scalar):
        allowed += [fn, (fn, f'numpy.core.multiarray.{fn.__name__}'), (fn, f'numpy._core.multiarray.{fn.__name__}')]
    allowed += [t for t in vars(np.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return allowed


def _short(e: BaseException) -> str:
    text = str(e).strip()
    m = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
    if m:
        return f'it contains the Python object {m.group(1)}, which is never unpickled'
    return text.splitlines()[0][:200] if text else type(e).__name__


def _torch_load(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if 'numpy' not in str(e):
            raise CheckpointError(f'{path}: refused to load: {_short(e)}') from None
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f'{path}: refused to load: {_short(e)}') from None


def read_checkpoint(path: str | Path, map_location: Any = 'cpu') -> dict:
    """Load a checkpoint dict safely. A bare state_dict is returned as {'model': state_dict}."""
    path = Path(path)
    if not path.is_file():
        what = 'is a folder, not a weights file' if path.is_dir() else 'weights file not found'
        raise CheckpointError(f'{path}: {what}; check the --weight path')
    try:
        ckpt = _torch_load(path, map_location)
    except CheckpointError:
        raise
    except Exception as e:  # torch.load raises many types on foreign bytes; all mean the same to the user
        raise CheckpointError(f'{path}: not a PyTorch checkpoint, or a truncated one (an interrupted copy or '
                              f'download): {_short(e)}') from None
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {'model': ckpt}
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict whose 'model' entry is a state_dict)")
    if not all(isinstance(v, torch.Tensor) for v in ckpt['model'].values()):
        raise CheckpointError(f"{path}: the 'model' entry is not a state_dict of tensors")
    return ckpt


def _examples(keys: list[str], n: int = 3) -> str:
    shown = ', '.join(keys[:n])
    return f'{len(keys)} ({shown}{", ..." if len(keys) > n else ""})'


def _mismatch_message(name: str, model: nn.Module, state: dict, missing: list[str], unexpected: list[str],
                      reshaped: list[str]) -> str:
    cfg = getattr(model, 'yaml_file', type(model).__name__)
    parts = []
    if missing:
        parts.append(f'missing {_examples(missing)}')
    if unexpected:
        parts.append(f'unexpected {_examples(unexpected)}')
    if reshaped:
        parts.append(f'different shape {_examples(reshaped)}')
    hint = ''
    if missing and all(k.startswith('router.') for k in missing):
        hint = '; it looks like a step-1 checkpoint: train the router with train_step2.py first'
    elif unexpected and all(k.startswith('router.') for k in unexpected):
        hint = '; it looks like a step-2 checkpoint: use the step-2 config'
    elif reshaped and not missing and not unexpected:
        hint = _class_count_hint(model, state, reshaped)
    return f'{name} does not fit {cfg}: ' + '; '.join(parts) + hint


def _class_count_hint(model: nn.Module, state: dict, reshaped: list[str]) -> str:
    """'; it has K classes, the model N: ...' when only the detection layers' output tensors differ."""
    heads = {prefix: m for prefix, m in model.named_modules() if isinstance(m, IDetect)}
    outputs = ('.m.', '.im.')  # output convs and their implicit scales: na·(nc + 5) channels
    if not heads or not all(any(k.startswith(p + o) for p in heads for o in outputs) for k in reshaped):
        return ''
    prefix, head = next(iter(heads.items()))
    classes = state[f'{prefix}.m.0.weight'].shape[0] // head.na - 5
    return (f'; the checkpoint detects {classes} classes, the model {head.nc}: give the number it was trained '
            f'for (nc in the data YAML, --num-classes for detect.py)')


def load_weights(model: nn.Module, weights: str | Path | dict, strict: bool = True, entry: str = 'model',
                 exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy a checkpoint's `entry` state_dict into `model` (cast to the model's dtypes); returns loaded keys.

    strict: every key and shape must match, else CheckpointError naming both files and the first mismatches.
    Not strict: the name/shape intersection is loaded (keys containing any `exclude` substring are skipped).
    """
    ckpt = weights if isinstance(weights, dict) else read_checkpoint(weights)
    name = str(weights) if not isinstance(weights, dict) else '<checkpoint>'
    state = ckpt.get(entry) if isinstance(ckpt.get(entry), dict) else None
    if state is None:
        raise CheckpointError(f'{name}: no {entry!r} state_dict in this checkpoint')
    own = model.state_dict()
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        reshaped = [k for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or reshaped:
            raise CheckpointError(_mismatch_message(name, model, state, missing, unexpected, reshaped))
        keys = list(own)
    else:
        keys = [k for k in own if k in state and own[k].shape == state[k].shape
                and not any(x in k for x in exclude)]
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in keys}, strict=strict)
    return keys


def half_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with floating tensors in fp16 (the released checkpoint format)."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in model.state_dict().items()}


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """torch.save atomically: write a temporary file beside `path`, fsync, then rename over it."""
    _write_atomically(path, lambda f: torch.save(ckpt, f))


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """Copy a saved checkpoint file to `path` atomically (a byte copy: no second serialisation)."""
    with open(source, 'rb') as src:
        _write_atomically(path, lambda f: shutil.copyfileobj(src, f, COPY_CHUNK))


def _write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
