"""Run an exported dynamic model (export.py's three graphs) with per-image routing, as Model's eval forward does.

    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml')            # ONNX via onnxruntime
    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml', 'torchscript')
    detections, easy = runner(images)   # float (B, 3, H, W) in [0, 1] → (B, N, nc+5), bool (B,)
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from .export import PARTS, ExportError, input_names

__all__ = ['ExportError', 'ExportedDynamicModel']  # ExportError lives in models.export, which cannot import this


def _onnx_session(path: Path) -> Callable:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError('onnxruntime is not installed: pip install onnxruntime (or use backend="torchscript")') \
            from None
    session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
    names = [i.name for i in session.get_inputs()]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))
    return run


def _torchscript_module(path: Path) -> Callable:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # TorchScript is deprecated upstream; it still runs
        module = torch.jit.load(str(path), map_location='cpu')

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(a) for a in arrays])
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    return run


class ExportedDynamicModel:
    """Part 1 on the whole batch; head 1 on the images scoring >= dy_thres, backbone 2 + head 2 on the others."""

    def __init__(self, manifest: str | Path, backend: str = 'onnx', dy_thres: float | None = None) -> None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise ExportError(f'{manifest}: no such export manifest; run export.py first')
        spec = yaml.safe_load(manifest.read_text())
        self.spec = spec
        self.dy_thres = float(spec['dy_thres'] if dy_thres is None else dy_thres)
        suffix = '' if backend == 'onnx' else '_torchscript'
        if backend not in ('onnx', 'torchscript'):
            raise ExportError(f'backend must be onnx or torchscript, got {backend!r}')
        load = _onnx_session if backend == 'onnx' else _torchscript_module
        self.parts = {}
        for part in PARTS:
            name = spec['files'].get(part + suffix)
            if not name or not (manifest.parent / name).is_file():
                raise ExportError(f'{manifest}: no {backend} file for {part}; export with --include {backend}')
            self.parts[part] = load(manifest.parent / name)
        self.features = list(spec['features'])

    def __call__(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(decoded detections (B, N, nc+5), easy mask (B,)) for a float batch (B, 3, H, W)."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        x = np.ascontiguousarray(x, dtype=np.float32)
        score, *feats = self.parts['part1'](x)
        by_index = dict(zip(self.features, feats))
        easy = score[:, 0] >= self.dy_thres
        outputs = {}
        for part, mask in (('easy', easy), ('hard', ~easy)):
            if mask.any():
                idx = np.nonzero(mask)[0]
                names = input_names(part, self.spec['easy_features'], self.spec['hard_features'])
                arrays = [x[idx] if n == 'images' else by_index[int(n[1:])][idx] for n in names]
                outputs[part] = (idx, self.parts[part](*arrays)[0])
        first = next(iter(outputs.values()))[1]
        decoded = np.empty((x.shape[0], *first.shape[1:]), dtype=first.dtype)
        for idx, out in outputs.values():
            decoded[idx] = out
        return decoded, easy

