"""Every fenced `python …` shell command of README.md and docs/*.md, checked as written (issue 36).

Commands are taken from the fenced shell blocks (```bash, ```sh, ```console and bare ```; never ```python, ```text or
```yaml): backslash-continued lines joined, quoted multi-line strings (`python -c "…"`) kept whole, `$ ` prompts and
`# …` comments dropped, chains split at `&&`, `||`, `;` and `|`. Each is classified:

- skipped, with its reason: the test suite itself, an install step, `../shared`, a GPU (`--device 0`), a placeholder
  for the user's own input (`<DY_THRESHOLD>`, `path/to/…`), a shell variable set by another command (`$W`), or a
  path a fresh clone lacks that is a download or another command's output (weights/…, coco/…, ../datasets/…,
  runs/…, data/coco.yaml's images). A path an earlier command of the same block writes (its --out) is treated as
  that command's output: skipped too, never re-pointed.
- runnable: run from the repository root, as written, with `sys.executable` for `python` and only two kinds of
  appended flags (argparse keeps a repeated flag's last value): the script's own output flag (OUTPUT_FLAG), pointed
  at tmp_path so that nothing is written into the repository, and, for a command that would take minutes at its own
  size, the script's smallest toy-size flags (TOY_FLAGS). Each must exit 0.

Every command, skipped or not, must also name only paths that are in a fresh clone (tracked or new, not git-ignored)
or under a known download/output location (an unknown missing path is a docs error: the int8 example's
`--source inference/images` was one), and its flags must parse with its script's own parser (placeholders filled in).

Runnable today (2 distinct): the getting-started page's no-download detect.py and `python -m utils.data.synthetic`
(both at their own size). `python demo.py` (README.md, docs/getting_started.md) is skipped here because
tests/test_demo.py runs it at toy size, every stage: running it again cost 13 s of the suite's 5 minutes. Run with -s (or -rA) to see every command
found and its reason.
"""
from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {'', 'bash', 'sh', 'shell', 'console'}
SEPARATORS = {'&&', '||', ';', '|'}
# Floors under the counts observed when this test was written (52 commands found, 4 runnable of which 3 distinct): a
# docs parsing or classification regression drops below them; docs edits that drop a few commands do not.
MIN_FOUND, MIN_RUNNABLE = 40, 2
# Appended only to a runnable command that would take minutes as written (argparse keeps the last value); none does
# now (demo.py, the one that would, is skipped: see the module doc).
TOY_FLAGS: dict[str, tuple[str, ...]] = {}
# Each script's output flag, appended as `FLAG tmp_path/<name>` so that a run writes nothing into the repository.
OUTPUT_FLAG: dict[str, str] = {
    'demo.py': '--out', 'detect.py': '--project', 'test.py': '--project', 'get_dynamic_thres.py': '--project',
    'train_step1.py': '--project', 'train_step2.py': '--project', 'export.py': '--out', 'utils.data.synthetic': '--out',
}
# Each script's argv parser (module, function): the flags of every command, skipped or run, must parse.
PARSERS: dict[str, tuple[str, str]] = {
    **{s: (s[:-3], 'parse_opt') for s in ('demo.py', 'detect.py', 'test.py', 'get_dynamic_thres.py', 'export.py',
                                          'train_step1.py', 'train_step2.py')},
    'utils.data.coco2yolo': ('utils.data.coco2yolo', 'parse_args'),
}
# Where a path missing from a fresh clone is expected to come from (a download, or a run's output).
KNOWN_ABSENT = {'weights/': 'a download', 'coco/': 'a download (COCO)', '../datasets/': "the user's own data set",
                'runs/': "another command's output (a training run)",
                'path/to/': "the user's own input (a placeholder)"}
PATH_FLAGS = {'--cfg', '--weight', '--weights', '--data', '--source', '--hyp', '--json', '--router-json'}
OUTPUT_FLAGS = {'--out', '--project', '--name', '--image-list'}
PATH_SUFFIXES = ('.pt', '.yaml', '.yml', '.json', '.txt', '.jpg', '.png', '.xml', '.onnx')


@dataclass(frozen=True)
class DocCommand:
    """One `python …` command of the docs: where it is, its block, its argv (after `python`)."""
    where: str
    block: int
    argv: tuple[str, ...]

    @property
    def text(self) -> str:
        """The command as a shell line."""
        return shlex.join(('python', *self.argv))

    @property
    def script(self) -> str:
        """The script (detect.py) or module (utils.data.synthetic) the command runs; the launched script after a
        `-m torch.distributed.launch`."""
        if self.argv[0] == '-m' and not self.argv[1].startswith('torch.'):
            return self.argv[1]
        return next((a for a in self.argv if a.endswith('.py')), self.argv[0])

    @property
    def script_args(self) -> list[str]:
        """The arguments after the script or module."""
        if self.argv[0] == '-m' and not self.argv[1].startswith('torch.'):
            return list(self.argv[2:])
        return list(self.argv[self.argv.index(self.script) + 1:]) if self.script in self.argv else []


