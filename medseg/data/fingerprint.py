"""Dataset fingerprint: what the plan is decided from, measured on the training cases only.

Collected case by case while the training cases are read (no second read): each case's shape and spacing (in
closest-RAS voxel order, as the model sees it), the voxels of each class, and a seeded subsample of raw
intensities per channel (foreground voxels, ``label > 0``, as nnU-Net's fingerprint; all voxels when a case has
no foreground). :meth:`Fingerprint.to_dict` is the ``fingerprint`` part of ``plan.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.data.class_weights import per_region
from medseg.data.unannotated import foreground_mask
from medseg.metrics import class_voxel_counts

#: Raw intensity samples kept per case and channel for the percentiles (nnU-Net keeps 10,000 per case).
INTENSITY_SAMPLES_PER_CASE = 10_000
#: Percentiles reported per channel (CT: the 0.5 / 99.5 pair is nnU-Net's clip range).
PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5)


@dataclass(frozen=True)
class CaseFingerprint:
    """One training case.

    Attributes:
        id: Case id.
        shape: Voxel grid ``(I, J, K)`` in closest-RAS order.
        spacing: Voxel size (mm) along i, j, k.
        class_voxels: Voxels per class (background first).
        scan_min: Per channel, the lowest raw intensity of the whole scan (CT: air, about -1000 HU, or the
            scanner's padding value below it).
        voxel_mm3: Volume of one voxel (``Volume.voxel_volume``, ``|det|``: less than the product of the spacing
            on a sheared grid); ``None`` = that product.
    """

    id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    class_voxels: tuple[int, ...]
    scan_min: tuple[float, ...] = ()
    voxel_mm3: float | None = None

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL."""
        mm3 = float(np.prod(self.spacing)) if self.voxel_mm3 is None else float(self.voxel_mm3)
        return mm3 / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "id": self.id,
            "shape": list(self.shape),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "class_voxels": list(self.class_voxels),
            "scan_min": [float(v) for v in self.scan_min],
        }


