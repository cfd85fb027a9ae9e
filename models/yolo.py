"""The DynamicDet model: two cascaded YOLOv7 backbones, two heads and a router (the reference's
models/yolo.py: parse_model, Model and its forward).

Faithful to the reference: architecture, state_dict keys, train/eval outputs, fuse().
Extension: batched routing (each image of a batch takes its own path; the reference accepts batch 1 only).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import Conv, RepConv
from .config import load_config
from .detect import IDetect
from .graph import INPUT, SECTIONS, ConfigError, Section, build_section
from .router import AdaptiveRouter

LOGGER = logging.getLogger(__name__)
PATHS = ('easy', 'hard', 'all')


class Model(nn.Module):
    """A DynamicDet detector built from a YAML config (path or dict).

    Attributes: `dynamic` (has a router), `dy_thres` (images with score ≥ dy_thres take the easy path),
    `get_score` (forward returns only the (B, 1) router scores), `stride` (head strides), `names`,
    `chunk_pixels` (extension: eval batches run in chunks of at most this many pixels; 0 = whole batch).
    """

    def __init__(self, cfg: str | Path | dict = 'cfg/dy-yolov7-step2.yaml', ch: int = 3, nc: int | None = None,
                 anchors: Any = None):
        super().__init__()
        self.yaml, self.yaml_file = load_config(cfg)
        if nc is not None and nc != self.yaml['nc']:
            LOGGER.info('Overriding %s nc=%d with nc=%d', self.yaml_file, self.yaml['nc'], nc)
            self.yaml['nc'] = nc
        if anchors is not None:
            self.yaml['anchors'] = anchors
        ch = self.yaml['ch'] = self.yaml.get('ch', ch)
        self.dynamic = bool(self.yaml.get('dynamic', False))
        self.dy_thres = 0.5
        self.get_score = False
        self.last_easy: torch.Tensor | None = None  # (B,) bool: which images of the last routed batch took the easy path
        self.last_score: torch.Tensor | None = None  # (B,) their router scores
        self.chunk_pixels = 0  # set for the CPU by models.inference.prepare_for_inference
        self.input_format = torch.contiguous_format  # eval inputs' layout; channels_last after prepare_for_inference
        if self.dynamic:  # created first: the reference's state_dict lists the router first
            self.router = AdaptiveRouter(self.yaml['router_channels'], 1, self.yaml.get('router_reduction', 4))
            self.router_ins = list(self.yaml['router_ins'])
        channels: dict[str, list[Any]] = {INPUT: [ch]}
        for spec in SECTIONS:
            section = build_section(spec, self.yaml[spec.name], self.yaml, channels, self.yaml_file)
            setattr(self, spec.attr, section)
            channels[spec.key] = section.channels
        self._check_wiring(channels)
        self._mark_kept_outputs()
        self.names = [str(i) for i in range(self.yaml['nc'])]
        self._init_strides_and_biases(ch)
        self._init_weights()
        if LOGGER.isEnabledFor(logging.INFO):
            self.info()

    # ----------------------------------------------------------------------------------------- building
    @property
    def sections(self) -> dict[str, Section]:
        """Section key ('b1', 'b2', 'h', 'h2') → Section."""
        return {spec.key: getattr(self, spec.attr) for spec in SECTIONS}

    @property
    def detect_layers(self) -> tuple[IDetect, IDetect]:
        """(head 1's, head 2's) detection layers."""
        return self.model_h[-1], self.model_h2[-1]

    def _check_wiring(self, channels: dict[str, list[Any]]) -> None:
        src = self.yaml_file
        for name, section in (('head', self.model_h), ('head2', self.model_h2)):
            if not isinstance(section[-1], IDetect):
                raise ConfigError(f'{src} {name}: the last row must be IDetect, got {section[-1].type}')
        if self.dynamic:
            b1 = channels['b1']
            bad = [i for i in self.router_ins if not 0 <= i < len(b1)]
            if bad:
                raise ConfigError(f'{src}: router_ins {bad} are not backbone layers (0..{len(b1) - 1})')
            actual = [b1[i] for i in self.router_ins]
            if actual != list(self.yaml['router_channels']):
                raise ConfigError(f'{src}: router_channels {self.yaml["router_channels"]} do not match the '
                                  f'channels {actual} of router_ins {self.router_ins}')
        uses_input = any(r.source == INPUT for refs in self.model_b2.refs for r in refs)
        if uses_input and not self.yaml.get('keep_input', False):
            raise ConfigError(f"{src} dual_backbone: a row reads 'input' but keep_input is not True")

    def _mark_kept_outputs(self) -> None:
        sections = self.sections
        for key, section in sections.items():
            for i, refs in enumerate(section.refs):
                for r in refs:
                    if r.source != INPUT and not (r.source == key and r.index == i - 1):
                        sections[r.source].keep.add(r.index)
        if self.dynamic:
            self.model_b.keep.update(self.router_ins)

    @torch.no_grad()
    def _init_strides_and_biases(self, ch: int) -> None:
        """Strides from a 256×256 probe of head 1 (eval mode, so BN statistics stay untouched), anchors to
        grid units, prior biases (the reference's models/yolo.py (Model._initialize_biases))."""
        size = 256
        det1, det2 = self.detect_layers
        for det in (det1, det2):
            det.stride = torch.ones(det.nl)
        was_training = self.training
        self.eval()
        _, maps = self._easy(self.model_b({INPUT: [torch.zeros(1, ch, size, size)]}))
        self.train(was_training)
        stride = torch.tensor([size / m.shape[2] for m in maps])
        for det in (det1, det2):
            det.stride = stride.clone()
            _check_anchor_order(det)
            det.anchors /= det.stride.view(-1, 1, 1)
            det.initialize_biases()
        self.stride = stride

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
            elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6)):
                m.inplace = True

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, augment: bool = False):
        """Train: raw maps of both heads (+ router score when dynamic). Eval: (decoded, raw maps) of the
        path each image's score selects; `get_score`: the (B, 1) scores only."""
        if not self.training:  # a plain NCHW batch gets the layout the prepared weights run fastest with
            x = x.contiguous(memory_format=self.input_format)
            if x.shape[0] > self.eval_chunk(x):
                return self._forward_chunks(x, self.eval_chunk(x), augment)
        if augment:
            return self._forward_augment(x)
        b1, score = self._backbone(x)
        if self.get_score:
            return score
        if self.training:
            b2 = self.model_b2({INPUT: [x], 'b1': b1})
            maps = self.model_h({'b1': b1})[-1] + self.model_h2({'b2': b2})[-1]
            return (maps, score) if self.dynamic else maps
        if not self.dynamic:
            return self._hard(x, b1)
        return self._route(x, b1, score)

    def eval_chunk(self, x: torch.Tensor) -> int:
        """Images per chunk when evaluating the batch x: at most `chunk_pixels` pixels (the whole batch when 0)."""
        return max(1, self.chunk_pixels // (x.shape[-2] * x.shape[-1])) if self.chunk_pixels else x.shape[0]

    def _forward_chunks(self, x: torch.Tensor, chunk: int, augment: bool):
        """The eval forward chunk by chunk, outputs and `last_easy` concatenated in input order."""
        outputs, easy, scores = [], [], []
        for part in x.split(chunk):
            self.last_easy = self.last_score = None
            outputs.append(self.forward(part, augment))
            easy.append(self.last_easy)
            scores.append(self.last_score)
        self.last_easy = None if any(e is None for e in easy) else torch.cat(easy)
        self.last_score = None if any(s is None for s in scores) else torch.cat(scores)
        return cat_outputs(outputs)

    def forward_path(self, x: torch.Tensor, path: str):
        """Run one path for the whole batch whatever the scores: 'easy' (backbone 1 + router + head 1),
        'hard' (backbone 1 + router + backbone 2 + head 2) or 'all' (everything; returns both heads' outputs).
        Used for profiling and by callers that already know the route."""
        if path not in PATHS:
            raise ValueError(f'path must be one of {PATHS}, got {path!r}')
        b1, _ = self._backbone(x)
        if path == 'easy':
            return self._easy(b1)
        if path == 'hard':
            return self._hard(x, b1)
        return self._hard(x, b1), self._easy(b1)

    def _backbone(self, x: torch.Tensor) -> tuple[list, torch.Tensor | None]:
        b1 = self.model_b({INPUT: [x]})
        return b1, (self.router([b1[i] for i in self.router_ins]) if self.dynamic else None)

    def _easy(self, b1: list) -> Any:
        return self.model_h({'b1': b1})[-1]

    def _hard(self, x: torch.Tensor, b1: list) -> Any:
        return self.model_h2({'b2': self.model_b2({INPUT: [x], 'b1': b1})})[-1]

    def _route(self, x: torch.Tensor, b1: list, score: torch.Tensor):
        easy = score[:, 0] >= self.dy_thres
        self.last_easy, self.last_score = easy, score[:, 0]  # read by evaluators and the predictor
        n_easy = int(easy.sum())
        if n_easy == x.shape[0]:
            return self._easy(b1)
        if n_easy == 0:
            return self._hard(x, b1)
        idx_easy, idx_hard = easy.nonzero()[:, 0], (~easy).nonzero()[:, 0]
        out_easy = self._easy(_take(b1, idx_easy))
        out_hard = self._hard(x.index_select(0, idx_hard), _take(b1, idx_hard))
        return _merge(x.shape[0], (idx_easy, out_easy), (idx_hard, out_hard))

    def _forward_augment(self, x: torch.Tensor):
        """Test-time augmentation: scales 1, 0.83 (flipped left-right), 0.67; returns (decoded, None)."""
        h, w = x.shape[-2:]
        gs = int(self.stride.max())
        outputs = []
        for scale, flip in zip((1, 0.83, 0.67), (False, True, False)):
            xi = scale_img(x.flip(3) if flip else x, scale, gs=gs)
            yi = self.forward(xi)[0]
            yi[..., :4] /= scale
            if flip:
                yi[..., 0] = w - yi[..., 0]
            outputs.append(yi)
        return torch.cat(outputs, 1), None

    # ----------------------------------------------------------------------------------- utilities
    def fuse(self) -> Model:
        """Fold Conv+BN, re-parameterise RepConv, fold IDetect implicits (in place); returns self."""
        for m in list(self.modules()):
            if isinstance(m, (Conv, RepConv, IDetect)):
                m.fuse()
        if LOGGER.isEnabledFor(logging.INFO):
            self.info()
        return self

    def flops(self, img_size: int | tuple[int, int] = 640) -> dict[str, float]:
        """GFLOPs per path of the fused model on one img_size image, counted by thop as the reference does."""
        from .profile import path_gflops
        return path_gflops(self, img_size)

    def info(self) -> None:
        """Log the reference's model summary line."""
        from .profile import summary_line
        LOGGER.info(summary_line(self))


def _check_anchor_order(det: IDetect) -> None:
    area = det.anchor_grid.prod(-1).view(-1)
    if torch.sign(area[-1] - area[0]) != torch.sign(det.stride[-1] - det.stride[0]):
        LOGGER.info('Reversing anchor order')
        det.anchors[:] = det.anchors.flip(0)
        det.anchor_grid[:] = det.anchor_grid.flip(0)


def _take(outputs: list, idx: torch.Tensor) -> list:
    """Select batch rows idx from every stored section output (None stays None)."""
    return [None if t is None else t.index_select(0, idx) for t in outputs]


def cat_outputs(outputs: list):
    """Concatenate along the batch axis outputs of the same structure (tensors, tuples/lists of them, None)."""
    first = outputs[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    return type(first)(cat_outputs(list(parts)) for parts in zip(*outputs))


def _merge(batch: int, *parts: tuple[torch.Tensor, Any]):
    """Reassemble per-path (decoded, raw maps) outputs into input order."""
    first = parts[0][1]
    decoded = first[0].new_empty((batch, *first[0].shape[1:]))
    maps = [m.new_empty((batch, *m.shape[1:])) for m in first[1]]
    for idx, (dec, raw) in parts:
        decoded[idx] = dec
        for merged, level in zip(maps, raw):
            merged[idx] = level
    return decoded, maps


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Bilinear-resize a (B, C, H, W) batch by ratio and pad right/bottom with 0.447 to a multiple of gs."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    size = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=size, mode='bilinear', align_corners=False)
    if not same_shape:
        h, w = (math.ceil(v * ratio / gs) * gs for v in (h, w))
    return F.pad(img, [0, w - size[1], 0, h - size[0]], value=0.447)
