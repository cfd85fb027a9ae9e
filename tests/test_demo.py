"""demo.py end to end: at a toy size (every stage, every output), and at its default size (the README's first
command), where the trained model must reach the mAP floor the README states."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


MAP50_FLOOR = 0.20  # README: default demo, seed 0, 128 validation images; measured 0.269 (all easy) to 0.326


def _demo(tmp_path: Path, *flags: str, threads: str | None = '1',
          timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if threads:
        env.setdefault('OMP_NUM_THREADS', threads)  # two spinning OpenMP threads on 2 shared cores crawl
    return subprocess.run([sys.executable, str(ROOT / 'demo.py'), *flags], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _table(log: list[str]) -> list[list[str]]:
    """The three rows of the demo's table: threshold, easy %, GFLOPs/image, mAP@.5, mAP@.5:.95, ms/image."""
    header = log.index(next(line for line in log if line.split()[:2] == ['threshold', 'easy']))
    return [line.split() for line in log[header + 1:header + 4]]


def test_demo_runs_every_stage_and_reports_where_outputs_are(tmp_path: Path) -> None:
    done = _demo(tmp_path, '--images', '30', '--img', '64', '--epochs', '2', '--router-epochs', '1',
                 '--batch-size', '8', '--device', 'cpu')
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / 'runs' / 'demo'
    log = done.stderr.replace('\r', '\n').splitlines()
    for script in ('train_step1.py', 'train_step2.py', 'get_dynamic_thres.py', 'detect.py'):
        assert any(line.startswith(f'  = python {script} ') for line in log), script  # the equivalent command
    table = _table(log)
    sweep = list(csv.DictReader(open(out / 'sweep' / 'sweep.csv')))
    assert len(sweep) == 11 and len(set(r['threshold'] for r in sweep)) >= 2
    assert [row[0] for row in table] == ['0', f'{float(sweep[5]["threshold"]):.4g}', '1']
    assert table[0][1] == '100%' and table[2][1] == '0%'  # threshold 0: all easy; 1: all hard
    assert float(table[0][2]) < float(table[2][2])  # the easy path costs less
    assert all(0 <= float(v) <= 1 for row in table for v in row[3:5]) and all(float(r[5]) > 0 for r in table)
    thresholds = (out / 'sweep' / 'thresholds.txt').read_text().splitlines()
    assert thresholds[0] == '*' * 51 and len(thresholds[1].split()) == 11
    assert (out / 'sweep' / 'sweep.png').is_file()
    samples = sorted(p.name for p in (out / 'samples').glob('*.jpg'))
    assert samples and sorted(p.name for p in (out / 'detect').glob('*.jpg')) == samples
    assert sum(' path, Done.' in line for line in log) == len(samples)  # one line per image, route included
    step2 = torch.load(out / 'train' / 'step2' / 'weights' / 'last.pt', map_location='cpu', weights_only=True)
    assert any('router' in k for k in step2['model'])
    for line in ('data ', 'step 1 ', 'step 2 ', 'thresholds ', 'sweep plot ', 'detections '):
        assert any(entry.startswith(f'  {line}') for entry in log), line


def test_bad_demo_flags_are_one_line(tmp_path: Path) -> None:
    done = _demo(tmp_path, '--img', '100')
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        '--img must be a multiple of 32 and at least 64, got 100')
    assert not (tmp_path / 'runs').exists()


def test_default_demo_reaches_the_readme_floor(tmp_path: Path) -> None:
    """The README's first command as a user runs it (4 min on 2 cores), validated on held-out images: the test
    that the detector learns (an untrained tiny model scores about 0.0003 mAP@.5)."""
    done = _demo(tmp_path, threads=None, timeout=1800)  # 4 min alone; a busy machine must not fail it
    assert done.returncode == 0, done.stderr[-3000:]
    table = _table(done.stderr.replace('\r', '\n').splitlines())
    map50 = [float(row[3]) for row in table]
    assert min(map50) >= MAP50_FLOOR, table
    assert [row[1] for row in table] == ['100%', '50%', '0%']