def shell_blocks(text: str) -> list[tuple[int, list[tuple[int, str]]]]:
    """The fenced shell blocks of a markdown text: (opening line number, [(line number, line), …])."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r'\s*```\s*(\S*)', line)
        if fence and current is None:
            current, start = ([] if fence.group(1).lower() in SHELL_LANGS else ['skip']), number
        elif fence:
            if current != ['skip']:
                blocks.append((start, current))
            current = None
        elif current is not None and current != ['skip']:
            current.append((number, line))
    return blocks


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Shell tokens of each logical line (backslash continuations joined, open quotes carried to the next line,
    `$ ` prompts and comments dropped), with the number of its first line."""
    out, pending, first = [], '', 0
    for number, line in lines:
        line = line[2:] if not pending and line.startswith('$ ') else line
        first = number if not pending else first
        if line.endswith('\\') and not line.endswith('\\\\'):
            pending += line[:-1] + ' '
            continue
        pending += line
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: `python -c "` with its code on the next lines (else prose)
            pending = pending + '\n' if re.search(r'(^|[\s;&|(])python\s', pending) else ''
            continue
        if tokens:
            out.append((first, tokens))
        pending = ''
    assert not pending, f'unterminated shell line from line {first}: {pending!r}'
    return out


def split_chain(tokens: list[str]) -> list[list[str]]:
    """A command line cut at &&, ||, ; and | (a `;` glued to a word, as in `for …; do`, cuts too)."""
    parts, current = [], []
    for token in tokens:
        if token in SEPARATORS or token.endswith(';'):
            current += [token[:-1]] if token.endswith(';') and len(token) > 1 else []
            parts.append(current)
            current = []
        else:
            current.append(token)
    return [p for p in parts + [current] if p]


@cache
def doc_commands() -> tuple[DocCommand, ...]:
    """Every `python …` shell command of README.md and docs/*.md, in order."""
    found = []
    for md in [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]:
        for block, lines in shell_blocks(md.read_text(encoding='utf-8')):
            for number, tokens in logical_lines(lines):
                found += [DocCommand(f'{md.relative_to(ROOT)}:{number}', block, tuple(part[1:]))
                          for part in split_chain(tokens) if part[0] == 'python' and len(part) > 1]
    return tuple(found)


def named_paths(command: DocCommand) -> list[str]:
    """The input paths a command names: values of path flags, path-like arguments, and quoted paths in -c code."""
    args, paths = list(command.argv), []
    for i, arg in enumerate(args):
        before = args[i - 1] if i else ''
        if arg.startswith('-') or before in OUTPUT_FLAGS or '://' in arg or arg == command.script:
            continue
        if before == '-c':
            paths += re.findall(r"""['"]([\w.\-/]+(?:/[\w.\-]+|\.ya?ml|\.pt|\.json))['"]""", arg)
        elif before in PATH_FLAGS or '/' in arg or arg.endswith(PATH_SUFFIXES):
            paths += [arg] if arg and not re.search(r'[<$*]', arg) else []
    return paths


@cache
def in_fresh_clone(path: str) -> bool:
    """Whether a path relative to the repository root is there in a fresh clone: on disk, inside the repository, and
    not git-ignored (tracked, or new and to be committed)."""
    full = (ROOT / path).resolve()
    if not full.exists() or ROOT not in full.parents and full != ROOT:
        return False
    try:
        ignored = subprocess.run(['git', 'check-ignore', '-q', str(full)], cwd=ROOT, capture_output=True)
    except OSError:  # no git: what is on disk
        return True
    return ignored.returncode != 0  # 1: not ignored; 128: not a git checkout


def missing_data(yaml_path: str) -> str | None:
    """For a data YAML: its val split's path when that is missing (COCO not downloaded), else None."""
    if not yaml_path.endswith(('.yaml', '.yml')) or not yaml_path.startswith('data/'):
        return None
    data = yaml.safe_load((ROOT / yaml_path).read_text()) or {}
    if not isinstance(data, dict) or 'val' not in data:
        return None
    base = (ROOT / yaml_path).parent / str(data.get('path', ''))
    val = base / str(data['val'])
    return None if val.exists() else os.path.relpath(val, ROOT)


def path_reason(command: DocCommand, earlier_outputs: set[str]) -> str | None:
    """Why a command's named paths keep it from running in a fresh clone (None: they do not); an unknown missing path
    gives 'BROKEN: …', a docs error, ahead of any other reason."""
    reasons = []
    for path in named_paths(command):
        if in_fresh_clone(path):
            data = missing_data(path)
            reasons += [f'needs a download: the images {path} names ({data})'] if data else []
        elif any(path.startswith(out.rstrip('/') + '/') or path == out for out in earlier_outputs):
            reasons.append(f"needs an earlier command's output ({path})")
        else:
            source = next((why for prefix, why in KNOWN_ABSENT.items() if path.startswith(prefix)), None)
            if source is None:
                return f'BROKEN: names {path}, which is neither in a fresh clone nor a known download or output'
            reasons.append(f'needs {source} ({path})')
    return reasons[0] if reasons else None


