"""3D Slicer segmentations (``.seg.nrrd``): read by segment name, and written so Slicer opens a mask as named
segments.

3D Slicer, the most used tool for drawing research labels, saves a segmentation as NRRD with one entry per
segment in the header (``Segment<i>_Name``, ``_LabelValue``, ``_Layer``... see
https://slicer.readthedocs.io/en/latest/developer_guide/modules/segmentations.html). A segment's label value is
the order it was created in, so "tumour" can be 1 in one case and 2 in the next; overlapping segments go to
separate layers (a 4D file). Read as a plain label map such a file would be wrong or refused. Read here, each
segment is matched to a class by its name (as a DICOM SEG's segments), so the values and layers do not matter.
The file lies on its image's grid, or on part of it (Slicer can save it cut to the segments' extent; its header
places it, and ``medseg.data.label_grid`` puts it on the image's grid).

Written (``inference.output_format: seg.nrrd``): one layer on the scan's grid, a segment per foreground class
named after it, with the header entries Slicer and slicerio read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from medseg.errors import UnreadableScanError
from medseg.io.itk import sitk_message, volume_from_sitk
from medseg.io.structure_masks import combine_masks, segment_classes
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.io.dicom_seg import ClassCode

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(Name|LabelValue|Layer)$")


def _header(path: Path) -> sitk.ImageFileReader | None:
    if not path.is_file() or not path.name.lower().endswith((".nrrd", ".nhdr")):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def is_slicer_segmentation(path: str | Path) -> bool:
    """Whether ``path`` is an NRRD file with 3D Slicer's segment entries (``Segment0_Name`` ...) in its header."""
    reader = _header(Path(path))
    return reader is not None and reader.HasMetaDataKey("Segment0_Name")


def _named_segments(reader: sitk.ImageFileReader) -> list[tuple[int, dict[str, str]]]:
    """The header's segment entries (``Name``, ``LabelValue``, ``Layer``) by segment index, in header (drawing)
    order; segments without a name are left out."""
    segments: dict[int, dict[str, str]] = {}
    for key in reader.GetMetaDataKeys():
        match = _SEGMENT_KEY.match(key)
        if match:
            segments.setdefault(int(match.group(1)), {})[match.group(2)] = reader.GetMetaData(key).strip()
    return [(i, s) for i, s in sorted(segments.items()) if "Name" in s]


def slicer_segment_names(path: str | Path) -> list[str] | None:
    """The segment names in a 3D Slicer segmentation's header, in header (drawing) order; ``None`` when ``path``
    is no Slicer segmentation."""
    reader = _header(Path(path))
    if reader is None or not reader.HasMetaDataKey("Segment0_Name"):
        return None
    return [s["Name"] for _, s in _named_segments(reader)]


def load_slicer_segmentation(
    path: str | Path,
    classes: Sequence[str] | None,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    nested: bool = False,
) -> Volume:
    """Reads a 3D Slicer ``.seg.nrrd`` as a label map on the file's own grid, segments matched to classes by name.

    Args:
        path: The file.
        classes: Class names, background first (case-insensitive match with the segment names); ``None``: the
            segments in header order are classes 1, 2, ...
        ignore_unlisted: Leave out segments that are no class's (``data.unlisted_labels: background``) instead
            of refusing them.
        aliases: Other names of some classes (``data.class_aliases``), matched like the class names.
        nested: Segments may contain each other (overlapping regions, ``data.regions``): where they overlap the
            higher class index is kept, which is the painted region, without the overlap warning.

    Returns:
        A label Volume (uint8) on the file's grid, ``source`` = ``path``.

    Raises:
        UnreadableScanError: Not a Slicer segmentation, unreadable, or a segment entry without its layer value.
        SegmentNameError: A segment matches no class (unless ``ignore_unlisted``), or a class has no segment.
    """
    path = Path(path)
    reader = _header(path)
    if reader is None or not reader.HasMetaDataKey("Segment0_Name"):
        raise UnreadableScanError(path, "not a 3D Slicer segmentation (no Segment0_Name in the NRRD header)")
    named = _named_segments(reader)
    names = [s["Name"] for _, s in named]
    class_of = segment_classes(names, classes, path, "segment(s)", ignore_unlisted=ignore_unlisted, aliases=aliases)
    named, class_of = [n for n, c in zip(named, class_of, strict=True) if c], [c for c in class_of if c]
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UnreadableScanError(path, f"SimpleITK could not read it ({sitk_message(exc)})") from exc
    n_layers = image.GetNumberOfComponentsPerPixel() if image.GetDimension() == 3 else image.GetSize()[3]
    layers: dict[int, Volume] = {}
    per_class: list[tuple[int, np.ndarray]] = []
    for (index, segment), cls in zip(named, class_of, strict=True):
        try:
            layer, value = int(segment.get("Layer", "0")), int(segment["LabelValue"])
        except (KeyError, ValueError):
            problem = f"segment {index} ('{segment['Name']}') has no valid layer and label value"
            raise UnreadableScanError(path, problem) from None
        if not 0 <= layer < n_layers:
            raise UnreadableScanError(path, f"segment '{segment['Name']}' is on layer {layer} of {n_layers}")
        if layer not in layers:
            layers[layer] = volume_from_sitk(image, path, channel=layer if n_layers > 1 else None)
        per_class.append((cls, np.asarray(layers[layer].array) == value))
    grid = next(iter(layers.values())) if layers else volume_from_sitk(image, path, channel=0 if n_layers > 1 else None)
    return Volume(array=combine_masks(per_class, grid.shape, path, "segment", nested), affine=grid.affine, source=path)


