"""Finding scans on disk and naming them: supported extensions, DICOM folders, case ids.

This module holds the package's one table of scan endings (:data:`SUPPORTED_SUFFIXES`) and its one case-id
function (:func:`case_id_from_path`); discovery (``medseg.data.cases``), batch prediction and evaluation all use
them, so a file gets the same id everywhere.

Channel suffixes: nnU-Net names channel ``c`` of a case ``<case>_<cccc><ending>``. The case id strips only
channel 0's ``_0000`` (``liver_7_0000.nii.gz`` -> ``liver_7``); the other channels' files are found from it
(:func:`nnunet_channel_files`) and are not scans of their own (:func:`is_later_channel_file`). Other four-digit
endings are part of the id: ``visit_2019.nii.gz`` and ``visit_2020.nii.gz`` are two cases.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from medseg.errors import UnreadableScanError

#: Image-file extensions medseg reads (lower case; matched case-insensitively, longest first).
#: 3D Slicer's ending of segmentations: a label, never a scan to predict (:func:`find_scans` skips it).
SEGMENTATION_SUFFIX = ".seg.nrrd"
#: ``.seg.nrrd`` comes before ``.nrrd``: ``case_01.seg.nrrd`` is case ``case_01``.
SUPPORTED_SUFFIXES = (".nii.gz", ".nii", SEGMENTATION_SUFFIX, ".nrrd", ".nhdr", ".mha", ".mhd")

#: Modalities of DICOM objects that are no scan to segment: segmentations and structure sets (labels), RT plans,
#: dose grids and treatment records, registrations, reports, key-object selections, presentation states. A
#: planning export or a TCIA RT collection keeps them beside the scans, often in folders of their own.
NOT_SCAN_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "SR", "KO", "PR"})

#: The nnU-Net suffix of a scan's first (for medseg: only) channel: ``case_0000.nii.gz`` is case ``case``.
CHANNEL_SUFFIX = "_0000"


def image_suffix(path: str | Path) -> str | None:
    """The supported image extension ``path`` ends with (e.g. ``".nii.gz"``), or None."""
    name = Path(path).name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def strip_scan_ending(name: str) -> str:
    """``name`` without its supported image extension (``.nii.gz``, ``.nrrd``, ...); other names unchanged."""
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix is not None else name


def nnunet_channel_files(path: str | Path, n_channels: int) -> list[Path] | None:
    """The files of channels ``0..n_channels-1`` of an nnU-Net ``<case>_0000<ending>`` file, or None.

    ``ct_7_0000.nii.gz`` with 2 channels -> ``[ct_7_0000.nii.gz, ct_7_0001.nii.gz]`` (beside it; existence not
    checked). None when ``path`` does not end in ``_0000`` and a supported image extension.
    """
    path = Path(path)
    suffix = image_suffix(path)
    stem = strip_scan_ending(path.name)
    if suffix is None or not stem.endswith(CHANNEL_SUFFIX) or len(stem) == len(CHANNEL_SUFFIX):
        return None
    ending = path.name[len(stem) :]
    base = stem[: -len(CHANNEL_SUFFIX)]
    return [path.with_name(f"{base}_{c:04d}{ending}") for c in range(n_channels)]


def is_later_channel_file(path: str | Path) -> bool:
    """Whether ``path`` is an nnU-Net channel file other than channel 0 (``<case>_0001<ending>`` and up).

    For a multi-channel model such files are read with their ``_0000`` file, never as scans of their own.
    """
    return (
        image_suffix(path) is not None and re.search(r"_(?!0000)\d{4}$", strip_scan_ending(Path(path).name)) is not None
    )


def is_supported_file(path: str | Path) -> bool:
    """Whether ``path`` names an image file medseg reads (by extension: NIfTI, NRRD/NHDR, MHA/MHD).

    DICOM slices are not "supported files" on their own: a DICOM series is read as its folder
    (see :func:`find_scans`).
    """
    return image_suffix(path) is not None


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file: the ``DICM`` marker after the 128-byte preamble, or a ``.dcm`` name."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def holds_dicom_scan(folder: str | Path, names: Sequence[str] | None = None, *, give_up_after: int | None = 3) -> bool:
    """Whether ``folder`` directly holds a DICOM file of a scan: one whose Modality is not among
    :data:`NOT_SCAN_MODALITIES` (a file whose Modality cannot be read counts: reading the series says why).

    Files are looked at in name order until one decides, so a scan's folder costs one small header read.

    Args:
        folder: The folder.
        names: Its file names, when the caller has listed them already (hidden files left out).
        give_up_after: This many non-DICOM files end the search (a folder of other files is no series);
            ``None`` looks at every file.
    """
    import pydicom

    folder = Path(folder)
    if names is None:
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not is_hidden(e.name))
        except OSError:
            return False
    others = 0
    for name in names:
        path = folder / name
        if not is_dicom_file(path):
            others += 1
            if others == give_up_after:
                return False
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
            modality = str(header.get("Modality", ""))
        except Exception:
            return True
        if modality.strip().upper() not in NOT_SCAN_MODALITIES:
            return True
    return False


def is_hidden(name: str) -> bool:
    """Whether scan discovery skips an entry of this name (hidden; includes medseg's own in-progress atomic
    writes, ".case.xxxx.nii.gz", which are not scans)."""
    return name.startswith(".")


def walk_scan_tree(folder: str | Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` as scan discovery sees a tree: symbolic links followed, hidden entries skipped, sorted.

    Callers that must agree with :func:`find_scans` on which folders exist (batch prediction's check for
    folders without a scan) walk with this, so paths under a linked folder are spelled the same way.
    """
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        yield root, dirs, sorted(f for f in files if not is_hidden(f))


