"""Reading and checking a model config (the reference's models/yolo.py (parse_model, Model)) before any module is
built."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from utils.yaml_io import read_yaml_mapping

from .graph import SECTIONS, ConfigError


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int_list(cfg: dict, key: str, source: str, required: bool) -> None:
    value = cfg.get(key)
    if value is None and not required:
        return
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f'{source}: {key} must be a list of integers, got {value!r}')


def _check_anchors(anchors: Any, source: str) -> None:
    if isinstance(anchors, int) and not isinstance(anchors, bool) and anchors > 0:
        return
    ok = isinstance(anchors, list) and anchors and all(
        isinstance(level, list) and level and len(level) % 2 == 0 and all(_is_number(a) for a in level)
        and len(level) == len(anchors[0]) for level in anchors)
    if not ok:
        raise ConfigError(f'{source}: anchors must be a list of [w0,h0, w1,h1, ...] per level, got {anchors!r}')


def _check_router(cfg: dict, source: str) -> None:
    _check_int_list(cfg, 'router_ins', source, required=True)
    _check_int_list(cfg, 'router_channels', source, required=True)
    if len(cfg['router_ins']) != len(cfg['router_channels']):
        raise ConfigError(f'{source}: router_ins and router_channels must have the same length')
    reduction = cfg.get('router_reduction', 4)
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1:
        raise ConfigError(f'{source}: router_reduction must be a positive integer, got {reduction!r}')


def load_config(cfg: str | Path | dict) -> tuple[dict, str]:
    """Return (a private copy of the config dict, a name for messages). Raises ConfigError on bad input."""
    if isinstance(cfg, dict):
        data, source = copy.deepcopy(cfg), '<dict config>'
    else:
        source = str(cfg)
        data = read_yaml_mapping(cfg, ConfigError, 'a model config',
                                 f'{source}: model config not found; pass --cfg with a file such as cfg/dy-yolov7-step2.yaml')
    validate_config(data, source)
    return data, source


def validate_config(cfg: dict, source: str) -> None:
    """Check top-level keys and types (rows are checked by the graph builder)."""
    for spec in SECTIONS:
        if spec.name not in cfg:
            raise ConfigError(f'{source}: missing section {spec.name!r}')
    nc = cfg.get('nc')
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ConfigError(f'{source}: nc must be a positive integer, got {nc!r}')
    for key in ('depth_multiple', 'width_multiple'):
        cfg.setdefault(key, 1.0)
        if not _is_number(cfg[key]) or cfg[key] <= 0:
            raise ConfigError(f'{source}: {key} must be a positive number, got {cfg[key]!r}')
    _check_anchors(cfg.get('anchors'), source)
    n_rows = len(cfg['backbone']) if isinstance(cfg['backbone'], list) else 0
    cfg.setdefault('n_first_layers', n_rows)
    if cfg['n_first_layers'] != n_rows:
        raise ConfigError(f'{source}: n_first_layers is {cfg["n_first_layers"]!r} but backbone has {n_rows} rows')
    for key in ('b1_save', 'b2_save'):
        _check_int_list(cfg, key, source, required=False)
    if cfg.get('dynamic', False):
        _check_router(cfg, source)
