"""Heap memory freed between batch cases goes back to the OS (glibc ``malloc_trim``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.inference.memory import release_free_memory


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and malloc_trim are Linux/glibc")
def test_release_free_memory_returns_fragmented_heap_to_the_os() -> None:
    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim (not glibc)")
    # 3000 blocks of 64 kB (below glibc's mmap threshold, so they live in the heap); every 20th stays alive, so
    # the heap cannot shrink from its top and only malloc_trim can hand the holes back.
    blocks = [np.ones(8192, dtype=np.float64) for _ in range(3000)]
    keep = blocks[::20]
    del blocks
    before = _rss_mib()
    assert release_free_memory() is True
    after = _rss_mib()
    assert before - after > 100, (before, after)  # ~180 MiB of freed blocks
    assert all(float(b[0]) == 1.0 for b in keep)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and malloc_trim are Linux/glibc")
def test_heap_trimmer_trims_only_when_memory_crept_up() -> None:
    from medseg.inference.memory import HeapTrimmer

    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim (not glibc)")
    trimmer = HeapTrimmer(margin_mb=50)
    assert trimmer() is False  # the first call measures the working level
    assert trimmer() is False and trimmer.trims == 0  # no growth, no trim
    blocks = [np.ones(8192, dtype=np.float64) for _ in range(3000)]
    keep = blocks[::20]
    del blocks  # ~180 MiB freed but kept by the heap: the creep a long batch run would see
    before = _rss_mib()
    assert trimmer() is True and trimmer.trims == 1
    assert before - _rss_mib() > 100
    assert trimmer() is False and trimmer.level is not None  # re-levels after a trim instead of trimming again
    assert len(keep) == 150
    with pytest.raises(ValueError, match="margin_mb"):
        HeapTrimmer(margin_mb=0)
