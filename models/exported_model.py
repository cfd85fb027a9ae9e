"""An exported model (export.py's manifest and graphs) behind the interface test.py, get_dynamic_thres.py and
detect.py use of a PyTorch Model: routed forward, router scores, the three stages, FLOPs (extension).

So the project's own evaluator scores what is deployed (ONNX, OpenVINO fp32/bf16, OpenVINO int8). The graphs run
on the CPU, at the manifest's fixed image size (the evaluation loader letterboxes to it instead of rect batches);
test-time augmentation and training losses need the PyTorch model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .export import ExportError
from .exported import ExportedDynamicModel

LOGGER = logging.getLogger(__name__)
MANIFEST_SUFFIX = '_export.yaml'


def is_export_manifest(weights: str) -> bool:
    """Whether --weight names an export manifest rather than a checkpoint."""
    return str(weights).endswith(MANIFEST_SUFFIX)


def precision_label(graphs: str, compiled: str, keep_routes: bool) -> str:
    """What runs at which precision, e.g. 'int8 (unquantized ops bf16; router, decode and part 1 fp32)'."""
    if compiled == 'fp32':
        return 'int8 (unquantized ops fp32)' if graphs == 'int8' else 'fp32'
    kept = 'router, decode and part 1 fp32' if keep_routes else 'router and decode fp32'
    return f'int8 (unquantized ops {compiled}; {kept})' if graphs == 'int8' else f'{compiled} ({kept})'


class ExportedModel(nn.Module):
    """Model-like wrapper of ExportedDynamicModel: forward(x) → (decoded, None) with per-image routing (last_easy
    set), or router scores (B, 1) when get_score is set; _backbone/_easy/_hard for the both-path sweep."""
    dynamic = True

    def __init__(self, manifest: str | Path, engine: str | None = None, precision: str = 'fp32', threads: int = 0,
                 mode: str = 'latency', keep_routes: bool = False) -> None:
        super().__init__()
        self.runner = ExportedDynamicModel(manifest, engine, precision=precision, threads=threads, mode=mode,
                                           keep_routes=keep_routes)
        spec = self.runner.manifest
        self.engine, self.mode = self.runner.backend, mode
        self.precision = precision_label(spec.precision, self.runner.precision, keep_routes)
        self.register_buffer('stride', torch.tensor(spec.stride))
        self.input_param = nn.Parameter(torch.zeros(0), requires_grad=False)  # device and dtype of the inputs
        self.yaml = {'nc': spec.nc}
        self.fixed_size = tuple(spec.img_size)  # (h, w) the graphs were exported at
        self.get_score, self.last_easy, self.last_score = False, None, None
        self.eval()

    @property
    def dy_thres(self) -> float:
        """The routing threshold (score >= it: easy path)."""
        return self.runner.dy_thres

    @dy_thres.setter
    def dy_thres(self, value: float) -> None:
        self.runner.dy_thres = float(value)

    def description(self) -> str:
        """e.g. 'openvino int8 (unquantized ops fp32) graphs at 640x640, latency mode'."""
        h, w = self.fixed_size
        mode = f', {self.mode} mode' if self.engine == 'openvino' else ''
        return f'{self.engine} {self.precision} graphs at {h}x{w}{mode}'

    def _array(self, x: torch.Tensor) -> np.ndarray:
        if tuple(x.shape[2:]) != self.fixed_size:
            raise ExportError(f'the exported graphs take {self.fixed_size[0]}x{self.fixed_size[1]} images, got '
                              f'{x.shape[2]}x{x.shape[3]}; letterbox to the export size (or re-export)')
        return np.ascontiguousarray(x.detach().float().cpu().numpy())

    def forward(self, x: torch.Tensor, augment: bool = False):
        """Routed detections (B, N, nc+5) and None (no raw maps); router scores (B, 1) with get_score."""
        if augment:
            raise ExportError('--augment needs the PyTorch checkpoint: the exported graphs run one image size')
        arr = self._array(x)
        if self.get_score:
            return torch.from_numpy(self.runner.scores_and_features(arr)[0]).view(-1, 1)
        decoded, easy = self.runner(arr)
        self.last_easy, self.last_score = torch.from_numpy(easy), torch.from_numpy(self.runner.last_score)
        return torch.from_numpy(decoded), None

    def eval_chunk(self, x: torch.Tensor) -> int:
        """The whole batch at once (the runtime sizes its own work)."""
        return max(len(x), 1)

    def _backbone(self, x: torch.Tensor) -> tuple[tuple[np.ndarray, dict], torch.Tensor]:
        arr = self._array(x)
        score, by_index = self.runner.scores_and_features(arr)
        return (arr, by_index), torch.from_numpy(score).view(-1, 1)

    def _stage(self, part: str, b1: tuple[np.ndarray, dict]):
        arr, by_index = b1
        return torch.from_numpy(self.runner.head(part, arr, by_index, np.arange(len(arr)))), None

    def _easy(self, b1: tuple[np.ndarray, dict]):
        return self._stage('easy', b1)

    def _hard(self, x: torch.Tensor, b1: tuple[np.ndarray, dict]):
        return self._stage('hard', b1)

    def input_size(self, img_size: int) -> tuple[int, int]:
        """The (h, w) the graphs run at, with a warning when the asked --img-size differs (it cannot apply)."""
        h, w = self.fixed_size
        if (img_size, img_size) != (h, w):
            LOGGER.warning(f'WARNING: --img-size {img_size} ignored: the exported graphs take {h}x{w} images')
        return h, w

    def flops(self, img_size=None) -> dict[str, float]:
        """GFLOPs per path at the export size (written by export.py; the graphs run no other size)."""
        gflops = self.runner.manifest.gflops
        return {'easy': float(gflops.get('easy', 0.0)), 'hard': float(gflops.get('hard', 0.0))}


def load_exported(weights: str, engine: str | None, device: torch.device, precision: str = 'fp32', threads: int = 0,
                  mode: str = 'latency', keep_routes: bool = False) -> ExportedModel:
    """The manifest `weights` run by `engine` (None: the manifest's default) on the CPU; one-line error for another
    device."""
    if device.type != 'cpu':
        raise ExportError(f'{weights}: exported graphs run on the CPU here; pass --device cpu')
    model = ExportedModel(weights, engine, precision, threads, mode, keep_routes)
    LOGGER.info(f'Exported model: {model.description()} ({weights})')
    return model


def _warn_mode_ignored(mode: str) -> None:
    if mode != 'latency':
        LOGGER.warning(f'WARNING: --ov-mode {mode} ignored: it applies to export manifests run by OpenVINO '
                       '(--engine openvino, or an int8 manifest)')


def load_inference_model(opt, nc: int, device: torch.device):
    """What test.py, get_dynamic_thres.py and detect.py run: the export manifest --weight names (--engine, --bf16
    as OpenVINO's precision, --threads, --ov-mode), else --cfg with the checkpoint --weight (load_for_inference, CLI
    memory settings, --threads as torch's)."""
    engine, threads = getattr(opt, 'engine', None), getattr(opt, 'threads', 0) or 0
    mode = getattr(opt, 'ov_mode', 'latency')
    if not is_export_manifest(opt.weight):
        if engine:
            raise ExportError(f'--engine {engine} runs an export manifest (--weight <stem>_export.yaml from '
                              'export.py); leave it out for a .pt checkpoint')
        if threads:
            torch.set_num_threads(threads)
        _warn_mode_ignored(mode)
        from .inference import load_for_inference
        return load_for_inference(opt.cfg, opt.weight, nc, device, opt.compile, opt.bf16, retain_memory=True)
    if getattr(opt, 'compile', None):
        raise ExportError('--compile applies to PyTorch checkpoints; an export manifest runs in its own engine')
    if opt.bf16 and engine not in (None, 'openvino'):
        raise ExportError(f'--bf16 with an export manifest sets OpenVINO\'s precision; --engine {engine} runs fp32 '
                          'only: pass --engine openvino or drop --bf16')
    engine = engine or ('openvino' if opt.bf16 else None)  # --bf16 is OpenVINO's precision
    model = load_exported(opt.weight, engine, device, 'bf16' if opt.bf16 else 'fp32', threads, mode,
                          opt.bf16 == 'keep-routes')
    if model.engine != 'openvino':
        _warn_mode_ignored(mode)
    if model.yaml['nc'] != nc:
        raise ExportError(f'{opt.weight}: exported for {model.yaml["nc"]} classes, the data has {nc}; use the '
                          'matching data YAML (or --num-classes) or re-export')
    return model
