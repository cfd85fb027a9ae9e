"""The dynamic model as three exportable graphs: backbone 1 + router, head 1 (easy), backbone 2 + head 2 (hard).

A single graph cannot skip work per image, so export splits the model where the route is decided: part 1 runs
on every image and returns the router score and the backbone-1 features the other parts read; the runner
(models/exported.py) then feeds only the easy images' features to head 1 and only the hard images (and their
features) to backbone 2 + head 2. Each part returns the decoded predictions (B, N, nc+5) like Model's eval forward.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .export_manifest import ExportError, ExportManifest
from .inference import prepare_input
from .yolo import Model

LOGGER = logging.getLogger(__name__)
PARTS = ('part1', 'easy', 'hard')
DEFAULT_OPSET = 17


def onnx_opsets() -> range:
    """The opsets the installed torch.onnx's TorchScript-based exporter (dynamo=False, used here) accepts."""
    constants = getattr(torch.onnx, '_constants', None)  # private, but where torch keeps the exporter's own bounds
    low = getattr(constants, 'ONNX_MIN_OPSET', 7)
    return range(low, getattr(constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', DEFAULT_OPSET) + 1)


def _unwritable(path: Path, cause: str) -> ExportError:
    return ExportError(f'{path}: cannot be written ({cause}); make {path.parent} writable or free space, '
                       f'or pass --out with another folder')


@contextmanager
def reported_as_export_error(path: Path, what: str, fix: str = '') -> Iterator[None]:
    """Exporter and file-system failures while writing `path` as one-line ExportErrors naming it."""
    try:
        yield
    except OSError as e:
        raise _unwritable(path, e.strerror or str(e)) from None
    except RuntimeError as e:  # torch.onnx errors, tracer errors, torch.jit's C++ file writer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if 'open file failed' in first:
            raise _unwritable(path, first.rpartition('strerror: ')[2] or first) from None
        raise ExportError(f'{path}: {what} failed: {first}{fix}') from None


def _b1_reads(section) -> set[int]:
    return {r.index for refs in section.refs for r in refs if r.source == 'b1'}


class _Part1(nn.Module):
    def __init__(self, model: Model, features: list[int]) -> None:
        super().__init__()
        self.model, self.features = model, features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b1, score = self.model._backbone(x)
        return (score, *[b1[i] for i in self.features])


def _as_b1(model: Model, features: list[int], tensors: tuple[torch.Tensor, ...]) -> list:
    b1: list = [None] * len(model.model_b)
    for i, t in zip(features, tensors):
        b1[i] = t
    return b1


class _Easy(nn.Module):
    def __init__(self, model: Model, features: list[int]) -> None:
        super().__init__()
        self.model, self.features = model, features

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        return self.model._easy(_as_b1(self.model, self.features, feats))[0]


class _Hard(nn.Module):
    def __init__(self, model: Model, features: list[int]) -> None:
        super().__init__()
        self.model, self.features = model, features

    def forward(self, x: torch.Tensor, *feats: torch.Tensor) -> torch.Tensor:
        return self.model._hard(x, _as_b1(self.model, self.features, feats))[0]


def split_model(model: Model, img_size: tuple[int, int], batch: int, dynamic_batch: bool = True
                ) -> tuple[dict[str, nn.Module], dict[str, tuple], ExportManifest]:
    """The three parts of a fused, eval, dynamic model, example inputs for each, and the manifest."""
    if not model.dynamic:
        raise ValueError('export splits a dynamic (step-2) model; this config has no router')
    easy_f, hard_f = sorted(_b1_reads(model.model_h)), sorted(_b1_reads(model.model_b2))
    features = sorted(set(easy_f) | set(hard_f))
    manifest = ExportManifest(str(getattr(model, 'yaml_file', '')), list(img_size), batch, dynamic_batch,
                              float(model.dy_thres), [float(s) for s in model.stride], int(model.yaml['nc']), features,
                              easy_f, hard_f, detect_index={'model_h': len(model.model_h) - 1,
                                                            'model_h2': len(model.model_h2) - 1})
    parts = {'part1': _Part1(model, features), 'easy': _Easy(model, easy_f), 'hard': _Hard(model, hard_f)}
    parts = {k: v.eval() for k, v in parts.items()}  # a new nn.Module is in train mode, and exporters restore it
    x = prepare_input(torch.zeros(batch, 3, *img_size), model)
    with torch.inference_mode():
        score, *feats = parts['part1'](x)
    by_index = dict(zip(features, feats))
    examples = {'part1': (x,), 'easy': tuple(by_index[i] for i in easy_f),
                'hard': (x, *(by_index[i] for i in hard_f))}
    return parts, examples, manifest


def batch_chunks(arrays: list[np.ndarray] | tuple[np.ndarray, ...], batch: int) -> list[list[np.ndarray]]:
    """Inputs with one leading batch as chunks of exactly `batch` (a graph with a fixed batch axis takes no other);
    the last padded with zero images, whose outputs the caller cuts off. batch 0: one chunk, as given."""
    n = len(arrays[0])
    if not batch or n == batch:
        return [[np.ascontiguousarray(a) for a in arrays]]
    chunks = []
    for start in range(0, n, batch):
        part = [a[start:start + batch] for a in arrays]
        if len(part[0]) < batch:
            part = [np.concatenate((a, np.zeros((batch - len(a), *a.shape[1:]), a.dtype))) for a in part]
        chunks.append([np.ascontiguousarray(a) for a in part])
    return chunks


def joined_chunks(results: list[list[np.ndarray]], n: int) -> list[np.ndarray]:
    """Each output of batch_chunks' chunks joined back into one batch of the first `n` rows (padding dropped)."""
    return [np.concatenate(outs)[:n] if len(outs) > 1 else outs[0][:n] for outs in zip(*results)]


def input_names(part: str, easy_features: list[int], hard_features: list[int]) -> list[str]:
    """Graph input names: images and/or f<layer> features."""
    feats = {'part1': [], 'easy': easy_features, 'hard': hard_features}[part]
    return (['images'] if part != 'easy' else []) + [f'f{i}' for i in feats]


def output_names(part: str, manifest: ExportManifest) -> list[str]:
    """Graph output names: score and f<layer> features for part 1, detections for the heads."""
    return ['score', *[f'f{i}' for i in manifest.features]] if part == 'part1' else ['detections']


def export_onnx(parts: dict, examples: dict, manifest: ExportManifest, out: Path, opset: int = DEFAULT_OPSET
                ) -> list[Path]:
    """One .onnx per part (legacy TorchScript-based exporter: no extra packages); batch axis dynamic if asked;
    ExportError (one line) when the exporter or the write fails."""
    written = []
    for name, module in parts.items():
        path = out.with_name(f'{out.name}_{name}.onnx')
        ins = input_names(name, manifest.easy_features, manifest.hard_features)
        outs = output_names(name, manifest)
        axes = {n: {0: 'batch'} for n in ins + outs} if manifest.dynamic_batch else None
        fix = f'; try --opset {DEFAULT_OPSET}' if opset != DEFAULT_OPSET else ''
        with reported_as_export_error(path, f'ONNX export at opset {opset}', fix), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter('ignore')  # tracer notes on Python floats from shapes: the batch axis stays free
            torch.onnx.export(module.eval(), examples[name], str(path), input_names=ins, output_names=outs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        manifest.files[name] = path.name
        written.append(path)
    return written


def export_torchscript(parts: dict, examples: dict, manifest: ExportManifest, out: Path) -> list[Path]:
    """One traced .torchscript per part; ExportError (one line) when tracing or the write fails."""
    written = []
    for name, module in parts.items():
        path = out.with_name(f'{out.name}_{name}.torchscript')
        with reported_as_export_error(path, 'TorchScript trace'), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # as above; TorchScript is deprecated upstream but still runs
            traced = torch.jit.trace(module.eval(), examples[name], strict=False, check_trace=False)
            traced.save(str(path))
        manifest.files[f'{name}_torchscript'] = path.name
        written.append(path)
    return written
