"""The plan: decisions taken from the training cases' fingerprint, each with its reason.

Every decision is ``auto`` by default and overridden by a config key:

=================  =====================================  ===============================================
decision           key                                    ``auto`` rule
=================  =====================================  ===============================================
slice axis         ``preprocessing.slice_axis``           the axis with the largest median spacing (ties: the
                                                          last axis)
target spacing     ``preprocessing.target_spacing``       the median spacing per axis; an axis more than 3x
                                                          coarser than the others *and* with fewer than a
                                                          third of their voxels takes the 10th percentile of
                                                          its spacings instead (nnU-Net's
                                                          ``determine_fullres_target_spacing``). Only the two
                                                          in-plane axes are resampled (the model is 2D).
                                                          ``null`` = never resample.
patch size         ``preprocessing.patch_size``           the median in-plane slice at the target spacing,
                                                          rounded up to ``pad_multiple``; if it has more than
                                                          :data:`MAX_PATCH_PIXELS` pixels, both sides shrink
                                                          by the same factor until it fits
batch size         ``training.batch_size``                :data:`STEP_PIXELS` // patch pixels, clipped to
                                                          [:data:`MIN_BATCH`, :data:`MAX_BATCH`]: a step
                                                          costs about what today's hippocampus step costs
normalisation      ``preprocessing.normalization``        per channel: ``ct`` for CT, else per-volume z-score
=================  =====================================  ===============================================

The plan is written to ``<output.dir>/plan.json`` and stored in the checkpoint (``plan``); prediction repeats
its target spacing exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.fingerprint import Fingerprint
from medseg.data.resample import plan_grid
from medseg.data.slicing import resolve_slice_axis
from medseg.errors import CheckpointError, ConfigError

#: Pixels per training step of today's hippocampus runs (batch 32 of 48 x 64 patches: the padded largest slice),
#: the setting of the 5-fold CV 0.889 in 10 CPU minutes (benchmarks/RESULTS.md). ``auto`` batches keep it.
STEP_PIXELS = 32 * 48 * 64
#: Smallest automatic batch: BatchNorm statistics from fewer slices are noisy.
MIN_BATCH = 4
#: Largest automatic batch (tiny slices gain nothing from more).
MAX_BATCH = 64
#: Largest automatic patch: a batch of MIN_BATCH such patches is one STEP_PIXELS step.
MAX_PATCH_PIXELS = STEP_PIXELS // MIN_BATCH
#: nnU-Net's anisotropy threshold: an axis this many times coarser than the others is "anisotropic".
ANISOTROPY_THRESHOLD = 3.0
#: The percentile of the coarse axis' spacings used for anisotropic data (nnU-Net: 10).
ANISOTROPIC_PERCENTILE = 10.0


@dataclass
class Plan:
    """What the training cases decided.

    Attributes:
        slice_axis: Voxel axis (closest-RAS order) the 2D model slices along.
        target_spacing: Spacing (mm) the in-plane axes are resampled to; ``None`` = no resampling.
        patch_size: Training patch ``(H, W)``.
        batch_size: Slices per training step.
        channels: Input channel names in input order.
        normalization: Per channel, the normalisation parameters (``NormalizationParams.to_dict()``).
        reasons: Per decision, why it was taken.
        fingerprint: ``Fingerprint.to_dict()`` of the training cases.
        labels: What the network predicts and how it is trained for it (:func:`label_plan`): classes, the values
            label files store them as, regions, the ignore label, the loss mode and the class weights. ``None`` in
            plans written before it was recorded.
    """

    slice_axis: int
    target_spacing: tuple[float, float, float] | None
    patch_size: tuple[int, int]
    batch_size: int
    channels: list[str] = field(default_factory=lambda: ["image"])
    normalization: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``plan.json`` and the checkpoint's ``plan``)."""
        return {
            "slice_axis": int(self.slice_axis),
            "target_spacing": None if self.target_spacing is None else [float(s) for s in self.target_spacing],
            "patch_size": [int(s) for s in self.patch_size],
            "batch_size": int(self.batch_size),
            "channels": list(self.channels),
            "normalization": [dict(n) for n in self.normalization],
            "reasons": dict(self.reasons),
            "labels": self.labels,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "checkpoint") -> Plan:
        """Rebuilds a plan stored by :meth:`to_dict`.

        Raises:
            CheckpointError: If ``data`` is not a valid plan.
        """
        try:
            ts = data["target_spacing"]
            return cls(
                slice_axis=int(data["slice_axis"]),
                target_spacing=None if ts is None else tuple(float(s) for s in ts),  # type: ignore[arg-type]
                patch_size=tuple(int(s) for s in data["patch_size"]),  # type: ignore[arg-type]
                batch_size=int(data["batch_size"]),
                channels=[str(c) for c in data.get("channels", ["image"])],
                normalization=list(data.get("normalization", [])),
                reasons=dict(data.get("reasons", {})),
                fingerprint=data.get("fingerprint"),
                labels=data.get("labels"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: bad 'plan' entry: {err!r}") from None

    def summary_lines(self) -> list[str]:
        """A few lines for the run's log."""
        fp = self.fingerprint or {}
        ts = "none (no resampling)" if self.target_spacing is None else _fmt(self.target_spacing)
        lines = [
            f"Plan from {fp.get('n_cases', '?')} training case(s): median spacing "
            f"{_fmt(fp.get('median_spacing', []))} mm, median shape {_fmt(fp.get('median_shape', []), 0)}",
            f"  slice axis {self.slice_axis}: {self.reasons.get('slice_axis', '')}",
            f"  target spacing {ts}: {self.reasons.get('target_spacing', '')}",
            f"  patch {self.patch_size[0]} x {self.patch_size[1]}: {self.reasons.get('patch_size', '')}",
            f"  batch {self.batch_size}: {self.reasons.get('batch_size', '')}",
        ]
        for ch, norm in zip(self.channels, self.normalization, strict=False):
            lines.append(f"  channel '{ch}': {norm.get('scheme')}: {self.reasons.get('normalization', '')}")
        return lines


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return " x ".join(f"{float(v):.{digits}f}".rstrip("0").rstrip(".") if digits else f"{float(v):.0f}" for v in values)


def auto_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[tuple[float, float, float], str]:
    """nnU-Net's full-resolution target spacing rule, with its reason.

    Args:
        spacings: ``(n, 3)`` voxel sizes in mm.
        shapes: ``(n, 3)`` grid shapes.

    Returns:
        The target spacing and why.
    """
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[a] for a in others)
    aniso_voxels = size[worst] * ANISOTROPY_THRESHOLD < min(size[a] for a in others)
    reason = "median spacing of the training cases"
    if aniso_spacing and aniso_voxels:
        low = float(np.percentile(spacings[:, worst], ANISOTROPIC_PERCENTILE))
        finest_other = max(float(target[a]) for a in others)
        if low < finest_other:  # never finer than the other axes (nnU-Net adds the same 1e-5)
            low = finest_other + 1e-5
        reason = (
            f"median spacing; axis {worst} is more than {ANISOTROPY_THRESHOLD:g}x coarser with few voxels, so it "
            f"takes the {ANISOTROPIC_PERCENTILE:g}th percentile of its spacings ({low:.3g} mm, nnU-Net's rule)"
        )
        target[worst] = low
    return (float(target[0]), float(target[1]), float(target[2])), reason


def decide_patch(
    in_plane_shapes: np.ndarray, pad_multiple: int, setting: str | Sequence[int]
) -> tuple[tuple[int, int], str]:
    """The training patch ``(H, W)`` and why (see the module docstring for the ``auto`` rule).

    Args:
        in_plane_shapes: ``(n, 2)`` in-plane slice sizes at the target spacing.
        pad_multiple: Patches are multiples of this.
        setting: ``auto`` or ``[h, w]``.

    Raises:
        ConfigError: If an explicit patch is not a multiple of ``pad_multiple``.
    """
    if setting != "auto":
        h, w = (int(v) for v in setting)
        if h % pad_multiple or w % pad_multiple:
            raise ConfigError(
                f"preprocessing.patch_size {[h, w]} must be multiples of preprocessing.pad_multiple ({pad_multiple})"
            )
        return (h, w), "set in the config (preprocessing.patch_size)"
    med = np.median(in_plane_shapes, axis=0)
    h, w = (int(math.ceil(float(m) / pad_multiple) * pad_multiple) for m in med)
    reason = f"covers the median slice ({med[0]:.0f} x {med[1]:.0f} px at the target spacing)"
    if h * w > MAX_PATCH_PIXELS:
        scale = math.sqrt(MAX_PATCH_PIXELS / (h * w))
        h = max(pad_multiple, int(h * scale) // pad_multiple * pad_multiple)
        w = max(pad_multiple, int(w * scale) // pad_multiple * pad_multiple)
        reason = (
            f"the median slice ({med[0]:.0f} x {med[1]:.0f} px at the target spacing) shrunk to the pixel budget "
            f"of {MAX_PATCH_PIXELS} px ({MIN_BATCH} patches per {STEP_PIXELS} px step), so each patch sees part of "
            "a slice; a coarser preprocessing.target_spacing lets it see more, and buys more epochs in a time budget "
            "(LA2018: 1 mm instead of 0.625 mm, README 'What auto decided')"
        )
    return (h, w), reason


def decide_batch(patch: Sequence[int], setting: str | int) -> tuple[int, str]:
    """Slices per training step and why."""
    if setting != "auto":
        return int(setting), "set in the config (training.batch_size)"
    pixels = int(patch[0]) * int(patch[1])
    batch = int(min(MAX_BATCH, max(MIN_BATCH, STEP_PIXELS // pixels)))
    return batch, (
        f"{STEP_PIXELS} px per step (today's hippocampus step) / {pixels} px per patch, "
        f"within [{MIN_BATCH}, {MAX_BATCH}]"
    )


def make_plan(
    fingerprint: Fingerprint,
    *,
    slice_axis: str | int = "auto",
    target_spacing: str | Sequence[float] | None = "auto",
    patch_size: str | Sequence[int] = "auto",
    batch_size: str | int = "auto",
    pad_multiple: int = 16,
    channels: Sequence[str] = ("image",),
    normalization: Sequence[dict[str, Any]] = (),
    normalization_reason: str = "",
) -> Plan:
    """Takes every decision of the plan from the fingerprint and the config's overrides.

    Args:
        fingerprint: Of the training cases.
        slice_axis: ``preprocessing.slice_axis``.
        target_spacing: ``preprocessing.target_spacing``: ``auto``, ``None`` or three mm values.
        patch_size: ``preprocessing.patch_size``: ``auto`` or ``[h, w]``.
        batch_size: ``training.batch_size``: ``auto`` or a number.
        pad_multiple: ``preprocessing.pad_multiple``.
        channels: Input channel names.
        normalization: Per channel, the fitted normalisation (``NormalizationParams.to_dict()``).
        normalization_reason: Why that normalisation.

    Returns:
        The :class:`Plan`.
    """
    spacings, shapes = fingerprint.spacings, fingerprint.shapes
    median = np.median(spacings, axis=0)
    reasons: dict[str, str] = {}
    axis = resolve_slice_axis(median, slice_axis)  # type: ignore[arg-type]
    reasons["slice_axis"] = (
        "set in the config (preprocessing.slice_axis)"
        if slice_axis != "auto"
        else f"the axis with the largest median spacing ({median[axis]:.3g} mm; ties go to the last axis)"
    )

    target: tuple[float, float, float] | None
    if target_spacing is None:
        target, reasons["target_spacing"] = None, "resampling switched off (preprocessing.target_spacing: null)"
    elif target_spacing == "auto":
        target, why = auto_target_spacing(spacings, shapes)
        pairs = zip(shapes, spacings, strict=True)
        n_resampled = sum(not plan_grid(s, sp, target, axis).is_identity for s, sp in pairs)
        reasons["target_spacing"] = (
            f"{why}; only the in-plane axes are resampled ({n_resampled} of {len(shapes)} training cases differ)"
        )
    else:
        values = [float(v) for v in target_spacing]
        if len(values) != 3 or min(values) <= 0:
            raise ConfigError(
                f"preprocessing.target_spacing must be auto, null or three positive mm values, got {values}"
            )
        target = (values[0], values[1], values[2])
        reasons["target_spacing"] = "set in the config (preprocessing.target_spacing); in-plane axes resampled"

    grids = [plan_grid(s, sp, target, axis) for s, sp in zip(shapes, spacings, strict=True)]
    in_plane = np.array([g.in_plane(g.target_shape) for g in grids])
    patch, reasons["patch_size"] = decide_patch(in_plane, pad_multiple, patch_size)
    batch, reasons["batch_size"] = decide_batch(patch, batch_size)
    reasons["normalization"] = normalization_reason
    return Plan(
        slice_axis=axis,
        target_spacing=target,
        patch_size=patch,
        batch_size=batch,
        channels=list(channels),
        normalization=[dict(n) for n in normalization],
        reasons=reasons,
        fingerprint=fingerprint.to_dict(),
    )


def label_plan(
    classes: Sequence[str],
    *,
    label_values: Sequence[int] | None,
    regions: dict[str, list[Any]] | None,
    ignore_label: int | None,
    loss_mode: str,
    loss_mode_reason: str,
    class_weights: Sequence[float] | None,
    class_weights_setting: str | Sequence[float],
    class_weight_range: Sequence[float],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The plan's ``labels`` entry and the reasons for its two decisions (loss mode, class weights).

    Args:
        classes: Class names, background first (background and the regions with ``regions``).
        label_values: The value each class is stored as in the label files; ``None`` = class k is stored as k.
        regions: ``Regions.to_stored()``, or ``None`` for plain classes.
        ignore_label: The value of unannotated voxels, or ``None``.
        loss_mode: ``loss.mode`` as decided.
        loss_mode_reason: Why (``medseg.models.head.resolve_mode``).
        class_weights: The weights the loss uses (background first), or ``None``.
        class_weights_setting: ``loss.class_weights`` as configured.
        class_weight_range: ``loss.class_weight_range``.

    Returns:
        ``(labels, reasons)``: the entry, and ``{"loss_mode": ..., "class_weights": ...}``.
    """
    stored = list(range(len(classes))) if label_values is None else [int(v) for v in label_values]
    labels: dict[str, Any] = {
        "classes": list(classes),
        "stored_values": stored,
        "regions": None
        if regions is None
        else {name: list(members) for name, members in zip(regions["names"], regions["members"], strict=True)},
        "regions_class_order": None if regions is None else list(regions["paint"]),
        "ignore_label": ignore_label,
        "loss_mode": loss_mode,
        "class_weights": None
        if class_weights is None
        else {name: round(float(w), 4) for name, w in zip(classes, class_weights, strict=True)},
    }
    if isinstance(class_weights_setting, str) and class_weights_setting == "auto":
        low, high = (float(v) for v in class_weight_range)
        counted = "each region's own voxels" if regions is not None else "the training labels' voxels per class"
        weights_reason = (
            f"inverse voxel frequency ({counted}{', annotated voxels only' if ignore_label is not None else ''}), "
            f"normalised to mean 1 and clipped to [{low:g}, {high:g}] (loss.class_weights: auto)"
        )
    elif class_weights is None:
        weights_reason = "none: every class weighs the same (loss.class_weights: none)"
    else:
        weights_reason = "set in the config (loss.class_weights)"
    return labels, {"loss_mode": loss_mode_reason, "class_weights": weights_reason}


#: How to read the axes of a plan (written at the top of ``plan.json``).
AXES_NOTE = (
    "slice_axis, spacings, shapes and target_spacing are in closest-RAS voxel order: each scan's voxel axes are "
    "permuted (and flipped) to the order nearest to right-left, posterior-anterior, inferior-superior before "
    "anything else, so axis 2 is the one closest to inferior-superior whatever order a file stores; for most "
    "NIfTI files that is the file's own order"
)


def write_plan(plan: Plan, path: str | Path, skipped: Sequence[Any] = ()) -> Path:
    """Writes ``plan.json`` atomically and returns its path.

    Args:
        plan: The plan.
        path: ``<output.dir>/plan.json``.
        skipped: Cases left out with ``data.skip_bad_cases`` (``SkippedCase``), listed with their reasons (the run
            report shows the file).
    """
    from medseg.io.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    listed = {"skipped_cases": [case.to_dict() for case in skipped]} if skipped else {}
    atomic_write_text(path, json.dumps({"axes": AXES_NOTE, **plan.to_dict(), **listed}, indent=2) + "\n")
    return path
