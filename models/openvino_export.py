"""OpenVINO IR of export.py's three graphs and their int8 post-training quantization with NNCF (extension: the
reference has no export).

The IR is read from the ONNX graphs (same inputs, outputs and node names). `--int8` quantizes each graph
with NNCF's `quantize` (preset MIXED: symmetric weights, asymmetric activations), calibrated on images read and
letterboxed as evaluation reads them: part 1 on the images, then head 1 and backbone 2 + head 2 on what the
quantized part 1 produces for the same images, so each later graph sees the inputs it will get when deployed.
Part 1 gets OpenVINO's overflow fix on every layer and the heads each activation's extremes over all calibration
images as its range (nncf_parameters: fewer route flips and 0.004 instead of 0.016 mAP@.5:.95 lost on the hard
path against NNCF's defaults, docs/deployment.md).
Kept in fp32 (NNCF's ignored scope, whole node names):
- the router (part 1's `/router/…` ops): its score decides the route, and int8 steps in that small MLP move
  scores across a threshold for many images at once;
- each head's IDetect layer: its 1x1 output convolutions (m.*: quantizing them lost 0.003 mAP on each path for
  no measurable speed, three small convolutions) and its decode (sigmoid, grid offsets, anchor scaling, the
  concatenation into (N, nc+5)): boxes in pixels, where int8's step would be several pixels.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .export import PARTS, ExportError, ExportManifest, input_names, reported_as_export_error
from .openvino_runtime import CompiledGraph, read_ir, require

LOGGER = logging.getLogger(__name__)
OPENVINO_KEY = '_openvino'  # manifest file keys: part1_openvino, easy_openvino, hard_openvino
DEFAULT_CALIB_IMAGES = 300
RECIPES = ('project', 'nncf')
HEAD_CONVS_FP32 = True  # each head's 1x1 output convolutions stay fp32 (benchmarks/bench_int8.py: see docs)


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


def fp32_patterns(manifest: ExportManifest, head_convs: bool = HEAD_CONVS_FP32) -> dict[str, list[str]]:
    """Whole node names (regular expressions) kept in fp32 per graph: the router in part 1 and each head's IDetect
    layer (see the module doc): its decode, and its 1x1 output convolutions (m.*) unless head_convs is False."""
    def head(section: str) -> list[str]:
        index = manifest.detect_index.get(section)
        if index is None:
            raise ExportError('this manifest has no detect layer indices; rerun export.py with this version')
        own = rf'/{section}/{section}\.{index}/'
        return [own + '[^/]+', 'detections'] + ([own + r'm\.\d+/.+'] if head_convs else [])
    return {'part1': [r'/router/.*', 'score'], 'easy': head('model_h'), 'hard': head('model_h2')}


def ignored_scopes(manifest: ExportManifest, nncf: Any, keep_fp32: bool = True, head_convs: bool = HEAD_CONVS_FP32
                   ) -> dict[str, Any]:
    """NNCF ignored scopes per graph from fp32_patterns (anchored at both ends: NNCF matches from the start only);
    with keep_fp32 False none (everything NNCF can quantize is: benchmarks/bench_int8.py measures what that
    costs)."""
    if not keep_fp32:
        return {part: nncf.IgnoredScope() for part in PARTS}
    return {part: nncf.IgnoredScope(patterns=[rf'(?:{p})$' for p in patterns], validate=False)
            for part, patterns in fp32_patterns(manifest, head_convs).items()}


def nncf_parameters(part: str, recipe: str = 'project') -> Any:
    """NNCF's advanced parameters for a graph. 'project': part 1 with OpenVINO's overflow fix on every layer (7-bit
    weights, so that CPUs without VNNI, whose int8 dot products saturate in 16 bits, move the router's scores less:
    up to 0.03 instead of 0.07) and NNCF's activation ranges; the heads with each activation's extremes over all
    calibration images (NNCF's default, the mean over images of each one's extremes, clipped the hard path).
    'nncf': NNCF's defaults everywhere (overflow fix on the first layer, mean ranges)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    if recipe not in RECIPES:
        raise ExportError(f'int8 recipe must be one of {", ".join(RECIPES)}, got {recipe!r}')
    if recipe == 'nncf':
        return AdvancedQuantizationParameters()
    if part == 'part1':
        return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)
    return AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)


def calibration_batches(images: Sequence[np.ndarray], batch: int) -> list[np.ndarray]:
    """The (1, 3, H, W) calibration images as batches of the graphs' own batch (a --static-batch export takes only
    that many), cycling through the images to fill the last one."""
    if batch <= 1:
        return list(images)
    count = max(1, -(-len(images) // batch))
    order = [i % len(images) for i in range(count * batch)]
    return [np.concatenate([images[i] for i in order[k:k + batch]]) for k in range(0, len(order), batch)]


def quantize_int8(manifest: ExportManifest, folder: Path, base: Path, images: Sequence[np.ndarray],
                  calibration: str, keep_fp32: bool = True, keep_routes: bool = False,
                  fast_bias_correction: bool = True, head_convs: bool = HEAD_CONVS_FP32, recipe: str = 'project'
                  ) -> Path:
    """Quantize the IRs on `images` ((1, 3, H, W) float32 in [0, 1], letterboxed at the export size) and write them
    with an int8 manifest beside the fp32 one; returns the int8 manifest's path. keep_routes leaves part 1
    (backbone 1 + router) in fp32, so every route is fp32's and only the heads run int8. head_convs and recipe
    (nncf_parameters) choose the alternatives bench_int8.py measures."""
    ov = require('openvino', 'int8 quantization')
    nncf = require('nncf', 'int8 quantization')
    logging.getLogger('nncf').setLevel(logging.WARNING)  # NNCF logs every statistics pass at INFO
    scopes = ignored_scopes(manifest, nncf, keep_fp32, head_convs)
    files = {}

    def quantize(part: str, inputs: list[list[np.ndarray]]) -> Path:
        source = folder / manifest.files[part + OPENVINO_KEY]
        model = read_ir(source)
        xml = base.with_name(f'{base.name}_int8_{part}.xml')
        try:
            if not (part == 'part1' and keep_routes):
                model = nncf.quantize(model, nncf.Dataset(inputs), preset=nncf.QuantizationPreset.MIXED,
                                      subset_size=len(inputs), ignored_scope=scopes[part],
                                      fast_bias_correction=fast_bias_correction,
                                      advanced_parameters=nncf_parameters(part, recipe))
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f'{source}: int8 quantization failed: {first}') from None
        with reported_as_export_error(xml, 'writing the int8 IR'):
            ov.save_model(model, str(xml), compress_to_fp16=False)
        files[part + OPENVINO_KEY] = xml.name
        return xml

    batches = calibration_batches(images, 1 if manifest.dynamic_batch else manifest.batch)
    part1 = CompiledGraph(quantize('part1', [[x] for x in batches]))  # run as it will be deployed
    outs = [part1(x) for x in batches]  # score, then the features in order
    for part in ('easy', 'hard'):
        names = input_names(part, manifest.easy_features, manifest.hard_features)
        quantize(part, [[x if n == 'images' else out[1 + manifest.features.index(int(n[1:]))] for n in names]
                        for x, out in zip(batches, outs)])
    int8 = ExportManifest(**{**asdict(manifest), 'files': files, 'precision': 'int8',
                             'calibration': {'images': len(images), 'source': calibration,
                                             'keep_routes': keep_routes}})
    return int8.save(base.with_name(f'{base.name}_int8_export.yaml'))
