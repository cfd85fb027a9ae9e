"""The OpenVINO export and int8 checks (tests/openvino_checks.py), run in their own interpreter.

A process in which OpenVINO has compiled a model cannot fork safely: a forked child hangs or crashes at exit
(seen with DataLoader workers, which test.py therefore avoids for exported models). The suite's worker processes go
on to run training tests that fork loader workers, so these checks run in a fresh `python -m pytest` instead."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def run_checks_in_own_interpreter(name: str) -> None:
    """Every test of tests/<name> passes in a fresh `python -m pytest` (its output is shown when one does not)."""
    pytest.importorskip('openvino', reason='openvino not installed (requirements.txt)')
    pytest.importorskip('nncf', reason='nncf not installed (requirements.txt)')
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider',
                           str(ROOT / 'tests' / name)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''
    assert done.returncode == 0 and ' passed' in summary and 'failed' not in summary, \
        done.stdout[-6000:] + done.stderr[-2000:]


def test_openvino_checks_pass_in_their_own_interpreter() -> None:
    """tests/openvino_checks.py: export, int8, the scripts on manifests, bad input."""
    run_checks_in_own_interpreter('openvino_checks.py')