#: Segment colours (RGB, 0..1), one per foreground class in turn: Slicer shows them as the segments' colours.
_COLOURS = (
    (0.90, 0.10, 0.10),
    (0.10, 0.60, 0.95),
    (0.95, 0.80, 0.10),
    (0.20, 0.80, 0.30),
    (0.70, 0.30, 0.90),
    (0.95, 0.50, 0.10),
    (0.10, 0.85, 0.85),
    (0.95, 0.40, 0.70),
)


def save_slicer_segmentation(
    labels: np.ndarray,
    like: Volume,
    path: str | Path,
    classes: Sequence[str],
    *,
    label_values: Sequence[int] | None = None,
    class_codes: Mapping[str, ClassCode] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a label map as a 3D Slicer segmentation on ``like``'s grid: a segment per foreground class.

    Args:
        labels: The label map as :func:`medseg.io.save_mask` takes it, shape ``like.shape``: class ``k`` stored
            as ``label_values[k]`` (``Predictor.stored_labels``), or as ``k``.
        like: The scan whose grid the mask is on.
        path: Output file, ending ``.seg.nrrd``.
        classes: Class names, background first: segment ``k - 1`` is class ``k``, named after it.
        label_values: The value each class is stored as (``data.label_values``); ``None`` = class k as k.
        class_codes: Coded meanings by class name (``data.class_codes``, as for DICOM SEG): written as the
            segment's Slicer terminology entry (category and type), which Slicer shows and exports.
        overwrite: Replace an existing file.

    Raises:
        GeometryMismatchError: ``labels``' shape differs from ``like``'s.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        MedsegError: ``path`` does not end in ``.seg.nrrd``, or values that are not labels (as ``save_mask``).
    """
    from medseg.errors import MedsegError
    from medseg.io.atomic import atomic_path
    from medseg.io.geometry import array_to_sitk
    from medseg.io.writing import _array_on_grid, _label_array

    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise MedsegError(f"Cannot write '{path}' as a 3D Slicer segmentation: the name must end in .seg.nrrd")
    stored = _label_array(_array_on_grid(labels, like, path, "mask"), path)  # save_mask's checks and type
    values = list(label_values) if label_values is not None else list(range(len(classes)))
    image = array_to_sitk(stored, like.affine)
    for k, name in enumerate(classes[1:], start=1):
        key = f"Segment{k - 1}_"
        where = np.nonzero(stored == values[k])
        # Extent in voxel indices (i, j, k = ITK's x, y, z), as Slicer writes it; "0 -1 ..." for an empty segment.
        extent = [b for axis in where for b in (int(axis.min()), int(axis.max()))] if where[0].size else [0, -1] * 3
        entries = {
            "ID": f"Segment_{k}",
            "Name": name,
            "LabelValue": str(values[k]),
            "Layer": "0",
            "Color": " ".join(f"{c:g}" for c in _COLOURS[(k - 1) % len(_COLOURS)]),
            "Extent": " ".join(str(v) for v in extent),
        }
        code = (class_codes or {}).get(name)
        if code is not None:
            entries["Tags"] = f"TerminologyEntry:{_terminology(code)}|"
        for field, value in entries.items():
            image.SetMetaData(key + field, value)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    with atomic_path(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def _terminology(code: ClassCode) -> str:
    """Slicer's terminology entry string for a coded class: context ~ category ~ type ~ type modifier ~ anatomic
    context ~ region ~ region modifier, each code ``scheme^value^meaning`` (as slicerio's
    ``terminology_entry_to_string`` writes it)."""
    category = f"{code.category_scheme}^{code.category_code}^{code.category_meaning}"
    kind = f"{code.scheme}^{code.code}^{code.meaning}"
    return f"Segmentation category and type - DICOM master list~{category}~{kind}~^^~~^^~^^"
