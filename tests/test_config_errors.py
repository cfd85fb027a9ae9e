"""Bad model configs fail at build time with one line naming file, section and row; nothing runs."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from models.graph import ConfigError
from models.yolo import Model
from tests.helpers import tiny_config


def _build_error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        Model(cfg)
    message = str(info.value)
    assert '\n' not in message
    return message


def _with_row(section: str, row: int, value) -> dict:
    cfg = tiny_config()
    cfg[section][row] = value
    return cfg


def test_unknown_module_in_file_names_file_section_row(tmp_path: Path) -> None:
    cfg = _with_row('head2', 3, [-1, 1, 'Foo', [16, 1, 1]])
    path = tmp_path / 'x.yaml'
    path.write_text(yaml.safe_dump(cfg))
    assert _build_error(path) == f"{path} head2 row 3: unknown module 'Foo'"


@pytest.mark.parametrize('where', ['module', 'argument', 'nested argument', 'from'])
def test_python_in_config_is_never_run(tmp_path: Path, where: str) -> None:
    marker = tmp_path / 'pwned'
    code = f"__import__('os').system('touch {marker}')"
    rows = {'module': [-1, 1, code, []], 'argument': [-1, 1, 'Conv', [code, 3, 1]],
            'nested argument': [2, 1, 'CBLinear', [[code]]], 'from': [code, 1, 'Conv', [16, 3, 1]]}
    cfg = _with_row('dual_backbone' if where == 'nested argument' else 'head', 0 if where == 'nested argument' else 3,
                    rows[where])
    path = tmp_path / 'evil.yaml'
    path.write_text(yaml.safe_dump(cfg))
    message = _build_error(path)
    assert message.startswith(f'{path} ')
    assert not marker.exists()


@pytest.mark.parametrize('section,row,value,expected', [
    ('head', 3, [-1, 1, 'Conv'], 'head row 3: expected [from, number, module, args]'),
    ('head', 3, [99, 1, 'Conv', [16, 1, 1]], 'head row 3: from-index 99 is out of range'),
    ('head', 3, [-9, 1, 'Conv', [16, 1, 1]], 'head row 3: from-index -9 is out of range'),
    ('head2', 0, [8, 1, 'SPPCSPC', [16]], 'head2 row 0: from-index 8 is out of range'),
    ('backbone', 1, [-3, 1, 'Conv', [16, 3, 2]], 'backbone row 1: from-index -3 is out of range'),
    ('head', 3, ['input', 1, 'Conv', [16, 1, 1]], "head row 3: from-index 'input' must be an integer"),
    ('head', 3, [-1, 0, 'Conv', [16, 1, 1]], 'head row 3: number must be a positive integer'),
    ('head', 3, [-1, 1, 'Conv', 16], 'head row 3: args must be a list'),
    ('head', 3, [-1, 1, 'Conv', [16, 1, 1, 0, 1, True, 7, 8]], 'head row 3: cannot build Conv'),
    ('head', 6, [-4, 1, 'RepConv', [16, 5, 1]], 'head row 6: cannot build RepConv'),
    ('head', 3, [-1, 1, 'nn.Upsample', ['None', 2, 'evil']], "head row 3: argument 'evil' is not allowed"),
    ('dual_backbone', 5, [[-5, -4, -1], 1, 'Concat', [1]], 'dual_backbone row 5: reads a CBLinear output'),
])
def test_bad_rows(section: str, row: int, value, expected: str) -> None:
    message = _build_error(_with_row(section, row, value))
    assert message.startswith('<dict config> ' + expected), message


def _mutated(**changes) -> dict:
    cfg = copy.deepcopy(tiny_config())
    for key, value in changes.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    return cfg


@pytest.mark.parametrize('changes,expected', [
    ({'head2': None}, "missing section 'head2'"),
    ({'nc': 0}, 'nc must be a positive integer'),
    ({'anchors': [[10, 13, 16]]}, 'anchors must be a list'),
    ({'n_first_layers': 5}, 'n_first_layers is 5 but backbone has 4 rows'),
    ({'router_channels': [16, 16]}, 'router_channels [16, 16] do not match the channels [16, 32]'),
    ({'router_ins': [1, 9]}, 'router_ins [9] are not backbone layers'),
    ({'router_ins': [1]}, 'router_ins and router_channels must have the same length'),
    ({'keep_input': None}, "dual_backbone: a row reads 'input' but keep_input is not True"),
    ({'depth_multiple': 'x'}, 'depth_multiple must be a positive number'),
])
def test_bad_top_level_keys(changes: dict, expected: str) -> None:
    assert expected in _build_error(_mutated(**changes))


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    assert 'model config not found' in _build_error(tmp_path / 'nope.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('backbone: [[-1, 1, Conv\n')
    assert _build_error(bad).startswith(f'{bad}: not valid YAML')
    listed = tmp_path / 'list.yaml'
    listed.write_text('- 1\n- 2\n')
    assert 'must be a mapping' in _build_error(listed)


def test_nc_argument_overrides_yaml() -> None:
    model = Model(tiny_config(nc=3), nc=5)
    assert model.model_h2[-1].nc == 5 and model.model_h[-1].no == 10 and len(model.names) == 5
