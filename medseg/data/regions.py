"""Overlapping label regions (nnU-Net's region-based training): BraTS's whole tumour / tumour core / enhancing.

A label map stores one value per voxel, but the structures a study scores may contain each other: in BraTS the
whole tumour (all tumour labels) holds the tumour core, which holds the enhancing tumour. nnU-Net trains such
*regions* with one sigmoid each, a region's target being "the voxel's value is one of the region's", and paints
the prediction back into one label map region by region: every voxel whose region probability is > 0.5 gets the
region's value, later regions over earlier ones (``regions_class_order``). An msd / nnU-Net v2 ``dataset.json``
declares them as labels with lists of values::

    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3]

and a config as ``data.regions`` with ``data.regions_class_order`` (``medseg.config.DataConfig``).

Inside medseg the classes are background and the regions, in painting order, and a label map holds the *painted*
index: a voxel stored as ``v`` reads as the last region that contains ``v``. The painted map determines every
region exactly when each value belongs to the same regions as its painted region's value (:meth:`Regions.problem`
refuses a definition where it does not), so training reads labels once into painted indices, the loss takes
each region's target from :meth:`Regions.membership`, and metrics score each region as its own mask
(:func:`class_mask`). Predicted masks are written with the painted values, as nnU-Net writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.data.label_values import MAX_LABEL_VALUE

BACKGROUND = "background"


@dataclass(frozen=True)
class Regions:
    """Named regions, each a set of stored label values, and the value each is painted with.

    Attributes:
        names: Region names in painting order (later regions are painted over earlier ones).
        members: The stored values each region holds, per region.
        paint: The value each region is written as, per region (nnU-Net's ``regions_class_order``).
    """

    names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    paint: tuple[int, ...]

    @classmethod
    def of(cls, regions: Mapping[str, Sequence[int] | int], paint: Sequence[int]) -> Regions:
        """From a mapping ``name -> values`` (a single value counts as a one-value region) in painting order, and
        the painted value of each. Call :meth:`problem` before use."""
        members = tuple(tuple(int(v) for v in ([v] if isinstance(v, int) else v)) for v in regions.values())
        return cls(names=tuple(str(n) for n in regions), members=members, paint=tuple(int(v) for v in paint))

    @classmethod
    def from_stored(cls, stored: Any) -> Regions | None:
        """From what :meth:`to_stored` wrote into a checkpoint (``None`` stays ``None``)."""
        if stored is None:
            return None
        return cls.of(dict(zip(stored["names"], stored["members"], strict=True)), stored["paint"])

    def to_stored(self) -> dict[str, list[Any]]:
        """Plain lists, as a checkpoint stores them."""
        return {"names": list(self.names), "members": [list(m) for m in self.members], "paint": list(self.paint)}

    # ------------------------------------------------------------------ checks

    def problem(self) -> str | None:
        """Why these regions cannot be trained and painted back into one label map, or ``None``."""
        if not self.names:
            return "regions: need at least one region"
        if len(self.paint) != len(self.names):
            return (
                f"regions_class_order {list(self.paint)} gives {len(self.paint)} values for {len(self.names)} regions "
                f"{list(self.names)}: give the value each region is written as, in the regions' order"
            )
        if len(set(self.names)) != len(self.names) or BACKGROUND in self.names:
            return f"region names must differ from each other and from '{BACKGROUND}', got {list(self.names)}"
        for name, values, painted in zip(self.names, self.members, self.paint, strict=True):
            if not values or any(not 0 < v <= MAX_LABEL_VALUE for v in values) or len(set(values)) != len(values):
                return f"region '{name}' must hold distinct label values in 1..{MAX_LABEL_VALUE}, got {list(values)}"
            if painted not in values:
                return f"region '{name}' is written as {painted}, which is not one of its values {list(values)}"
        index = self.painted_index()
        for r, (name, painted) in enumerate(zip(self.names, self.paint, strict=True), start=1):
            if index[painted] != r:
                later = self.names[index[painted] - 1]
                return (
                    f"region '{name}' is written as {painted}, which region '{later}' (painted after it) holds too: "
                    f"'{name}' would be painted over everywhere; reorder the regions or pick another value"
                )
        for value, r in sorted(index.items()):
            if value == 0:
                continue
            own, as_painted = self._regions_of(value), self._regions_of(self.paint[r - 1])
            if own != as_painted:
                return (
                    f"label value {value} belongs to regions {sorted(self.names[i] for i in own)} but is painted as "
                    f"{self.paint[r - 1]} ('{self.names[r - 1]}'), which belongs to "
                    f"{sorted(self.names[i] for i in as_painted)}: a painted mask could not tell them apart"
                )
        return None

    def _regions_of(self, value: int) -> frozenset[int]:
        return frozenset(i for i, values in enumerate(self.members) if value in values)

    # ------------------------------------------------------------------ the painted label map

    @property
    def classes(self) -> list[str]:
        """The classes inside medseg: background, then the regions in painting order."""
        return [BACKGROUND, *self.names]

    @property
    def label_values(self) -> list[int]:
        """The value each class is written as: 0, then each region's painted value."""
        return [0, *self.paint]

    @property
    def values(self) -> list[int]:
        """Every stored value a label file may hold (background 0 included), sorted."""
        return sorted({0, *(v for values in self.members for v in values)})

    def painted_index(self) -> dict[int, int]:
        """Stored value -> class index: the last region holding it (1-based; background 0 -> 0)."""
        index = {0: 0}
        for r, values in enumerate(self.members, start=1):
            for v in values:
                index[v] = r
        return index

    def membership(self) -> np.ndarray:
        """``(n_classes, n_classes)`` bool: entry ``[r, k]`` says whether a voxel of painted class ``k`` lies in
        region ``r`` (row and column 0: background, which lies only in itself)."""
        n = len(self.names) + 1
        table = np.zeros((n, n), dtype=bool)
        table[0, 0] = True
        for k, painted in enumerate(self.paint, start=1):
            for r in self._regions_of(painted):
                table[r + 1, k] = True
        return table

    def describe(self) -> str:
        """One log line: each region's values and painted value."""
        parts = [
            f"{name} = {{{', '.join(map(str, values))}}} written as {painted}"
            for name, values, painted in zip(self.names, self.members, self.paint, strict=True)
        ]
        return "Regions (one sigmoid each, painted in this order): " + "; ".join(parts)


def class_mask(labels: np.ndarray, c: int, membership: np.ndarray | None = None) -> np.ndarray:
    """The voxels of class ``c`` in a label map of class indices: ``labels == c``, or with regions
    (``membership`` from :meth:`Regions.membership`) every voxel inside region ``c``."""
    return np.asarray(labels) == c if membership is None else membership[c][np.asarray(labels)]


def regions_from_labels(labels: Any, order: Any, source: str) -> Regions | None:
    """The regions a ``dataset.json`` declares (nnU-Net v2: labels with lists of values and
    ``regions_class_order``), or ``None`` when every label is a single value.

    Raises:
        ValueError: Region labels without ``regions_class_order``, or regions that :meth:`Regions.problem`
            refuses; the message names ``source``.
    """
    if not isinstance(labels, dict) or not any(isinstance(v, list) for v in labels.values()):
        return None
    regions: dict[str, list[int]] = {}
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValueError(f"'{source}': label '{name}' maps to {value!r}; region values must be integers")
        if name == "ignore":
            raise ValueError(
                f"'{source}': an 'ignore' label together with regions is not supported: give the unannotated "
                "voxels a region-free dataset or annotate them"
            )
        if values == [0]:
            continue  # background
        regions[str(name)] = values
    if order is None:
        raise ValueError(
            f"'{source}': labels {list(regions)} are regions (lists of values) but 'regions_class_order' is missing: "
            "it gives the value each region is written as, in the regions' order (nnU-Net v2)"
        )
    if not isinstance(order, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in order):
        raise ValueError(f"'{source}': regions_class_order must be a list of integers, got {order!r}")
    found = Regions.of(regions, order)
    problem = found.problem()
    if problem:
        raise ValueError(f"'{source}': {problem}")
    return found
