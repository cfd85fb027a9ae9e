"""Process memory for CPU inference (extension, not in the reference): glibc malloc keeps freed blocks for reuse.

glibc serves blocks above its mmap threshold (128 KiB, raised up to 32 MiB as large blocks are freed) with fresh
mmap() calls and unmaps them on free, and trims the heap's free top above its trim threshold. A forward pass of
Dy-YOLOv7 at 640 allocates and frees activations of tens of MB in every layer, so every pass page-faulted them in
again: on a 2-core AMD EPYC, 33,000 minor faults and 71 ms of system time per easy-path forward (25,600 / 169,000
faults for the plain fused model's easy / hard path). With both thresholds raised, freed memory stays in the heap
and the next layer or pass reuses it (no faults). The cost: the process keeps its peak memory until it exits.
"""
from __future__ import annotations

import ctypes
import logging
import sys

LOGGER = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
RETAINED_BYTES = 1 << 30
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20  # older glibc refuses a higher mmap threshold on 64-bit


def retain_freed_memory(limit: int = RETAINED_BYTES) -> bool:
    """Make glibc malloc keep freed blocks (up to `limit` bytes each, and a free heap top up to `limit`) for reuse
    instead of returning them to the system; False where the C library has no such setting (not glibc)."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, limit) or mallopt(M_MMAP_THRESHOLD, min(limit, GLIBC_MMAP_THRESHOLD_MAX))
    if not (mmap_ok and mallopt(M_TRIM_THRESHOLD, limit)):  # musl's mallopt accepts nothing
        return False
    LOGGER.debug('glibc malloc keeps freed memory for reuse (mmap and trim thresholds raised)')
    return True