def find_scans(folder: str | Path, *, not_scans: list[Path] | None = None) -> list[Path]:
    """Lists the scans under ``folder``, recursively and sorted.

    A scan is an image file with a supported extension (not a 3D Slicer ``.seg.nrrd`` segmentation), or a folder
    holding DICOM files of a scan (listed once, as the folder; its files are not listed separately). A folder
    holding only DICOM objects that are no scan (:func:`holds_dicom_scan`: structure sets, segmentations, RT plans
    or dose grids) is not listed; with ``not_scans`` given, it is appended there. Hidden files and folders are
    skipped. Symbolic links are followed (a link to a file or to a DICOM folder is a scan, named by
    the link) and listed under the link's path, not its target's; a link that leads back into the tree is not
    followed twice.

    Args:
        folder: Folder to search. A single supported image file is returned as a one-element list.

    Returns:
        Sorted paths of image files and DICOM folders.

    Raises:
        UnreadableScanError: ``folder`` does not exist, or is a file medseg does not read.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UnreadableScanError(folder, "no such file or folder")
    if folder.is_file():
        if is_supported_file(folder):
            return [folder]
        raise UnreadableScanError(folder, "not a folder and not a supported image file")
    found: list[Path] = []
    visited: set[str] = set()
    for root, dirs, files in walk_scan_tree(folder):
        real = os.path.realpath(root)
        if real in visited:  # a symlink loop, or a second link to a folder already listed
            dirs[:] = []
            continue
        visited.add(real)
        root_path = Path(root)
        has_dicom = False
        for name in files:
            if is_supported_file(name) and not name.lower().endswith(SEGMENTATION_SUFFIX):
                found.append(root_path / name)
            elif not has_dicom and is_dicom_file(root_path / name):
                has_dicom = True
        others = [n for n in files if not is_supported_file(n)]
        if has_dicom and holds_dicom_scan(root_path, others, give_up_after=None):
            found.append(root_path)
        elif has_dicom and not_scans is not None:
            not_scans.append(root_path)
    return sorted(found)


def case_id_from_path(path: str | Path) -> str:
    """The case id of a scan: the file name without its image extension and without nnU-Net's ``_0000``.

    ``hippocampus_001.nii.gz`` -> ``hippocampus_001``; ``liver_7_0000.nii.gz`` -> ``liver_7``;
    a DICOM folder ``.../13_HCropVolume`` -> ``13_HCropVolume``; a DICOM file -> its folder's name.
    Only ``_0000`` is removed (see the module docstring): ``visit_2019.nii.gz`` is case ``visit_2019``.
    The name of ``path`` itself is used, not the target of a symbolic link.

    Args:
        path: Image file, DICOM folder or DICOM file.

    Returns:
        The case id.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix is None:
        # A DICOM folder, or one DICOM file standing for its series.
        return path.parent.name if path.is_file() and is_dicom_file(path) else path.name
    stem = path.name[: -len(suffix)]
    if stem.endswith(CHANNEL_SUFFIX) and len(stem) > len(CHANNEL_SUFFIX):
        stem = stem[: -len(CHANNEL_SUFFIX)]
    return stem
