"""Where a run's prepared training data lives: in memory when it fits, else memory-mapped from a disk folder.

Training reads every case into memory unless ``data.cache_dir`` names a folder; a dataset that does not fit is
otherwise killed by the operating system minutes into reading, with no message. The decision is taken before
anything is read, from an estimate: :data:`BYTES_PER_VALUE` per value the image files hold (voxels x channels,
from their headers), the measured peak of the data setup (``benchmarks/RESULTS.md``, "Training memory": 9.1 bytes
per voxel for CT-sized volumes, 7.3 per voxel and channel for BraTS; the label rides along), against the memory
the system reports available. A DICOM series folder counts as its number of DICOM files times the voxels in one
file's header (``medseg.io.dicom.folder_voxels``: one header per case, exact for a folder of one series). Cases
whose headers cannot be read are left out, and the estimate says how many cases it covers.

With ``data.cache_dir: auto`` (the default) a dataset that does not fit goes to a folder in the run's output
folder instead of stopping the run, when that disk has room (:data:`DISK_BYTES_PER_VALUE`); the prepared arrays
there are private files unlinked as soon as they are mapped (``medseg.data.prepare``), so the folder is empty
after the run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medseg.data.cases import Case
from medseg.errors import RunFailedError

log = logging.getLogger(__name__)

#: Peak bytes of the data setup per image value (voxel x channel) at the scans' own spacing, measured (see above).
BYTES_PER_VALUE = 10.0
#: Share of the available memory the training data may take (the model, batches and the OS need the rest).
USABLE_SHARE = 0.8
#: Bytes per image value the prepared data takes on disk in a cache folder: the float32 image and the label (one
#: byte per voxel for up to 127 classes), with no temporaries.
DISK_BYTES_PER_VALUE = BYTES_PER_VALUE / 2
#: The folder inside ``output.dir`` that ``data.cache_dir: auto`` uses when the data does not fit in memory.
AUTO_CACHE_FOLDER = "prepared_cache"
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


@dataclass(frozen=True)
class DataPlacement:
    """Where the training data will live, decided from the scan headers before anything is read.

    Attributes:
        folder: The folder the prepared cases are memory-mapped from; ``None`` keeps them in memory.
        text: One sentence saying where and why, with the numbers (for the log and the ``summary`` stage).
        refusal: Set when the data fits neither in memory nor (as allowed) on disk: the message the run stops with.
    """

    folder: Path | None
    text: str
    refusal: str | None = None


def place_training_data(
    cases: Sequence[Case],
    cache_dir: Path | Literal["auto"] | None,
    available_bytes: int | None,
    *,
    output_dir: Path,
    copies: int = 1,
) -> DataPlacement:
    """Decides whether the training data is kept in memory or memory-mapped from disk (nothing is read, logged or
    raised; :func:`choose_cache_dir` acts on the decision).

    Args:
        cases: The training and validation cases.
        cache_dir: ``data.cache_dir``. A folder: the data is memory-mapped from there, nothing is checked.
            ``"auto"``: in memory when the estimate fits :data:`USABLE_SHARE` of the available memory, else
            memory-mapped from ``output_dir / AUTO_CACHE_FOLDER`` when that disk has room. ``None``: in memory,
            and a dataset that does not fit stops the run.
        available_bytes: Memory available now (``MemAvailable``); ``None`` (unknown) keeps the data in memory.
        output_dir: The run's ``output.dir`` (where ``"auto"`` puts its folder).
        copies: Processes on this machine that each prepare the data (torchrun's local world size).
    """
    if cache_dir is not None and cache_dir != "auto":
        return DataPlacement(Path(cache_dir), f"memory-mapped from {cache_dir} (data.cache_dir)")
    if available_bytes is None or not cases:
        return DataPlacement(None, "kept in memory (the memory available is not known here)")
    need, counted, total = estimate_training_bytes(cases)
    if counted == 0:
        return DataPlacement(None, "kept in memory (no image header could be read for an estimate)")
    need *= max(1, copies)
    covered = "" if counted == total else f" (counting the {counted} of {total} cases whose headers could be read)"
    if copies > 1:
        covered += f", {copies} processes on this machine each holding a copy"
    if need <= USABLE_SHARE * available_bytes:
        return DataPlacement(
            None,
            f"kept in memory: about {need / _GIB:.1f} GiB for {total} cases{covered}, "
            f"{available_bytes / _GIB:.1f} GiB available",
        )
    on_disk = need * DISK_BYTES_PER_VALUE / BYTES_PER_VALUE
    memory_text = (
        f"The training data of {total} cases needs about {need / _GIB:.1f} GiB of memory{covered} "
        f"(~{BYTES_PER_VALUE:g} bytes per voxel and channel), and this machine has {available_bytes / _GIB:.1f} GiB "
        "available."
    )
    if cache_dir == "auto":
        folder = Path(output_dir) / AUTO_CACHE_FOLDER
        free = _free_disk_bytes(folder)
        if free is None or on_disk <= USABLE_SHARE * free:
            return DataPlacement(
                folder,
                f"{memory_text} The prepared cases are memory-mapped from {folder} instead (data.cache_dir: auto; "
                f"about {on_disk / _GIB:.1f} GiB on disk while the run lasts, the folder empty after it).",
            )
        refusal = (
            f"{memory_text} Nor does the disk of output.dir '{output_dir}' have room for it memory-mapped (about "
            f"{on_disk / _GIB:.1f} GiB needed, {free / _GIB:.1f} GiB free). Set data.cache_dir to a folder on a local "
            "disk with that much free, or train on fewer cases (data.max_cases)."
        )
    else:
        refusal = (
            f"{memory_text} Set data.cache_dir to a folder on a local disk with about {on_disk / _GIB:.0f} GiB free "
            "(or to auto, the default: the run's output folder), and the prepared cases are memory-mapped files "
            "instead of memory; or train on fewer cases (data.max_cases)."
        )
    return DataPlacement(None, f"would stop the run: {refusal}", refusal)


def choose_cache_dir(
    cases: Sequence[Case],
    cache_dir: Path | Literal["auto"] | None,
    available_bytes: int | None,
    *,
    output_dir: Path,
    copies: int = 1,
) -> Path | None:
    """:func:`place_training_data`, acted on: says where the data goes and stops a run whose data cannot fit.

    Args are those of :func:`place_training_data`.

    Returns:
        The folder to memory-map the prepared data from, or ``None`` to keep it in memory.

    Raises:
        InsufficientMemoryError: The data does not fit in memory and may not (``None``) or cannot (no room on
            ``output_dir``'s disk) go to disk; the message gives the estimate, the memory (and disk) available,
            the number of cases and the ways out (``data.cache_dir``, ``data.max_cases``).
    """
    placement = place_training_data(cases, cache_dir, available_bytes, output_dir=output_dir, copies=copies)
    if placement.refusal is not None:
        raise InsufficientMemoryError(placement.refusal)
    if cache_dir == "auto" and placement.folder is not None:
        log.warning("%s", placement.text)  # the fallback changes how the run works: said where it is seen
    else:
        log.debug("Training data: %s", placement.text)
    return placement.folder


def _free_disk_bytes(folder: Path) -> int | None:
    """Free bytes on the disk that holds ``folder`` (or the nearest parent that exists), ``None`` where unknown."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None
