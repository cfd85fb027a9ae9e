"""One graph builder for the four config sections (backbone, dual_backbone, head, head2), the reference's
models/yolo.py (parse_model, Model).

Module names resolve through an explicit registry and only the symbols `nc`, `anchors` and `None` are
substituted in arguments: a config file is data and can never run code.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utils.errors import UserError

from .common import MP, SPPCSPC, CBFuse, CBLinear, Concat, Conv, ConvCheckpoint, ReOrg, RepConv, Shortcut
from .detect import IDetect


class ConfigError(UserError, ValueError):
    """A model config that cannot be built; the message is one line naming file, section and row."""


INPUT = 'input'


@dataclass(frozen=True)
class Ref:
    """Where a row reads from: `source` is a section key ('b1', 'b2', 'h', 'h2') or 'input'."""
    source: str
    index: int = 0


@dataclass(frozen=True)
class SectionSpec:
    """A config section: its storage key, state_dict attribute, and what a non-negative `from` names."""
    name: str
    key: str
    attr: str
    absolute_source: str


SECTIONS = (
    SectionSpec('backbone', 'b1', 'model_b', 'b1'),
    SectionSpec('dual_backbone', 'b2', 'model_b2', 'b1'),
    SectionSpec('head', 'h', 'model_h', 'b1'),
    SectionSpec('head2', 'h2', 'model_h2', 'b2'),
)


@dataclass(frozen=True)
class ModuleKind:
    """Registry entry: the class, how channels flow through it, and which string arguments it accepts."""
    cls: Callable[..., nn.Module]
    role: str
    strings: dict[int, frozenset[str]] = field(default_factory=dict)


_UPSAMPLE_MODES = frozenset({'nearest', 'linear', 'bilinear', 'bicubic', 'trilinear'})
REGISTRY: dict[str, ModuleKind] = {
    'Conv': ModuleKind(Conv, 'conv'),
    'ConvCheckpoint': ModuleKind(ConvCheckpoint, 'conv'),
    'RepConv': ModuleKind(RepConv, 'conv'),
    'nn.Conv2d': ModuleKind(nn.Conv2d, 'conv'),
    'SPPCSPC': ModuleKind(SPPCSPC, 'spp'),
    'Concat': ModuleKind(Concat, 'concat'),
    'Shortcut': ModuleKind(Shortcut, 'shortcut'),
    'MP': ModuleKind(MP, 'same'),
    'ReOrg': ModuleKind(ReOrg, 'reorg'),
    'nn.Upsample': ModuleKind(nn.Upsample, 'same', {2: _UPSAMPLE_MODES}),
    'nn.BatchNorm2d': ModuleKind(nn.BatchNorm2d, 'bn'),
    'CBLinear': ModuleKind(CBLinear, 'cblinear'),
    'CBFuse': ModuleKind(CBFuse, 'cbfuse'),
    'IDetect': ModuleKind(IDetect, 'detect'),
}


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of divisor that is ≥ x."""
    return math.ceil(x / divisor) * divisor


class Section(nn.ModuleList):
    """The built rows of one config section; forward runs them in order.

    `refs[i]` lists where row i reads from; `multi[i]` says whether it takes a list. `keep` holds the rows whose
    outputs later rows or other sections read (set by the model); only those and the last output are stored.
    `input_dtype` (None: no cast) casts floating tensors read from other sections, set where sections run in
    different dtypes (models.inference, `--bf16 keep-routes`).
    """

    def __init__(self, spec: SectionSpec, layers: list[nn.Module], refs: list[list[Ref]], multi: list[bool],
                 channels: list[Any]):
        super().__init__(layers)
        self.spec = spec
        self.refs = refs
        self.multi = multi
        self.channels = channels
        self.keep: set[int] = set()
        self.input_dtype: torch.dtype | None = None

    def forward(self, sources: dict[str, Any]) -> list[Any]:
        """Run every row; `sources` maps 'input' and earlier section keys to their output lists."""
        outs: list[Any] = [None] * len(self)
        prev = None
        own = self.spec.key
        for i, layer in enumerate(self):
            inputs = [prev if (r.source == own and r.index == i - 1) else
                      outs[r.index] if r.source == own else self._cast(sources[r.source][r.index])
                      for r in self.refs[i]]
            prev = layer(inputs if self.multi[i] else inputs[0])
            if i in self.keep:
                outs[i] = prev
        outs[-1] = prev
        return outs

    def _cast(self, x: Any) -> Any:
        if self.input_dtype is None or not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        return x.to(self.input_dtype)


class _RowError(Exception):
    """Raised inside row parsing; the builder adds file, section and row to the message."""


def _substitute(value: Any, pos: int, kind: ModuleKind, nc: int, anchors: Any) -> Any:
    if isinstance(value, list):
        return [_substitute(v, -1, kind, nc, anchors) for v in value]
    if not isinstance(value, str):
        return value
    known = {'nc': nc, 'anchors': anchors, 'None': None}
    if value in known:
        return known[value]
    if value in kind.strings.get(pos, ()):
        return value
    raise _RowError(f'argument {value!r} is not allowed here (only numbers, lists, nc, anchors and None)')


