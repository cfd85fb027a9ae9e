"""Safe checkpoint loading: the released fp16 format, strict fit, clear one-line errors."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, half_state_dict, load_weights, read_checkpoint, save_checkpoint
from models.yolo import Model
from tests.helpers import cfg_path, fill_by_name, models_json, requires_reference, tiny_config


def _filled(cfg) -> Model:
    model = Model(cfg)
    fill_by_name(model)
    return model.eval()


def _both_paths(model: Model, x: torch.Tensor) -> list[torch.Tensor]:
    """Decoded detections of the hard and the easy path (one shared backbone-1 pass)."""
    with torch.no_grad():
        return [out[0] for out in model.forward_path(x, 'all')]


def _round_trip(model: Model, path: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Save `model` in the released fp16 format, wipe its float entries and load the file back strictly: every
    entry then holds exactly its fp16-rounded value in the model's own dtype (never fp16), and both paths' outputs
    stay within fp16 rounding of the originals. Returns the stored state_dict."""
    state = model.state_dict()
    rounded = {k: v.half().to(v.dtype) if v.is_floating_point() else v.clone() for k, v in state.items()}
    expected = _both_paths(model, x)
    save_checkpoint({'model': half_state_dict(model)}, path)
    with torch.no_grad():
        for v in state.values():
            if v.is_floating_point():
                v.zero_()  # the load below must bring every value back
    ckpt = read_checkpoint(path)
    load_weights(model, ckpt)  # strict by default
    loaded = model.state_dict()
    assert loaded.keys() == rounded.keys()
    for k, v in loaded.items():
        assert v.dtype == rounded[k].dtype and torch.equal(v, rounded[k]), k  # the file holds exactly the fp16 values
    for got, ref in zip(_both_paths(model, x), expected, strict=True):
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=0.5)  # fp16 rounding of the weights
    return ckpt['model']


def test_fp16_round_trip_tiny(tmp_path: Path) -> None:
    _round_trip(_filled(tiny_config()), tmp_path / 'tiny.pt', torch.rand(2, 3, 64, 64))


@requires_reference
def test_fp16_round_trip_released_format(tmp_path: Path) -> None:
    """Dy-YOLOv7 (default initialisation: the values only need fp16 rounding to matter) round-trips through the
    released format: the reference's keys and shapes, every float entry fp16."""
    torch.manual_seed(0)
    model = Model(cfg_path('dy-yolov7-step2')).eval()
    stored = _round_trip(model, tmp_path / 'dy-yolov7.pt', torch.rand(1, 3, 32, 32))
    assert {k: list(v.shape) for k, v in stored.items()} == models_json()['dy-yolov7-step2']['schema']
    assert {v.dtype for v in stored.values()} == {torch.float16, torch.int64}  # int64: BN num_batches_tracked
    assert stored['model_b.0.conv.weight'].dtype == torch.float16