@dataclass
class FingerprintAccumulator:
    """Adds cases one at a time; :meth:`result` gives the :class:`Fingerprint`.

    Args:
        classes: Class names, background first.
        channels: Input channel names, in input order.
        seed: Seed of the intensity subsample.
        membership: Overlapping regions (``Regions.membership``): each region's voxels are counted (so the
            frequencies overlap), not each painted class's.
    """

    classes: Sequence[str]
    channels: Sequence[str] = ("image",)
    seed: int = 0
    membership: np.ndarray | None = None
    cases: list[CaseFingerprint] = field(default_factory=list)
    _samples: list[list[np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._samples = [[] for _ in self.channels]

    def add(
        self,
        case_id: str,
        image: np.ndarray,
        label: np.ndarray | None,
        spacing: Sequence[float] | np.ndarray,
        voxel_mm3: float | None = None,
    ) -> None:
        """Adds one case.

        Args:
            case_id: Case id.
            image: Raw intensities ``(I, J, K)`` (one channel) or ``(C, I, J, K)``.
            label: Labels ``(I, J, K)`` or ``None``.
            spacing: Voxel size in mm.
            voxel_mm3: Volume of one voxel (``Volume.voxel_volume``); ``None`` = the product of ``spacing``.
        """
        arr = np.asarray(image)
        chans = arr[None] if arr.ndim == 3 else arr
        if chans.shape[0] != len(self.channels):
            raise ValueError(f"case '{case_id}': {chans.shape[0]} channels, expected {len(self.channels)}")
        n_classes = len(self.classes)
        if label is not None:
            counts = per_region(class_voxel_counts(label, n_classes), self.membership)
            # Unannotated voxels (index n_classes, ``medseg.data.unannotated``) are neither counted nor foreground.
            fg = foreground_mask(label, n_classes).reshape(-1)
        else:
            counts = np.zeros(n_classes, dtype=np.int64)
            fg = None
        for c in range(chans.shape[0]):
            flat = chans[c].reshape(-1)
            values = flat[fg] if fg is not None and fg.any() else flat
            if values.size > INTENSITY_SAMPLES_PER_CASE:
                values = self._rng.choice(values, INTENSITY_SAMPLES_PER_CASE, replace=False)
            self._samples[c].append(np.asarray(values, dtype=np.float64))
        self.cases.append(
            CaseFingerprint(
                id=case_id,
                shape=tuple(int(s) for s in chans.shape[1:]),  # type: ignore[arg-type]
                spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                class_voxels=tuple(int(v) for v in counts),
                scan_min=tuple(float(np.min(chans[c])) for c in range(chans.shape[0])),
                voxel_mm3=None if voxel_mm3 is None else float(voxel_mm3),
            )
        )

    def result(self) -> Fingerprint:
        """The fingerprint of the cases added so far.

        Raises:
            ValueError: If no case was added.
        """
        if not self.cases:
            raise ValueError("a fingerprint needs at least one training case")
        intensities = []
        for name, parts in zip(self.channels, self._samples, strict=True):
            values = np.concatenate(parts) if parts else np.zeros(1)
            pct = np.percentile(values, PERCENTILES)
            intensities.append(
                {
                    "channel": str(name),
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "min": float(values.min()),
                    "max": float(values.max()),
                    "percentiles": {f"{p:g}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
                }
            )
        overlapping = self.membership is not None
        return Fingerprint(list(self.cases), list(self.classes), intensities, overlapping=overlapping)


@dataclass
class Fingerprint:
    """The training cases' geometry, classes and intensities.

    Attributes:
        cases: One :class:`CaseFingerprint` per training case.
        classes: Class names, background first.
        intensities: Per channel: mean, std, min, max and :data:`PERCENTILES` of foreground raw intensities.
        overlapping: The classes are overlapping regions (``medseg.data.regions``): ``class_voxels`` count each
            region's voxels, so they overlap and add up to more than the voxels.
    """

    cases: list[CaseFingerprint]
    classes: list[str]
    intensities: list[dict[str, Any]]
    overlapping: bool = False

    @property
    def spacings(self) -> np.ndarray:
        """``(n_cases, 3)`` voxel sizes in mm."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> np.ndarray:
        """``(n_cases, 3)`` voxel grid shapes."""
        return np.array([c.shape for c in self.cases], dtype=np.int64)

    def scan_minima(self, channel: int = 0) -> np.ndarray:
        """``(n_cases,)`` lowest raw intensity of each training scan in ``channel``."""
        return np.array([c.scan_min[channel] for c in self.cases], dtype=np.float64)

    def class_frequencies(self) -> list[float]:
        """Share of all training voxels held by each class (by each region: shares that overlap)."""
        counts = np.array([c.class_voxels for c in self.cases], dtype=np.float64).sum(axis=0)
        # Regions are never sparse (medseg refuses an ignore label with them): every voxel counts.
        total = float(np.prod(self.shapes, axis=1).sum()) if self.overlapping else counts.sum()
        return [float(v / total) if total else 0.0 for v in counts]

    def class_volumes_ml(self) -> dict[str, dict[str, float]]:
        """Per foreground class: median, min and max volume in mL over the training cases."""
        out: dict[str, dict[str, float]] = {}
        voxel_ml = np.array([c.voxel_ml for c in self.cases])  # |det| per case: right on sheared grids too
        counts = np.array([c.class_voxels for c in self.cases], dtype=np.float64)
        for i, name in enumerate(self.classes):
            if i == 0:
                continue
            ml = counts[:, i] * voxel_ml
            out[name] = {"median": float(np.median(ml)), "min": float(ml.min()), "max": float(ml.max())}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the ``fingerprint`` of ``plan.json``)."""
        return {
            "n_cases": len(self.cases),
            "median_spacing": [float(v) for v in np.median(self.spacings, axis=0)],
            "median_shape": [float(v) for v in np.median(self.shapes, axis=0)],
            "class_frequencies": dict(zip(self.classes, self.class_frequencies(), strict=True)),
            "class_volumes_ml": self.class_volumes_ml(),
            "intensities": self.intensities,
            **self._annotated(),
            **(
                {
                    "note": "the classes are overlapping regions: each frequency and volume is the region's own, so "
                    "the frequencies add up to more than 1"
                }
                if self.overlapping
                else {}
            ),
            "cases": [c.to_dict() for c in self.cases],
        }

    def _annotated(self) -> dict[str, Any]:
        # Sparse annotation (medseg.data.unannotated): the class statistics above count annotated voxels only.
        total = float(np.prod(self.shapes, axis=1).sum())
        annotated = float(np.array([c.class_voxels for c in self.cases], dtype=np.float64).sum())
        if total == 0 or annotated >= total or self.overlapping:
            return {}
        return {
            "annotated_share": annotated / total,
            "note": "some voxels are unannotated: class frequencies and volumes count annotated voxels only",
        }