def _parse_from(raw: Any, spec: SectionSpec, row: int, sizes: dict[str, int]) -> tuple[list[Ref], bool]:
    multi = isinstance(raw, list)
    items = raw if multi else [raw]
    if not items:
        raise _RowError('empty from-list')
    refs = []
    for f in items:
        if f == INPUT and spec.key == 'b2':
            refs.append(Ref(INPUT))
            continue
        if isinstance(f, bool) or not isinstance(f, int):
            raise _RowError(f'from-index {f!r} must be an integer' + (" or 'input'" if spec.key == 'b2' else ''))
        if f < 0:
            if spec.key == 'b1' and row + f == -1:
                refs.append(Ref(INPUT))
                continue
            target, index, limit = spec.key, row + f, row
        else:
            target = spec.absolute_source
            index, limit = f, (row if target == spec.key else sizes[target])
        if not 0 <= index < limit:
            raise _RowError(f'from-index {f} is out of range')
        refs.append(Ref(target, index))
    return refs, multi


def _build_layer(kind: ModuleKind, args: list, c_in: list[Any], n: int, width: float, no: int) -> tuple[nn.Module, Any]:
    """Instantiate one row; returns (module, output channels)."""
    role = kind.role
    if role in ('conv', 'spp', 'reorg', 'cblinear', 'bn', 'same') and len(c_in) != 1:
        raise _RowError(f'takes one input, got {len(c_in)}')
    if role in ('conv', 'spp'):
        if not args:
            raise _RowError('needs the output channels as first argument')
        c2 = args[0]
        if c2 != no:
            c2 = make_divisible(c2 * width, 8)
        args = [c_in[0], c2, *args[1:]]
        if role == 'spp':
            args.insert(2, n)
            n = 1
        c_out = c2
    elif role == 'concat':
        c_out = sum(c_in)
    elif role == 'shortcut':
        c_out = c_in[0]
    elif role == 'reorg':
        c_out = 4 * c_in[0]
    elif role == 'cblinear':
        args = [c_in[0], *args]
        c_out = list(args[1])
    elif role == 'cbfuse':
        c_out = c_in[-1]
    elif role == 'detect':
        args = list(args)
        if len(args) > 1 and isinstance(args[1], int):
            args[1] = [list(range(args[1] * 2))] * len(c_in)
        args.append(list(c_in))
        c_out = None
    elif role == 'bn':
        args = [c_in[0]]
        c_out = c_in[0]
    else:
        c_out = c_in[0]
    module = nn.Sequential(*(kind.cls(*args) for _ in range(n))) if n > 1 else kind.cls(*args)
    return module, c_out


def build_section(spec: SectionSpec, rows: Any, cfg: dict, channels: dict[str, list[Any]], source: str) -> Section:
    """Build one section from its rows; `channels` holds the output channels of already-built sections and
    'input' (the image channels). Raises ConfigError naming `source`, the section and the row."""
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f'{source} {spec.name}: expected a non-empty list of rows')
    nc, anchors = cfg['nc'], cfg['anchors']
    no = (len(anchors[0]) // 2 if isinstance(anchors, list) else anchors) * (nc + 5)
    sizes = {k: len(v) for k, v in channels.items()}
    layers, all_refs, multis, own_ch = [], [], [], []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, list) or len(row) != 4:
                raise _RowError(f'expected [from, number, module, args], got {row!r}')
            raw_from, number, name, args = row
            if not isinstance(name, str) or name not in REGISTRY:
                raise _RowError(f'unknown module {name!r}')
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise _RowError(f'number must be a positive integer, got {number!r}')
            if not isinstance(args, list):
                raise _RowError(f'args must be a list, got {args!r}')
            kind = REGISTRY[name]
            refs, multi = _parse_from(raw_from, spec, i, sizes)
            args = [_substitute(a, pos, kind, nc, anchors) for pos, a in enumerate(args)]
            c_in = [own_ch[r.index] if r.source == spec.key else channels[r.source][r.index] for r in refs]
            if kind.role not in ('cbfuse',) and any(isinstance(c, list) for c in c_in):
                raise _RowError('reads a CBLinear output; only CBFuse can')
            n = max(round(number * cfg['depth_multiple']), 1) if number > 1 else number
            module, c_out = _build_layer(kind, args, c_in, n, cfg['width_multiple'], no)
        except _RowError as e:
            raise ConfigError(f'{source} {spec.name} row {i}: {e}') from None
        except (TypeError, ValueError, IndexError, RuntimeError) as e:
            raise ConfigError(f'{source} {spec.name} row {i}: cannot build {name} with args {args!r}: {e}') from None
        module.i, module.f, module.type = i, raw_from, name
        layers.append(module)
        all_refs.append(refs)
        multis.append(multi)
        own_ch.append(c_out)
    return Section(spec, layers, all_refs, multis, own_ch)


