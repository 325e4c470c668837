"""Whether a dataset's training data fits in memory, estimated from the scan headers before anything is read.

Training reads every case into memory (unless ``data.cache_dir``); a dataset that does not fit is otherwise
killed by the operating system minutes into reading, with no message. This check says so at the start: the
estimate is :data:`BYTES_PER_VALUE` per value the image files hold (voxels x channels, from their headers), the
measured peak of the data setup (``benchmarks/RESULTS.md``, "Training memory": 9.1 bytes per voxel for CT-sized
volumes, 7.3 per voxel and channel for BraTS; the label rides along), against the memory the system reports
available. A DICOM series folder counts as its number of DICOM files times the voxels in one file's header
(``medseg.io.dicom.folder_voxels``: one header per case, exact for a folder of one series). Cases whose
headers cannot be read are left out, and the estimate says how many cases it covers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medseg.data.cases import Case
from medseg.errors import RunFailedError

log = logging.getLogger(__name__)

#: Peak bytes of the data setup per image value (voxel x channel) at the scans' own spacing, measured (see above).
BYTES_PER_VALUE = 10.0
#: Share of the available memory the training data may take (the model, batches and the OS need the rest).
USABLE_SHARE = 0.8
_GIB = 2**30


class InsufficientMemoryError(RunFailedError):
    """The training data would not fit in the memory available: the run stops before reading it."""


def estimate_training_bytes(cases: Sequence[Case]) -> tuple[float, int, int]:
    """Estimated peak memory of preparing ``cases`` for training.

    Returns:
        ``(bytes, counted, total)``: the estimate over the cases whose image files have readable headers, how many
        cases that is, and how many there are.
    """
    from medseg.io.header import scan_voxels

    values, counted = 0, 0
    for case in cases:
        sizes = [scan_voxels(p) for p in (case.channel_files or (case.image,))]
        if all(s is not None for s in sizes):
            values += sum(int(s) for s in sizes if s is not None)
            counted += 1
    return values * BYTES_PER_VALUE, counted, len(cases)


def check_training_memory(
    cases: Sequence[Case], cache_dir: Path | None, available_bytes: int | None, *, copies: int = 1
) -> float | None:
    """Stops a run whose training data would not fit in memory, before anything is read.

    Args:
        cases: The training and validation cases.
        cache_dir: ``data.cache_dir``: with a cache folder the prepared data is memory-mapped, so nothing is checked.
        available_bytes: Memory available now (``MemAvailable``); ``None`` (unknown) checks nothing.
        copies: Processes on this machine that each prepare the data (torchrun's local world size).

    Returns:
        The estimate in bytes (``None`` when nothing was checked).

    Raises:
        InsufficientMemoryError: The estimate exceeds :data:`USABLE_SHARE` of the available memory; the message
            gives both, the number of cases, and the two ways out (``data.cache_dir``, ``data.max_cases``).
    """
    if cache_dir is not None or available_bytes is None or not cases:
        return None
    need, counted, total = estimate_training_bytes(cases)
    if counted == 0:
        return None
    need *= max(1, copies)
    covered = "" if counted == total else f" (counting the {counted} of {total} cases whose headers could be read)"
    if copies > 1:
        covered += f", {copies} processes on this machine each holding a copy"
    log.debug("Training data estimate: %.1f GiB%s; %.1f GiB available", need / _GIB, covered, available_bytes / _GIB)
    if need <= USABLE_SHARE * available_bytes:
        return need
    raise InsufficientMemoryError(
        f"The training data of {total} cases needs about {need / _GIB:.1f} GiB of memory{covered} "
        f"(~{BYTES_PER_VALUE:g} bytes per voxel and channel), and this machine has {available_bytes / _GIB:.1f} GiB "
        f"available. Set data.cache_dir to a folder on a local disk with about {need / 2 / _GIB:.0f} GiB free "
        "(the prepared cases are then memory-mapped files instead of memory), or train on fewer cases "
        "(data.max_cases)."
    )
