"""Run an exported dynamic model (export.py's three graphs) with per-image routing, as Model's eval forward does.

    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml')            # ONNX via onnxruntime
    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml', 'torchscript')
    runner = ExportedDynamicModel('weights/dy-yolov7_int8_export.yaml')       # export.py --int8: OpenVINO
    runner = ExportedDynamicModel('weights/dy-yolov7_export.yaml', 'openvino', precision='bf16', threads=4)
    detections, easy = runner(images)   # float (B, 3, H, W) in [0, 1] → (B, N, nc+5), bool (B,)
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .export import PARTS, batch_chunks, input_names, joined_chunks
from .export_manifest import ExportError, ExportManifest, check_digest, manifest_file, read_manifest
from .openvino_export import OPENVINO_KEY, fp32_patterns
from .openvino_runtime import CompiledGraph, effective_precision

__all__ = ['ExportError', 'ExportedDynamicModel']  # ExportError lives in models.export, which cannot import this


def _onnx_session(path: Path, threads: int = 0) -> Callable:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError('onnxruntime is not installed: pip install onnxruntime (or use backend="torchscript")') \
            from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
    names = [i.name for i in session.get_inputs()]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))
    run.session = session  # its options (threads) stay inspectable
    return run


def _torchscript_module(path: Path, threads: int = 0) -> Callable:
    if threads:  # torch's thread count is the process's: TorchScript has no per-module setting
        torch.set_num_threads(int(threads))
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


def default_backend(manifest: ExportManifest) -> str:
    """OpenVINO for int8 graphs (they exist only as OpenVINO IR), ONNX Runtime otherwise."""
    return 'openvino' if manifest.precision == 'int8' else 'onnx'


def checked_file(manifest_path: Path, manifest: ExportManifest, part: str, backend: str) -> Path:
    """The graph file of `part` for `backend`, inside the manifest's folder, its SHA-256 (and its .bin's) checked
    against the manifest's."""
    name = manifest.files.get(_file_key(part, backend))
    if not name and manifest.precision == 'int8':
        raise ExportError(f'{manifest_path}: int8 graphs run on OpenVINO only; pass --engine openvino (or leave '
                          '--engine out), or run the fp32 manifest export.py wrote beside it on this engine')
    path = manifest_file(manifest_path, name) if name else None
    if path is None or not path.is_file():
        raise ExportError(f'{manifest_path}: no {backend} file for {part}; export with --include {backend}')
    for file in [path] + ([path.with_suffix('.bin')] if backend == 'openvino' else []):
        check_digest(manifest_path, manifest, file)
    return path


class ExportedDynamicModel:
    """Part 1 on the whole batch; head 1 on the images scoring >= dy_thres, backbone 2 + head 2 on the others.

    backend None: OpenVINO for an int8 manifest, ONNX Runtime otherwise. `threads` (0: the runtime's choice) sets
    ONNX Runtime's intra-op threads, OpenVINO's inference threads, or torch's (TorchScript). OpenVINO runs each graph
    with static shapes (models/openvino_runtime.py) at `precision` 'fp32' or 'bf16' (where the CPU has it; the router
    and the box decode stay fp32, and with keep_routes all of part 1, so every route is fp32's; an int8 manifest's
    quantized layers run int8 either way), in 'latency' or 'throughput' `mode`."""

    def __init__(self, manifest: str | Path, backend: str | None = None, dy_thres: float | None = None,
                 precision: str = 'fp32', threads: int = 0, mode: str = 'latency', keep_routes: bool = False,
                 static_shapes: bool = True) -> None:
        path = Path(manifest)
        self.manifest = read_manifest(path)
        backend = backend or default_backend(self.manifest)
        if backend not in BACKENDS:
            raise ExportError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
        if precision != 'fp32' and backend != 'openvino':
            raise ExportError(f'precision {precision} is OpenVINO\'s; the {backend} engine runs the graphs in fp32')
        self.backend, self.dy_thres = backend, float(self.manifest.dy_thres if dy_thres is None else dy_thres)
        files = {part: checked_file(path, self.manifest, part, backend) for part in PARTS}
        if backend == 'openvino':
            kept, precision = fp32_patterns(self.manifest), effective_precision(precision)
            self.parts = {part: CompiledGraph(file, 'fp32' if keep_routes and part == 'part1' else precision,
                                              threads, mode, kept[part], static_shapes)
                          for part, file in files.items()}
            self.precision = self.parts['easy'].precision
        else:
            load = _onnx_session if backend == 'onnx' else _torchscript_module
            self.parts = {part: load(file, threads) for part, file in files.items()}
            self.precision = 'fp32'
        self.features = list(self.manifest.features)
        self.last_score: np.ndarray | None = None  # (B,) router scores of the last routed batch
        # ONNX graphs exported with --static-batch take exactly `batch` images: a batch runs in chunks of it (the
        # last padded with zero images, cut back); OpenVINO's CompiledGraph chunks itself, TorchScript's batch is free
        fixed_batch = backend == 'onnx' and not self.manifest.dynamic_batch
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
        """One graph on `arrays` (same batch), in chunks of a static batch when it has one."""
        n = len(arrays[0])
        results = [self.parts[part](*chunk) for chunk in batch_chunks(arrays, self.static_batch)]
        return joined_chunks(results, n)

    def __call__(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(decoded detections (B, N, nc+5), easy mask (B,)) for a float batch (B, 3, H, W)."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        x = np.ascontiguousarray(x, dtype=np.float32)
        score, by_index = self.scores_and_features(x)
        easy = score >= self.dy_thres
        self.last_score = score
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
