"""Reading YAML files safely (no code execution), with one-line errors."""
from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml(path: Path, error: type[Exception], what: str) -> object:
    """Parsed YAML of an existing file; `error` with 'PATH: not valid YAML (...)' when it does not parse."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f'{path}: not valid YAML for {what} ({first})') from None


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str, not_found: str) -> dict:
    """Parsed YAML file that must hold a mapping; `error(not_found)` when the file is missing, one line otherwise."""
    if not Path(path).is_file():
        raise error(not_found)
    data = read_yaml(Path(path), error, what)
    if not isinstance(data, dict):
        raise error(f'{path}: {what} must be a mapping of keys, got {type(data).__name__}')
    return data
