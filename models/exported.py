"""Run an exported dynamic model (export.py's three graphs) with per-image routing, as Model's eval forward does.

    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml')            # ONNX via onnxruntime
    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml', 'torchscript')
    runner = ExportedDynamicModel('weights/dy-yolov7_int8_export.yaml', 'openvino')  # export.py --int8
    detections, easy = runner(images)   # float (B, 3, H, W) in [0, 1] → (B, N, nc+5), bool (B,)
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from utils.general import file_digest

from .export import PARTS, ExportError, ExportManifest, input_names
from .openvino_export import OPENVINO_KEY, compile_ir, read_manifest

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


BACKENDS = ('onnx', 'torchscript', 'openvino')


def _file_key(part: str, backend: str) -> str:
    return part + {'onnx': '', 'torchscript': '_torchscript', 'openvino': OPENVINO_KEY}[backend]


def checked_file(manifest_path: Path, manifest: ExportManifest, part: str, backend: str) -> Path:
    """The graph file of `part` for `backend`, its SHA-256 (and its .bin's) checked against the manifest's."""
    name = manifest.files.get(_file_key(part, backend))
    path = manifest_path.parent / name if name else None
    if path is None or not path.is_file():
        raise ExportError(f'{manifest_path}: no {backend} file for {part}; export with --include {backend}')
    for file in [path] + ([path.with_suffix('.bin')] if backend == 'openvino' else []):
        expected = manifest.digests.get(file.name)
        if expected is not None and (not file.is_file() or file_digest(file) != expected):
            raise ExportError(f'{file}: missing or not the file {manifest_path.name} was written with (SHA-256 '
                              'differs); rerun export.py')
    return path


class ExportedDynamicModel:
    """Part 1 on the whole batch; head 1 on the images scoring >= dy_thres, backbone 2 + head 2 on the others.

    backend 'openvino' runs the IRs with OpenVINO's CPU plugin at `precision` ('fp32', or 'bf16' where the CPU has
    it; an int8 manifest's quantized layers run int8 either way) on `threads` threads (0: OpenVINO's choice)."""

    def __init__(self, manifest: str | Path, backend: str = 'onnx', dy_thres: float | None = None,
                 precision: str = 'fp32', threads: int = 0) -> None:
        if backend not in BACKENDS:
            raise ExportError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
        path = Path(manifest)
        self.manifest = read_manifest(path)
        self.dy_thres = float(self.manifest.dy_thres if dy_thres is None else dy_thres)
        if backend == 'openvino':
            load = partial(compile_ir, precision=precision, threads=threads)
        else:
            load = _onnx_session if backend == 'onnx' else _torchscript_module
        self.parts = {part: load(checked_file(path, self.manifest, part, backend)) for part in PARTS}
        self.features = list(self.manifest.features)
        # graphs exported with --static-batch take exactly `batch` images: smaller batches (a head's share of a routed
        # batch) are padded to it and cut back; traced TorchScript keeps a free batch axis either way
        fixed_batch = backend != 'torchscript' and not self.manifest.dynamic_batch
        self.static_batch = int(self.manifest.batch) if fixed_batch else 0

    @property
    def spec(self) -> dict:
        """The manifest as a plain dict (as written to YAML)."""
        return asdict(self.manifest)

    def scores_and_features(self, x: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Part 1 on a float32 batch: router scores (B,) and the backbone-1 features by layer index."""
        score, *feats = self._run('part1', [x])
        return score[:, 0], dict(zip(self.features, feats))

    def head(self, part: str, x: np.ndarray, by_index: dict[int, np.ndarray], idx: np.ndarray) -> np.ndarray:
        """Decoded detections of the images `idx` through 'easy' (head 1) or 'hard' (backbone 2 + head 2)."""
        names = input_names(part, self.manifest.easy_features, self.manifest.hard_features)
        return self._run(part, [x[idx] if n == 'images' else by_index[int(n[1:])][idx] for n in names])[0]

    def _run(self, part: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One graph on `arrays` (same batch), padded with zero images to a static batch and cut back."""
        n = len(arrays[0])
        if self.static_batch and n != self.static_batch:
            if n > self.static_batch:
                raise ExportError(f'a batch of {n} images: these graphs were exported with --static-batch for '
                                  f'batches of at most {self.static_batch}; split the batch or re-export')
            arrays = [np.concatenate((a, np.zeros((self.static_batch - n, *a.shape[1:]), a.dtype))) for a in arrays]
            return [out[:n] for out in self.parts[part](*arrays)]
        return self.parts[part](*arrays)

    def __call__(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(decoded detections (B, N, nc+5), easy mask (B,)) for a float batch (B, 3, H, W)."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        x = np.ascontiguousarray(x, dtype=np.float32)
        score, by_index = self.scores_and_features(x)
        easy = score >= self.dy_thres
        outputs = {}
        for part, mask in (('easy', easy), ('hard', ~easy)):
            if mask.any():
                idx = np.nonzero(mask)[0]
                outputs[part] = (idx, self.head(part, x, by_index, idx))
        first = next(iter(outputs.values()))[1]
        decoded = np.empty((x.shape[0], *first.shape[1:]), dtype=first.dtype)
        for idx, out in outputs.values():
            decoded[idx] = out
        return decoded, easy
