"""Process memory during training: hand freed heap pages back to the OS, read current and peak RSS."""

from __future__ import annotations

import ctypes
import functools
import os
import resource
from collections.abc import Callable
from pathlib import Path


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS.

    Activations are freed after every backward, but their sizes change with every batch (prompt
    lengths differ), and glibc keeps such freed chunks in its heap: RSS then grew step after
    step; trimming after every step keeps it flat (peak RSS per run: benchmarks/bench_memory.py,
    benchmarks/results/memory.json).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def current_rss_gib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20
