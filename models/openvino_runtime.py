"""Running OpenVINO IRs on the CPU (extension: the reference has no export): static shapes, an explicit precision
with chosen nodes kept in fp32, a thread count, and latency or throughput mode.

- Static shapes: OpenVINO's CPU plugin runs a graph with a free batch axis markedly slower than the same graph
  with every shape known (Dy-YOLOv7 int8 at 640, batch 1: 312 -> 236 ms easy on an AVX512 EPYC), so a graph
  exported with a free batch axis is reshaped to batch 1 before it is compiled and any batch runs as single
  images; a --static-batch graph keeps its batch and runs in chunks of it, the last padded with zero images.
- Precision: always set (OpenVINO's default on AVX512-BF16/AMX CPUs is bf16 even for an fp32 IR). With bf16 the
  nodes named by `keep_fp32` patterns are marked with OpenVINO's `disable_fp16_compression` runtime attribute,
  which its CPU plugin honours by running them in the IR's own precision (the router, the box decode). On a CPU
  without native bf16 the hint would run fp32 anyway: the graph is compiled fp32 and that is said once.
- Latency mode runs the chunks one after another on one request; throughput mode keeps as many requests in
  flight as OpenVINO's streams can take (PERFORMANCE_HINT THROUGHPUT), which pays with several cores and batches.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .export import ExportError, batch_chunks, joined_chunks

LOGGER = logging.getLogger(__name__)
PRECISIONS = {'fp32': 'f32', 'bf16': 'bf16'}  # OpenVINO's INFERENCE_PRECISION_HINT values
MODES = ('latency', 'throughput')
KEEP_PRECISION = 'disable_fp16_compression_0'  # ov::DisableFP16Compression: "inferred in the original precision"


def require(name: str, what: str) -> Any:
    """Import an optional package, or one line saying what needs it and how to install it.

    NNCF's usage telemetry is switched off for this process (NNCF_CI, its own switch, unless already set): it sends
    from a thread pool that forks, which hung a process here, and a toolkit does not report its users' runs. For the
    same reason the IR is read with Core.read_model rather than convert_model (whose telemetry forks the same way)."""
    if name == 'nncf':
        os.environ.setdefault('NNCF_CI', '1')
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ExportError(f'{what} needs the {name} package: pip install {name} '
                          '(both are in requirements.txt)') from None


def openvino(what: str = 'The openvino engine') -> Any:
    """The openvino package, or one line saying how to install it."""
    return require('openvino', what)


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX)."""
    return 'BF16' in openvino().Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')


def read_ir(path: Path) -> Any:
    """An IR (.xml with its .bin) as an ov.Model, or one line naming it."""
    ov = openvino()
    if not path.is_file() or not path.with_suffix('.bin').is_file():
        raise ExportError(f'{path}: no such OpenVINO IR (.xml and .bin); rerun export.py --include openvino')
    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or ['unreadable'])[0]
        raise ExportError(f'{path}: OpenVINO cannot read this IR ({first}); rerun export.py --include openvino') \
            from None


def static_batch(model: Any, batch: int | None) -> int:
    """Give every input a batch axis of `batch` where it is free (None: leave it free); returns the graph's batch:
    its own if fixed, 0 if left free."""
    shapes = {i.get_any_name(): i.get_partial_shape() for i in model.inputs}
    fixed = {s[0].get_length() for s in shapes.values() if s[0].is_static}
    if fixed:
        return fixed.pop()
    if batch is None:
        return 0
    ov = openvino()
    model.reshape({name: ov.PartialShape([batch, *list(shape)[1:]]) for name, shape in shapes.items()})
    return batch


def keep_in_fp32(model: Any, patterns: Sequence[str]) -> list[str]:
    """Mark the nodes whose names match one of `patterns` (whole name) to run in the IR's precision; their names."""
    kept = [op for op in model.get_ordered_ops() if any(re.fullmatch(p, op.get_friendly_name()) for p in patterns)]
    for op in kept:
        op.get_rt_info()[KEEP_PRECISION] = ''
    return [op.get_friendly_name() for op in kept]


def effective_precision(precision: str) -> str:
    """The precision a runner's graphs are compiled at: bf16 only where the CPU has it (a warning otherwise; called
    once per runner, by models.exported.ExportedDynamicModel)."""
    if precision not in PRECISIONS:
        raise ExportError(f'OpenVINO precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    if precision == 'bf16' and not cpu_has_bf16():
        LOGGER.warning('WARNING: --bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so OpenVINO runs the '
                       'graphs in fp32 (its bf16 would be emulated and slower)')
        return 'fp32'
    return precision


class CompiledGraph:
    """A compiled IR as graph(*arrays) -> outputs for any batch, in chunks of its static batch; `precision` is
    compiled as given (effective_precision decides it for a runner)."""

    def __init__(self, path: Path, precision: str = 'fp32', threads: int = 0, mode: str = 'latency',
                 keep_fp32: Sequence[str] = (), static_shapes: bool = True) -> None:
        if mode not in MODES:
            raise ExportError(f'OpenVINO mode must be one of {", ".join(MODES)}, got {mode!r}')
        ov = openvino()
        model = read_ir(path)
        # static_shapes False (benchmarks/bench_speed.py --ov-dynamic) compiles a free batch axis as it is, to time it
        self.batch = static_batch(model, 1 if static_shapes else None)
        if precision not in PRECISIONS:
            raise ExportError(f'OpenVINO precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
        self.precision = precision
        self.kept = keep_in_fp32(model, keep_fp32) if self.precision != 'fp32' else []
        config = {'INFERENCE_PRECISION_HINT': PRECISIONS[self.precision],
                  'PERFORMANCE_HINT': mode.upper()}
        if threads:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(model, 'CPU', config)
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or ['unknown'])[0]
            raise ExportError(f'{path}: OpenVINO cannot compile this IR ({first}); rerun export.py') from None
        self.mode, self.outputs = mode, list(self.compiled.outputs)
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled) if mode == 'throughput' else None

    def _infer_all(self, chunks: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        if self.queue is None or len(chunks) == 1:  # copies: the request reuses its buffers
            return [[np.array(r[o]) for o in self.outputs] for r in map(self.request.infer, chunks)]
        results: list = [None] * len(chunks)

        def done(request: Any, index: int) -> None:
            results[index] = [np.array(request.get_tensor(o).data) for o in self.outputs]
        self.queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            self.queue.start_async(chunk, index)
        self.queue.wait_all()
        return results

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Outputs of the graph for inputs with the same leading batch (any size)."""
        n = len(arrays[0])
        results = self._infer_all(batch_chunks(arrays, self.batch))
        return joined_chunks(results, n)
