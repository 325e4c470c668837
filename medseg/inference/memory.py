"""Handing heap memory that batch prediction freed back to the operating system, when it piles up.

Measured on the 91 hippocampus scans (``benchmarks/speed.py``, one process predicting them in turn): glibc kept
the freed buffers of earlier cases (volumes, probability maps, forward-pass activations, all of slightly
different sizes) in its heap, so the resident set grew from 521 MiB after 10 scans to 729 MiB after 91, although
nothing was referenced any more. ``malloc_trim(0)`` after every case held it at 395 -> 414 MiB but made the run
~40 % slower (14.1 s -> 19.9 s): every forward pass then page-faults its activations afresh. So
:class:`HeapTrimmer` trims only when the resident set has crept a margin above its working level, which bounds
the growth at about that margin: over the 91 scans it trimmed 8 times, and on a second pass over them not once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from functools import cache

#: Growth of the resident set (MiB) above its working level that triggers a trim (64 trimmed 11 times in 40 scans).
DEFAULT_MARGIN_MB = 128.0


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only: musl and other libcs do not have it
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def resident_mb() -> float | None:
    """This process's resident set size in MiB (Linux ``/proc/self/statm``), ``None`` elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_free_memory() -> bool:
    """Hands the heap's free memory back to the OS where the C library can (glibc ``malloc_trim``).

    Returns:
        ``True`` when ``malloc_trim`` ran (Linux with glibc), ``False`` where it is not available (a no-op).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class HeapTrimmer:
    """Calls :func:`release_free_memory` when the resident set has crept ``margin_mb`` above its working level.

    The working level is the resident set measured after a case (call), with the buffers that case freed still
    held for reuse by the next one; it is measured at the first call and again at the call after every trim,
    so a trim costs at most one case's page faults and a folder of growing scans re-levels instead of trimming
    after every case.

    Args:
        margin_mb: Growth (MiB) over the working level that triggers a trim.
    """

    def __init__(self, margin_mb: float = DEFAULT_MARGIN_MB) -> None:
        if margin_mb <= 0:
            raise ValueError(f"margin_mb must be > 0, got {margin_mb}")
        self.margin_mb = float(margin_mb)
        self.level: float | None = None
        self.trims = 0

    def __call__(self) -> bool:
        """Checks the resident set (one read of ``/proc``) after a case; trims if it crept up. ``True`` if so."""
        now = resident_mb()
        if now is None:
            return False
        if self.level is None or now < self.level:
            self.level = now
            return False
        if now - self.level < self.margin_mb:
            return False
        trimmed = release_free_memory()
        self.trims += int(trimmed)
        self.level = None  # re-measured after the next case, once its working buffers are back
        return trimmed
