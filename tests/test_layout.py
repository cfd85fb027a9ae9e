"""The repository's shape: no import circle among its modules, one base type for every user error."""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('models', 'utils')


def _modules() -> dict[str, Path]:
    """Every module of the packages and the top-level scripts, by dotted name."""
    files = [*ROOT.glob('*.py'), *(f for pkg in PACKAGES for f in (ROOT / pkg).rglob('*.py'))]
    names = {}
    for f in files:
        parts = f.relative_to(ROOT).with_suffix('').parts
        names['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = f
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (functions' lazy imports included)."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
            found |= {m for m in (base, *(f'{base}.{a.name}' for a in node.names)) if m in modules}
    return found - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert 'utils.cli' in graph and 'models.yolo' in graph
    cycle = _cycle(graph)
    assert cycle is None, ' -> '.join(cycle)


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_every_error_a_user_can_fix_is_a_user_error() -> None:
    """The exceptions the scripts report as one line all derive from utils.errors.UserError (what run_cli
    catches); internal ones (ImageLoadError: an image vanished mid-training, handled inside the loader) do not."""
    from utils.errors import UserError
    internal = {'ImageLoadError', '_RowError'}
    seen = []
    for name in _modules():
        if name.split('.')[0] not in PACKAGES:
            continue
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception) and cls_name not in internal:
                seen.append(cls_name)
                assert issubclass(cls, UserError), f'{name}.{cls_name}'
    assert len(seen) >= 14


@pytest.mark.parametrize('script', ['demo', 'train_step1', 'train_step2', 'get_dynamic_thres', 'test', 'detect',
                                    'export'])
def test_every_script_prints_its_help(script: str, capsys) -> None:
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as e:
        module.parse_opt(['--help'])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith('usage:') and '--help' in out


@pytest.mark.parametrize('script,flag,default', [
    ('train_step1', '--epochs', '300'), ('train_step2', '--epochs', '2'), ('test', '--conf-thres', '0.001'),
    ('detect', '--conf-thres', '0.25'), ('get_dynamic_thres', '--task', 'val'), ('export', '--opset', None),
    ('demo', '--batch-size', '8')])
def test_every_script_help_shows_defaults(script: str, flag: str, default: str | None, capsys) -> None:
    """--help ends a flag's help with its default (utils.cli.HelpFormatter), keeps the description's example lines
    as written, and says nothing for defaults that mean nothing (None, a switch's False, '')."""
    module = importlib.import_module(script)
    with pytest.raises(SystemExit):
        module.parse_opt(['--help'])
    out = capsys.readouterr().out
    if default is None:  # export's --opset default comes from models.export
        from models.export import DEFAULT_OPSET
        default = str(DEFAULT_OPSET)
    help_text = ' '.join(out.split(f'\n  {flag} ', 1)[1].split('\n  --', 1)[0].split())  # the flag's help, unwrapped
    assert f'(default: {default})' in help_text, help_text
    assert '(default: None)' not in out and '(default: False)' not in out and '(default: )' not in out
    assert f'\n    python {script}.py' in out  # the example command, indented as written


def test_detect_default_source_exists() -> None:
    """detect.py run without --source works on the sample images shipped in the repository."""
    import detect
    from utils.detection.sources import list_sources
    source = detect.parse_opt([]).source
    assert (ROOT / source).is_dir()
    assert len(list_sources(str(ROOT / source))) >= 2


def test_help_formatter_shows_only_defaults_that_say_something() -> None:
    from utils.cli import HelpFormatter
    p = argparse.ArgumentParser(prog='x', description='line one\n    python x.py --n 3', formatter_class=HelpFormatter)
    p.add_argument('--n', type=int, default=7)  # no help text: the default alone
    p.add_argument('--path', default='', help='a path')
    p.add_argument('--mode', default=None, help='a mode (left out: automatic)')
    p.add_argument('--flag', action='store_true', help='a switch')
    p.add_argument('--sizes', nargs='+', type=int, default=[640], help='sizes')
    text = p.format_help()
    assert '\n    python x.py --n 3\n' in text  # the description as written
    assert '(default: 7)' in text and '(default: [640])' in text
    assert text.count('(default:') == 2  # nothing for '', None or a switch
