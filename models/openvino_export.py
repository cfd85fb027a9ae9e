"""OpenVINO IR of export.py's three graphs and their int8 post-training quantization with NNCF (extension: the
reference has no export).

The IR is read from the ONNX graphs (same inputs, outputs and node names). `--int8` quantizes each graph
with NNCF's `quantize` (preset MIXED: symmetric weights, asymmetric activations), calibrated on letterboxed images:
part 1 on the images, then head 1 and backbone 2 + head 2 on what the quantized part 1 produces for the same
images, so each later graph sees the inputs it will get when deployed. Kept in fp32 (NNCF's ignored scope):
- the router (part 1's `/router/…` ops): its score decides the route, and int8 steps in that small MLP move
  scores across a threshold for many images at once;
- each head's decode, the IDetect layer's own arithmetic after its 1x1 convolutions (sigmoid, grid offsets,
  anchor scaling, the concatenation into (N, nc+5)): boxes in pixels, where int8's step would be several pixels.
"""
from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .export import PARTS, ExportError, ExportManifest, input_names

LOGGER = logging.getLogger(__name__)
OPENVINO_KEY = '_openvino'  # manifest file keys: part1_openvino, easy_openvino, hard_openvino
PRECISIONS = {'fp32': 'f32', 'bf16': 'bf16'}  # OpenVINO's INFERENCE_PRECISION_HINT values
DEFAULT_CALIB_IMAGES = 300


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


def export_openvino(manifest: ExportManifest, base: Path) -> list[Path]:
    """One IR (.xml + .bin, fp32 weights) per graph, converted from the ONNX files export_onnx wrote."""
    ov = require('openvino', 'OpenVINO export')
    written = []
    for part in PARTS:
        source = base.parent / manifest.files[part]
        xml = base.with_name(f'{base.name}_{part}.xml')
        try:
            ov.save_model(ov.Core().read_model(str(source)), str(xml), compress_to_fp16=False)
        except (RuntimeError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f'{xml}: OpenVINO conversion of {source.name} failed: {first}') from None
        manifest.files[part + OPENVINO_KEY] = xml.name
        written.append(xml)
    return written


def compile_ir(path: Path, precision: str = 'fp32', threads: int = 0) -> Callable[..., list[np.ndarray]]:
    """A compiled IR as run(*arrays) -> outputs, on the CPU with the precision set explicitly (OpenVINO's default
    on AVX512-BF16/AMX CPUs is bf16 even for an fp32 IR); threads 0 = OpenVINO's choice."""
    ov = require('openvino', 'The openvino engine')
    if precision not in PRECISIONS:
        raise ExportError(f'OpenVINO precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    if not path.is_file() or not path.with_suffix('.bin').is_file():
        raise ExportError(f'{path}: no such OpenVINO IR (.xml and .bin); rerun export.py --include openvino')
    config = {'INFERENCE_PRECISION_HINT': PRECISIONS[precision]}
    if threads:
        config['INFERENCE_NUM_THREADS'] = int(threads)
    try:
        compiled = ov.Core().compile_model(str(path), 'CPU', config)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or ['unreadable'])[0]
        raise ExportError(f'{path}: OpenVINO cannot read this IR ({first}); rerun export.py --include openvino') \
            from None
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        result = request.infer(list(arrays))
        return [np.array(result[o]) for o in outputs]  # copies: the request reuses its buffers
    return run


def ignored_scopes(manifest: ExportManifest, nncf: Any, keep_fp32: bool = True) -> dict[str, Any]:
    """NNCF ignored scopes per graph: the router in part 1, each head's IDetect decode (see the module doc); with
    keep_fp32 False none (everything NNCF can quantize is: benchmarks/bench_int8.py measures what that costs)."""
    if not keep_fp32:
        return {part: nncf.IgnoredScope() for part in PARTS}

    def head(section: str) -> Any:
        index = manifest.detect_index.get(section)
        if index is None:
            raise ExportError('this manifest has no detect layer indices; rerun export.py with this version')
        return nncf.IgnoredScope(patterns=[rf'/{section}/{section}\.{index}/[^/]+'], names=['detections'],
                                 validate=False)
    return {'part1': nncf.IgnoredScope(patterns=[r'/router/.*'], names=['score'], validate=False),
            'easy': head('model_h'), 'hard': head('model_h2')}


def quantize_int8(manifest: ExportManifest, folder: Path, base: Path, images: Sequence[np.ndarray],
                  calibration: str, keep_fp32: bool = True, keep_routes: bool = False,
                  fast_bias_correction: bool = True) -> Path:
    """Quantize the IRs on `images` ((1, 3, H, W) float32 in [0, 1], letterboxed at the export size) and write them
    with an int8 manifest beside the fp32 one; returns the int8 manifest's path. keep_routes leaves part 1
    (backbone 1 + router) in fp32, so every route is fp32's and only the heads run int8."""
    ov = require('openvino', 'int8 quantization')
    nncf = require('nncf', 'int8 quantization')
    logging.getLogger('nncf').setLevel(logging.WARNING)  # NNCF logs every statistics pass at INFO
    scopes = ignored_scopes(manifest, nncf, keep_fp32)
    files = {}

    def quantize(part: str, inputs: list[list[np.ndarray]]) -> Path:
        model = ov.Core().read_model(str(folder / manifest.files[part + OPENVINO_KEY]))
        if not (part == 'part1' and keep_routes):
            model = nncf.quantize(model, nncf.Dataset(inputs), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(inputs), ignored_scope=scopes[part],
                                  fast_bias_correction=fast_bias_correction)
        xml = base.with_name(f'{base.name}_int8_{part}.xml')
        ov.save_model(model, str(xml), compress_to_fp16=False)
        files[part + OPENVINO_KEY] = xml.name
        return xml

    part1 = compile_ir(quantize('part1', [[x] for x in images]))  # run as it will be deployed
    outs = [part1(x) for x in images]  # score, then the features in order
    for part in ('easy', 'hard'):
        names = input_names(part, manifest.easy_features, manifest.hard_features)
        quantize(part, [[x if n == 'images' else out[1 + manifest.features.index(int(n[1:]))] for n in names]
                        for x, out in zip(images, outs)])
    int8 = ExportManifest(**{**asdict(manifest), 'files': files, 'precision': 'int8',
                             'calibration': {'images': len(images), 'source': calibration,
                                             'keep_routes': keep_routes}})
    return int8.save(base.with_name(f'{base.name}_int8_export.yaml'))


def read_manifest(path: Path) -> ExportManifest:
    """An export manifest, or one line naming it."""
    if not path.is_file():
        raise ExportError(f'{path}: no such export manifest; run export.py first')
    try:
        spec = yaml.safe_load(path.read_text())
        return ExportManifest(**spec)
    except (yaml.YAMLError, TypeError) as e:
        raise ExportError(f'{path}: not an export manifest of this version ({type(e).__name__}); '
                          'rerun export.py') from None
