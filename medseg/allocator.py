"""The C library's allocator set up for tensor buffers: freed buffers kept for reuse, not handed back each time.

PyTorch takes CPU tensor memory from ``malloc``. glibc serves a request above its mmap threshold (128 KiB,
raised on its own up to at most 32 MiB) with a fresh ``mmap`` and unmaps it on free, and it hands the top of its
heap back to the OS whenever more than its trim threshold (twice the mmap threshold) is free there. A network's
activations are allocated and freed at the same sizes on every step, so by default every step maps fresh pages
and faults each of them in (the kernel zeroes every 4 KiB page). Measured on a 2-core CPU without native bf16,
torch 2.13: a forward pass of 64 LA2018 slices (3 x 128 x 96, base 16, eval, channels_last) faulted 74k-110k
pages (300-450 MB) and took 613-737 ms; with the thresholds below it faulted none and took 435-493 ms, and batch
prediction of 12 LA2018 scans took 9.8-10.2 s instead of 11.4-11.7 s. The training loop gains little: its
patches are small, and after the data setup the trainer's heap already held enough free memory that its own
loop (``Trainer.time_loop``, ``configs/la2018.yaml``) faulted no page either way (29.2 against 30.5 slices/s,
within this host's swing; a training step in a fresh process, without that free memory, had faulted 25k pages
and run 1.2-1.3x slower). The trainer sets it for its validation, which predicts whole slices in large
batches, and for CT-sized patches whose activations pass 32 MiB.

The two thresholds, and why not higher or lower:

* **mmap threshold 128 MiB**: requests up to it come from the heap and are reused once freed. With 1 GiB, the
  freed activations of a 512 x 512 CT prediction (100-200 MB each at batch 3, base 32) left holes the next
  requests did not fit, and the peak of a 512 x 512 x 100 prediction rose from 1.39 to 1.88 GiB (issue 15's
  bound: 1.79); at 128 MiB it was 1.50 and 1.68 GiB in two runs, at 0.59-0.65 s a slice against 0.56 (1 GiB).
  At 64 MiB LA2018's 100 MB decoder concatenations are mapped afresh again. Larger buffers (a whole CT
  volume) are still mapped and unmapped on their own, so they never stay.
* **trim threshold 1 GiB**: a forward pass frees its activations at the top of the heap; at 256 MiB they were
  trimmed after every pass and the LA2018 forward faulted 55k-86k pages again. Batch prediction hands piled-up
  free memory back between cases (:class:`medseg.inference.memory.HeapTrimmer`; ``malloc_trim`` still works).

``jemalloc``/``tcmalloc`` through ``LD_PRELOAD`` would do the same from outside the process; this needs nothing
installed. Only glibc on Linux has ``mallopt``; elsewhere (macOS, Windows, musl) :func:`keep_freed_buffers`
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

log = logging.getLogger(__name__)

#: Requests up to this size come from the heap (larger ones are mapped and unmapped on their own).
MMAP_THRESHOLD_BYTES = 128 << 20
#: Free memory at the top of the heap beyond this is handed back to the OS.
TRIM_THRESHOLD_BYTES = 1 << 30
# mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@cache
def keep_freed_buffers() -> bool:
    """Sets glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD_BYTES`, :data:`TRIM_THRESHOLD_BYTES`) for this
    process, once; later calls return the first result.

    Called when a :class:`~medseg.inference.Predictor` is built and by the
    :class:`~medseg.training.trainer.Trainer` once its data are set up (the one-off temporaries of reading and
    resampling are better handed back), as both then run the same tensor sizes over and over. It changes the
    whole process's allocator, which is why it is a named step and not an import side effect; a script can call
    it itself before its own tensor work.

    Returns:
        ``True`` when both thresholds were set (Linux with glibc), ``False`` where ``mallopt`` is not available
        or refused them.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and ok
    if not ok:
        log.debug("mallopt refused the thresholds; tensor buffers are mapped and unmapped as glibc decides")
    return ok
