"""Label maps from one binary mask per structure.

The segments of a DICOM SEG, the ROIs of an RTSTRUCT and a *structure folder* (one mask file per structure,
named after it: TotalSegmentator writes ``segmentations/liver.nii.gz``, ``aorta.nii.gz``, ...; 3D Slicer exports
segments so) all become one label map here: each mask is matched to a class by name, and the masks are combined.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.errors import GeometryMismatchError, SegmentNameError, UnreadableScanError
from medseg.io.scans import is_supported_file, strip_scan_ending
from medseg.volume import Volume

log = logging.getLogger(__name__)


def segment_classes(
    labels: Sequence[str],
    classes: Sequence[str] | None,
    path: Path,
    what: str,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[int]:
    """The class index of each segment / ROI / structure name (``classes=None``: 1, 2, ... in order).

    Args:
        labels: The names, in the object's order.
        classes: Class names, background first; names are compared case-insensitively.
        path: The object (named in errors).
        what: What the names are (``"segment(s)"``, ``"ROI(s)"``, ``"structure file(s)"``), for errors.
        ignore_unlisted: A name that is no class's gets 0 (the caller leaves it out) instead of being refused
            (``data.unlisted_labels: background``: an RTSTRUCT's body or couch contours, a structure folder's
            other organs).
        aliases: Other names of some classes (``data.class_aliases``: class name -> names), compared
            case-insensitively too.

    Raises:
        SegmentNameError: A name matches no foreground class (unless ``ignore_unlisted``), a foreground class has
            none, or two different names match one class.
        ValueError: An alias key is not a foreground class.
    """
    if classes is None:
        return list(range(1, len(labels) + 1))
    wanted = {c.casefold(): i for i, c in enumerate(classes) if i > 0}
    for cls, names in (aliases or {}).items():
        if cls.casefold() not in wanted:
            raise ValueError(f"alias key '{cls}' is not a foreground class of {list(classes)}")
        index = wanted[cls.casefold()]
        wanted.update({name.casefold(): index for name in names})
    unknown = [name for name in labels if name.casefold() not in wanted]
    if unknown and not ignore_unlisted:
        raise SegmentNameError(
            f"'{path}': {what} {', '.join(repr(n) for n in unknown)} match(es) none of the classes "
            f"{list(classes[1:])} (data.classes; names are compared case-insensitively; data.class_aliases gives a "
            "class other names; data.unlisted_labels: background leaves the others out)"
        )
    named: dict[int, dict[str, str]] = {}
    for name in labels:
        if name.casefold() in wanted:
            named.setdefault(wanted[name.casefold()], {})[name.casefold()] = name
    twice = [(classes[i], list(names.values())) for i, names in sorted(named.items()) if len(names) > 1]
    if twice:
        cls, names = twice[0]
        raise SegmentNameError(
            f"'{path}': {what} {', '.join(repr(n) for n in names)} all name class '{cls}' (data.class_aliases): "
            "which one is the structure cannot be told; remove the other from the file or from the aliases"
        )
    missing = [c for i, c in enumerate(classes) if i > 0 and i not in named]
    if missing:
        raise SegmentNameError(
            f"'{path}': no {what} for class(es) {missing}; it holds {list(labels)} (data.classes: {list(classes)}; "
            + (f"data.class_aliases: {dict(aliases)})" if aliases else "data.class_aliases gives a class other names)")
        )
    return [wanted.get(name.casefold(), 0) for name in labels]


def combine_masks(
    per_class: list[tuple[int, np.ndarray]], shape: tuple[int, ...], path: Path, what: str, nested: bool = False
) -> np.ndarray:
    """Label map from binary masks; where classes overlap, the higher class index wins (with a warning, unless
    ``nested``: overlapping regions, whose innermost one is the painted class)."""
    out = np.zeros(shape, dtype=np.uint8 if max((c for c, _ in per_class), default=0) < 256 else np.uint16)
    seen = np.zeros(shape, dtype=bool)
    overlap = 0
    for cls, m in sorted(per_class, key=lambda t: t[0]):
        overlap += int(np.count_nonzero(seen & m))
        out[m] = cls
        seen |= m
    if overlap and not nested:
        log.warning("'%s': %d voxel(s) belong to several %ss; the higher class index is kept", path, overlap, what)
    return out


def structure_files(path: str | Path) -> list[Path] | None:
    """The mask files of a structure folder (a folder holding only NIfTI / NRRD / MHA files, at least one, no
    sub-folders or DICOM files), sorted by name; ``None`` when ``path`` is no such folder."""
    path = Path(path)
    if not path.is_dir():
        return None
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries or not all(p.is_file() and is_supported_file(p) for p in entries):
        return None
    return sorted(entries)


def load_structure_folder(
    path: str | Path,
    classes: Sequence[str] | None,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    nested: bool = False,
) -> Volume:
    """Reads a structure folder (one binary mask file per structure) as one label map, on the files' own grid.

    Each file's name without its ending is its structure's name; it is matched to a class by name
    (case-insensitive), like a DICOM SEG's segments. Each file must be a binary mask (0 and one other value, any
    type), and all on one grid. Whether that grid is the image's is judged where every label's is (training's
    ``check_pair`` and cut-label placement, evaluation's grid check), as for a label map file.

    Args:
        path: The folder.
        classes: Class names, background first; ``None``: the files in name order are classes 1, 2, ...
        ignore_unlisted: Leave out files whose structure is no class (TotalSegmentator writes 100+; train on a
            few) instead of refusing them (``data.unlisted_labels: background``).
        aliases: Other names of some classes (``data.class_aliases``), matched like the class names.
        nested: Segments may contain each other (overlapping regions, ``data.regions``): where they overlap the
            higher class index is kept, which is the painted region, without the overlap warning.

    Returns:
        A label Volume (uint8) on the files' grid, ``source`` = ``path``.

    Raises:
        UnreadableScanError: ``path`` is not a structure folder, or a file cannot be read.
        SegmentNameError: A file matches no class (unless ``ignore_unlisted``), or a class has no file.
        GeometryMismatchError: Two files lie on different grids.
        MedsegError: A file is not a binary mask.
    """
    from medseg.io.reading import load_volume

    path = Path(path)
    files = structure_files(path)
    if files is None:
        raise UnreadableScanError(path, "not a folder of mask files (one NIfTI / NRRD / MHA file per structure)")
    names = [strip_scan_ending(f.name) for f in files]
    class_of = segment_classes(
        names, classes, path, "structure file(s)", ignore_unlisted=ignore_unlisted, aliases=aliases
    )
    per_class: list[tuple[int, np.ndarray]] = []
    grid: Volume | None = None
    for file, cls in zip(files, class_of, strict=True):
        if cls == 0:  # no class's (data.unlisted_labels: background): not even read
            continue
        mask = load_volume(file, label=True)
        if grid is None:
            grid = mask
        elif not grid.same_grid(mask):  # written together, the files share one header's grid
            raise GeometryMismatchError(
                f"'{file}' (shape {mask.shape}, spacing {np.round(mask.spacing, 4).tolist()}, origin "
                f"{np.round(mask.origin, 3).tolist()}) is not on the grid of '{grid.source}' (shape {grid.shape}, "
                f"spacing {np.round(grid.spacing, 4).tolist()}, origin {np.round(grid.origin, 3).tolist()})"
            )
        per_class.append((cls, _binary(mask.array, file)))
    assert grid is not None  # segment_classes refuses a folder without a file for every class
    label_map = combine_masks(per_class, grid.shape, path, "structure", nested)
    return Volume(array=label_map, affine=grid.affine, source=path)


def _binary(array: np.ndarray, file: Path) -> np.ndarray:
    """The mask's voxels as booleans; refuses anything but 0 and one other value."""
    from medseg.errors import MedsegError

    arr = np.asarray(array)
    inside = arr != 0
    values = arr[inside]
    if values.size and (not np.isfinite(values[0]) or np.any(values != values[0])):
        shown = np.unique(values)[:5].tolist()
        raise MedsegError(f"'{file}' is not a binary mask: it holds the values {shown} besides 0")
    return inside