def skip_reason(command: DocCommand, earlier_outputs: set[str]) -> str | None:
    """Why a command cannot run here as written (None: it can)."""
    argv, text = command.argv, command.text
    device = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '--device'), 'cpu')
    rules = [(argv[:2] == ('-m', 'pytest'), 'the test suite itself (run by pytest, not from within it)'),
             (argv[:2] == ('-m', 'venv'), 'install step (a virtual environment; its chain downloads packages)'),
             ('../shared' in text, 'needs the ../shared folder'),
             (device not in ('cpu', ''), f'needs a GPU (--device {device})'),
             (re.search(r'<[^>]+>|(^|[ =])path/to/', text), "a placeholder for the user's own input"),
             ('$' in text and argv[0] != '-c', "needs a shell variable set by another command ($…)"),
             (argv[0] == 'demo.py', 'run at toy size by tests/test_demo.py, every stage (2-2.5 min as written; the '
                                    "suite's time)")]
    paths = path_reason(command, earlier_outputs)
    if paths and paths.startswith('BROKEN'):
        return paths
    return next((why for bad, why in rules if bad), None) or paths


@cache
def classified() -> tuple[tuple[DocCommand, str | None], ...]:
    """Every command with its skip reason (None: runnable), in order."""
    result, outputs = [], {}
    for command in doc_commands():
        block_outputs = outputs.setdefault((command.where.split(':')[0], command.block), set())
        result.append((command, skip_reason(command, block_outputs)))
        args = command.argv
        block_outputs |= {args[i + 1] for i, a in enumerate(args[:-1]) if a in ('--out', '--image-list')}
    return tuple(result)


def runnable() -> list[DocCommand]:
    """The distinct runnable commands (the first place each is written)."""
    seen: dict[tuple[str, ...], DocCommand] = {}
    for command, reason in classified():
        if reason is None:
            seen.setdefault(command.argv, command)
    return list(seen.values())


def report() -> str:
    """The commands found, each with what this test does with it."""
    return '\n'.join(f'{c.where}: {"RUN" if r is None else "skipped: " + r}\n    {c.text[:150]}'
                     for c, r in classified())


def test_docs_commands_are_found_and_name_only_real_paths() -> None:
    """The docs' commands are all found (a floor), and none names an unknown missing path."""
    found, runs = classified(), runnable()
    print(report())  # shown with pytest -s or -rA: every command and its reason
    assert len(found) >= MIN_FOUND, f'{len(found)} commands found, fewer than {MIN_FOUND}:\n{report()}'
    assert len(runs) >= MIN_RUNNABLE, f'{len(runs)} runnable commands, fewer than {MIN_RUNNABLE}:\n{report()}'
    broken = [f'{c.where}: {r}\n    {c.text}' for c, r in found if r and r.startswith('BROKEN')]
    assert not broken, 'docs commands naming paths that do not exist:\n' + '\n'.join(broken)


def parse_error(command: DocCommand) -> str | None:
    """The script's own argparse error for the command's flags (placeholders and $VARs filled in), or None."""
    if command.script not in PARSERS:
        return None
    module, function = PARSERS[command.script]
    fill = {'<DY_THRESHOLD>': '0.5'}
    args = [fill.get(a, re.sub(r'<[^>]+>|\$\w+', 'x', a)) for a in command.script_args]
    try:
        getattr(importlib.import_module(module), function)(args)
    except SystemExit as e:
        return f'exit {e.code}' if e.code else None
    return None


def test_docs_commands_parse_with_their_scripts_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's flags, skipped or not, are accepted by its script's parser."""
    failures = []
    for command, _ in classified():
        error = parse_error(command)
        if error:
            failures.append(f'{command.where}: {error}: {capsys.readouterr().err.strip()[-300:]}\n    {command.text}')
    assert not failures, 'docs commands whose flags the script refuses:\n' + '\n'.join(failures)


def as_run(command: DocCommand, out: Path) -> list[str]:
    """The command as run: sys.executable for python, then its toy flags and output flag (TOY_FLAGS, OUTPUT_FLAG)."""
    script = command.script
    assert script in OUTPUT_FLAG, f'{command.where}: add {script}\'s output flag to OUTPUT_FLAG:\n    {command.text}'
    return [sys.executable, *command.argv, *TOY_FLAGS.get(script, ()), OUTPUT_FLAG[script], str(out)]


@pytest.mark.parametrize('command', runnable(), ids=lambda c: f'{c.where}:{c.script}')
def test_docs_command_runs_as_written(command: DocCommand, tmp_path: Path) -> None:
    """A runnable docs command exits 0 from the repository root, its outputs under tmp_path."""
    argv = as_run(command, tmp_path / 'out')
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}  # 2 spinning threads crawl
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    tail = '\n'.join(done.stderr.replace('\r', '\n').splitlines()[-25:])
    assert done.returncode == 0, f'{command.where}: exit {done.returncode}\n    {shlex.join(argv)}\n{tail}'
