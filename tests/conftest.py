"""Suite-wide set-up: under pytest-xdist (the README's command runs two workers), each worker computes on one
thread, so that two workers share 2 cores without OpenMP threads spin-waiting on each other."""
from __future__ import annotations

import os

import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)