def test_other_config_names_both_and_first_keys(tmp_path: Path) -> None:
    path = tmp_path / 'step1.pt'
    save_checkpoint({'model': half_state_dict(Model(tiny_config(dynamic=False)))}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(Model(tiny_config()), path)
    message = str(info.value)
    assert message.startswith(f'{path} does not fit <dict config>: missing 4 (router.layer1.weight')
    assert 'step-1 checkpoint' in message and '\n' not in message
    other = Model(tiny_config(nc=5))
    with pytest.raises(CheckpointError, match=r'different shape \d+ \(model_h\.8\.anchors|different shape'):
        load_weights(other, path, strict=True)


def test_non_strict_loads_intersection(tmp_path: Path) -> None:
    path = tmp_path / 'step1.pt'
    src = _filled(tiny_config(dynamic=False))
    save_checkpoint({'model': src.state_dict(), 'epoch': 3}, path)
    dst = Model(tiny_config())
    keys = load_weights(dst, path, strict=False, exclude=('anchor',))
    assert not any('router' in k or 'anchor' in k for k in keys)
    assert len(keys) == len(src.state_dict()) - 4
    torch.testing.assert_close(dst.model_b2[0].conv.weight, src.model_b2[0].conv.weight)


def test_bare_state_dict_and_numpy_fitness_are_accepted(tmp_path: Path) -> None:
    model = Model(tiny_config())
    bare = tmp_path / 'bare.pt'
    torch.save(model.state_dict(), bare)
    load_weights(Model(tiny_config()), bare)
    legacy = tmp_path / 'legacy.pt'
    torch.save({'model': half_state_dict(model), 'best_fitness': np.array([0.25]), 'epoch': -1}, legacy)
    assert float(read_checkpoint(legacy)['best_fitness'][0]) == 0.25


@pytest.mark.parametrize('written_by', ['numpy.core.multiarray', 'numpy._core.multiarray'], ids=['numpy1', 'numpy2'])
def test_numpy_pickled_fitness_is_accepted(tmp_path: Path, written_by: str) -> None:
    """Files written under numpy 1.x name numpy.core.multiarray, under 2.x numpy._core.multiarray; either loads,
    whichever numpy reads it (only those reconstructions are allowed)."""
    here = tmp_path / 'here.pt'
    torch.save({'model': {'w': torch.ones(2)}, 'best_fitness': np.array([0.5])}, here)
    other = tmp_path / 'other.pt'
    with zipfile.ZipFile(here) as src, zipfile.ZipFile(other, 'w', zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith('data.pkl'):
                current = next(n for n in (b'numpy._core.multiarray', b'numpy.core.multiarray') if n in data)
                data = data.replace(current, written_by.encode())
            dst.writestr(item, data)
    assert float(read_checkpoint(other)['best_fitness'][0]) == 0.5


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pt'
    torch.save({'model': {'w': torch.ones(1)}, 'payload': _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match='refused to load'):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize('content,expected', [
    (None, 'weights file not found'),
    (b'', 'not a PyTorch checkpoint'),
    (b'this is not a checkpoint', 'not a PyTorch checkpoint'),
    ('list', "expected a dict whose 'model' entry is a state_dict"),
])
def test_not_a_checkpoint(tmp_path: Path, content, expected: str) -> None:
    path = tmp_path / 'w.pt'
    if content == 'list':
        torch.save([1, 2, 3], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(f'{path}: ') and expected in str(info.value)
    assert '\n' not in str(info.value)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / 'last.pt'
    save_checkpoint({'model': {'w': torch.zeros(1)}, 'epoch': 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError('disk full')

    with pytest.raises(RuntimeError):
        save_checkpoint({'model': {'w': torch.ones(1)}, 'bad': Unsaveable()}, path)
    assert read_checkpoint(path)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']


def test_epoch_copies_and_stripping_from_memory_equal_the_written_checkpoint(tmp_path: Path) -> None:
    """save_epoch serialises last.pt once and byte-copies it to best/epoch files; stripping the checkpoint the
    trainer still holds writes the same file as stripping what is read back from disk."""
    from utils.train.checkpoint import save_epoch, strip_checkpoint, training_checkpoint
    from utils.train.ema import ModelEMA
    model = Model(tiny_config(dynamic=False))
    optimizer = torch.optim.Adam(model.parameters())
    ckpt = training_checkpoint(0, 0.5, 'line', model, ModelEMA(model), optimizer)
    save_epoch(ckpt, tmp_path, epoch=0, epochs=3, is_best=True)
    names = sorted(p.name for p in tmp_path.glob('*.pt'))
    assert names == ['best.pt', 'epoch_000.pt', 'last.pt']
    assert len({(tmp_path / n).read_bytes() for n in names}) == 1
    strip_checkpoint(tmp_path / 'best.pt')
    strip_checkpoint(tmp_path / 'last.pt', ckpt)
    from_disk, from_memory = read_checkpoint(tmp_path / 'best.pt'), read_checkpoint(tmp_path / 'last.pt')
    assert from_disk.keys() == from_memory.keys() and from_memory['epoch'] == -1 and from_memory['optimizer'] is None
    assert all(torch.equal(v, from_disk['model'][k]) for k, v in from_memory['model'].items())
    assert ckpt['epoch'] == 0 and ckpt['optimizer'] is not None  # the held checkpoint is left as it was
