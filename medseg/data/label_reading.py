"""How a dataset's label files are read: one object for the three things a dataset may say about them.

- which value each class is stored as (``data.label_values`` or ``dataset.json``; ``medseg.data.label_values``);
- what any other value means (``data.unlisted_labels``): refused by default; ``background`` reads it as 0, so a
  subset of a multi-label set (three of TotalSegmentator's 100+ structures, say) trains without rewriting files;
- which value marks unannotated voxels (``data.ignore_label``; sparse annotation): read as index ``n_classes``
  (``medseg.data.unannotated``);
- which overlapping regions the classes are (``data.regions``; ``medseg.data.regions``): each stored value is read
  as the last region holding it;
- whether a label saved cut to its extent is placed on its image's grid (``data.place_cut_labels``;
  ``medseg.data.label_grid``);
- for labels that name their segments (DICOM SEG / RTSTRUCT, structure folders, Slicer), which other names a class
  goes by (``data.class_aliases``), and whether segments that are no class's are left out (``unlisted_labels``).

Training (``medseg.data.prepare``) and evaluation (ground truth and predictions) read labels through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medseg.data.checks import label_problem, value_problem
from medseg.data.label_values import is_identity, to_classes, unexpected_values

if TYPE_CHECKING:
    from medseg.config import DataConfig
    from medseg.data.regions import Regions
    from medseg.io.segmentation import LabelKind


@dataclass(frozen=True)
class LabelReading:
    """How label files are read (see the module docstring).

    Attributes:
        values: The value each class is stored as, in class order; ``None`` = class k as k.
        unlisted_background: Values not among the classes' are read as background instead of refused.
        place_cut: Place a label saved cut to its extent on its image's grid by its position.
        aliases: Other names of some classes, as (class, names) pairs (``data.class_aliases``).
        ignore: The value stored for unannotated voxels (``data.ignore_label``), read as index ``n_classes``;
            ``None`` = every voxel is annotated.
        regions: The regions the classes are (``data.regions``); label maps then hold any of the regions'
            values, each read as its painted class. ``None`` = plain classes.
    """

    values: tuple[int, ...] | None = None
    unlisted_background: bool = False
    place_cut: bool = False
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ignore: int | None = None
    regions: Regions | None = None

    @classmethod
    def of(
        cls,
        data: DataConfig,
        values: Sequence[int] | None,
        ignore: int | None = None,
        regions: Regions | None = None,
    ) -> LabelReading:
        """From the ``data`` config and what discovery settled on (``DatasetSpec.label_values``,
        ``DatasetSpec.ignore_label``, without which ``data.ignore_label``, and ``DatasetSpec.regions``: regions are
        taken only as given, since a checkpoint's classes may not be the config's regions)."""
        ignore = ignore if ignore is not None else data.ignore_label
        return cls(
            values=None if values is None or is_identity(values) else tuple(int(v) for v in values),
            unlisted_background=data.unlisted_labels == "background",
            place_cut=data.place_cut_labels,
            aliases=tuple((cls, tuple(names)) for cls, names in data.class_aliases.items()),
            ignore=ignore,
            regions=regions,
        )

    def alias_map(self) -> dict[str, list[str]] | None:
        """``aliases`` as the readers take them (class name -> other names); ``None`` when there are none."""
        return {cls: list(names) for cls, names in self.aliases} or None

    def for_kind(self, kind: LabelKind) -> LabelReading:
        """How a label of this kind (``medseg.io.segmentation.label_kind``) is read. One that names its segments
        holds class indices already: stored and unlisted values concern label maps only. With regions its segments
        are the regions, read with ``nested=True`` (``medseg.io.segmentation.load_label``) into painted classes. A
        3D Slicer segmentation saved cut to its segments' extent is placed by its header: it is a segmentation of
        that image by design."""
        if kind == "map":
            return self
        # Segments named after the regions, read with ``nested`` (the innermost wins), hold painted classes already.
        return LabelReading(place_cut=self.place_cut or kind == "slicer")

    def _stored(self, n_classes: int) -> list[int] | None:
        # The stored value of each index: the classes', then the unannotated voxels' (index n_classes).
        if self.ignore is None:
            return None if self.values is None else list(self.values)
        return [*(self.values if self.values is not None else range(n_classes)), self.ignore]

    def problem(self, label: np.ndarray, n_classes: int) -> str | None:
        """Why ``label`` cannot be read as a label map of ``n_classes`` classes, or ``None``."""
        if self.regions is not None:
            problem = value_problem(np.asarray(label))
            if problem or self.unlisted_background:
                return problem
            bad = unexpected_values(np.asarray(label), self.regions.values)
            if bad.size:
                return f"label values {bad[:10].tolist()} belong to no region ({self.regions.describe()})"
            return None
        if self.unlisted_background:
            return value_problem(np.asarray(label))
        if self.ignore is None:
            return label_problem(label, n_classes, self.values)
        problem = value_problem(np.asarray(label))
        if problem:
            return problem
        stored = self._stored(n_classes)
        assert stored is not None  # with an ignore value there is always a list
        bad = unexpected_values(np.asarray(label), stored)
        if bad.size:
            return (
                f"label values {bad[:10].tolist()} are neither the classes' stored values {stored[:-1]} nor the "
                f"value of unannotated voxels, {self.ignore} (data.ignore_label)"
            )
        return None

    def indices(self, label: np.ndarray, n_classes: int, dtype: type[np.integer] = np.uint8) -> np.ndarray:
        """Class indices of a label volume that passed :meth:`problem` (stored values mapped, unlisted ones 0,
        unannotated voxels ``n_classes``; with regions, each value the last region holding it)."""
        if self.regions is not None:
            index = self.regions.painted_index()
            known = self.regions.values
            # The position of each voxel's value in ``known`` (0, background, for an unlisted one).
            positions = to_classes(label, known, np.int64, unlisted=0 if self.unlisted_background else None)
            return np.asarray([index[v] for v in known], dtype=dtype)[positions]
        stored = self._stored(n_classes)
        if not self.unlisted_background and is_identity(stored):
            return np.asarray(label).astype(dtype)
        values = stored if stored is not None else range(n_classes)
        return to_classes(label, list(values), dtype, unlisted=0 if self.unlisted_background else None)

    def describe(self, classes: Sequence[str]) -> str | None:
        """One log line on what is not the default (stored values, unlisted values, aliases), or ``None``."""
        if self.regions is not None:  # the painted values and the regions' values say it all
            return "Label files: " + self.regions.describe() + " (predicted masks are written with the painted values)"
        parts = []
        if self.values is not None:
            parts.append(
                "classes stored as "
                + ", ".join(f"{n}={v}" for n, v in zip(classes, self.values, strict=True))
                + " (predicted masks are written so too)"
            )
        if self.unlisted_background:
            listed = list(self.values) if self.values is not None else list(range(len(classes)))
            parts.append(
                f"values other than {listed}, and segments / ROIs / structures no class names, read as background"
            )
        if self.ignore is not None:
            parts.append(f"{self.ignore} marks unannotated voxels (left out of the loss and the scores)")
        parts += [f"{cls} also named {', '.join(names)}" for cls, names in self.aliases]
        return "Label files: " + "; ".join(parts) if parts else None
