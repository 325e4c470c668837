"""Quality control of predicted scans: which masks to look at first, and why.

Every predicted scan gets ``qc_flags`` (reasons, ``;``-separated in ``predictions.csv``, empty when none) and a
``qc_score`` (0 = typical; >= 1 = flagged; larger = further out). Each check turns one number into a robust z-score
against a reference recorded at training time (``qc_reference`` in the checkpoint, built by
:func:`build_reference` from the training and validation cases):

==========  ===================================================  ===========================  ===================
check       number                                               reference                    threshold
==========  ===================================================  ===========================  ===================
intensity   share of voxels < 0; 1/25/50/75/99th percentiles of  training scans               ``intensity_z``
            the scan z-scored by its own mean and std (input)
spacing     voxel size in mm per axis, closest-RAS order         training range [min, max]    ``geometry_factor``
shape       voxels per axis, closest-RAS order                   training range [min, max]    ``geometry_factor``
empty       no voxel of a class (that every training label has)  training labels              always
volume      class volume in mL                                   training labels holding it   ``volume_z``
components  3D connected components of a class                   validation predictions       ``components_z``
confidence  mean max-probability in the predicted foreground     validation predictions       ``confidence_z``
entropy     mean normalised entropy in the predicted foreground  validation predictions       ``confidence_z``
==========  ===================================================  ===========================  ===================

Robust z = (x - median) / max(1.4826 * MAD, floor): the floor (``_FLOORS``) stops a reference with no spread
(every hippocampus scan has no negative voxel; postprocessing leaves one component) from flagging the smallest
difference. ``qc_score`` is the largest ratio z / threshold over all checks (spacing/shape: how far outside the
range, in units of the factor), capped at :data:`MAX_SCORE`; an empty mask scores :data:`MAX_SCORE`.

Thresholds (``inference.qc`` in the config, :class:`medseg.config.QCConfig`) were chosen on held-out hippocampus
cases with ``benchmarks/qc_eval.py`` (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch

from medseg.config import QCConfig
from medseg.data.class_weights import per_region
from medseg.inference.postprocess import component_counts
from medseg.metrics import class_voxel_counts

#: Version of the ``qc_reference`` dict stored in checkpoints.
REFERENCE_VERSION = 1
#: Largest ``qc_score`` (an empty mask gets it); keeps the CSV column finite and sortable.
MAX_SCORE = 100.0
#: At most this many voxels enter the intensity statistics (a strided subsample: 512^3 CTs stay fast).
_MAX_SAMPLES = 1_000_000
#: Scale floors of the robust z-scores (see module docstring), in the units of each number.
_FLOORS: dict[str, float] = {
    "neg_fraction": 0.01,
    "zp01": 0.1,
    "zp25": 0.1,
    "zp50": 0.1,
    "zp75": 0.1,
    "zp99": 0.1,
    "components": 1.0,
    "mean_confidence": 0.02,
    "mean_entropy": 0.02,
}
#: Relative floor for class volumes: 15% of the median training volume. Structure volumes differ by about that
#: much between healthy people; the MAD of a few training labels can be far smaller (10 sample_data labels: 6%,
#: which flagged a correct Posterior label at z = 4.1).
_VOLUME_FLOOR = 0.15
#: Fewest training labels holding a class for its volume check (a median and spread of fewer mean little).
MIN_VOLUME_REFERENCE = 3
INTENSITY_FEATURES = ("neg_fraction", "zp01", "zp25", "zp50", "zp75", "zp99")


@dataclass
class QCResult:
    """QC of one predicted scan.

    Attributes:
        flags: Reasons the scan is flagged (empty when it looks typical); ``None`` when QC could not run.
        score: ``max(z / threshold)`` over the checks (>= 1 means flagged); ``None`` when QC could not run.
        features: The numbers measured on the scan and its mask.
        note: Why QC did not run (e.g. a checkpoint without a QC reference), else ``""``.
        checks: Each check's ratio z / threshold (``intensity``, ``spacing``, ``shape``, ``empty``,
            ``volume_<class>``, ``components_<class>``, ``confidence``, ``entropy``); >= 1 flags the scan.
    """

    flags: list[str] | None
    score: float | None
    features: dict[str, float] = field(default_factory=dict)
    note: str = ""
    checks: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        """Whether any check flagged the scan."""
        return bool(self.flags)

    def row(self) -> dict[str, str]:
        """The ``qc_flags`` / ``qc_score`` cells of a ``predictions.csv`` row (empty when QC did not run)."""
        if self.flags is None or self.score is None:
            return {"qc_flags": "", "qc_score": ""}
        return {"qc_flags": "; ".join(self.flags), "qc_score": f"{self.score:.3f}"}


# ------------------------------------------------------------------------------------------------------ features


def intensity_features(array: np.ndarray) -> dict[str, float]:
    """Intensity statistics of a scan that tell modalities apart whatever its intensity scale.

    Args:
        array: The scan's voxels (any shape, any dtype).

    Returns:
        ``neg_fraction`` (share of finite voxels below 0) and ``zp01`` .. ``zp99`` (percentiles of the voxels
        z-scored by the scan's own mean and standard deviation, which is scale-free like the per-scan
        normalisation of MRI).
    """
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // _MAX_SAMPLES)
    sample = flat[::step].astype(np.float32)  # exact for every integer scan type but 32-bit ints above 2**24
    # One sort, then linear interpolation between the order statistics either side of each rank (np.percentile's
    # default method, same values): a seventh of np.percentile's cost, whose multi-kth introselect took 1.5 % of
    # a hippocampus prediction, where numpy's sort is vectorised.
    finite = np.isfinite(sample)
    sample = np.sort(sample if finite.all() else sample[finite])
    n = sample.size
    if n == 0:
        return {name: float("nan") for name in INTENSITY_FEATURES}
    mean = float(sample.mean(dtype=np.float64))
    std = float(sample.std(dtype=np.float64)) or 1.0
    ranks = np.array([1.0, 25.0, 50.0, 75.0, 99.0]) / 100.0 * (n - 1)
    lo = np.floor(ranks).astype(np.int64)
    below, above = sample[lo].astype(np.float64), sample[np.minimum(lo + 1, n - 1)].astype(np.float64)
    p01, p25, p50, p75, p99 = (below + (above - below) * (ranks - lo) - mean) / std
    return {
        "neg_fraction": float(np.searchsorted(sample, 0.0)) / n,
        "zp01": float(p01),
        "zp25": float(p25),
        "zp50": float(p50),
        "zp75": float(p75),
        "zp99": float(p99),
    }


def geometry_features(spacing: Sequence[float] | np.ndarray, shape: Sequence[int]) -> dict[str, float]:
    """Spacing (mm) and shape per axis as ``spacing_0..2`` and ``shape_0..2`` (closest-RAS order expected)."""
    out = {f"spacing_{i}": float(s) for i, s in enumerate(spacing)}
    out.update({f"shape_{i}": float(n) for i, n in enumerate(shape)})
    return out


def class_volumes(
    labels: np.ndarray,
    voxel_mm3: float,
    classes: Sequence[str],
    membership: np.ndarray | None = None,
) -> dict[str, tuple[int, float]]:
    """Voxel count and volume in mL of each foreground class of a label volume (of each region, with
    ``membership``: ``Regions.membership``). ``voxel_mm3`` is ``Volume.voxel_volume`` (``|det|``: the product of
    the spacing over-counts on a sheared grid). The one rule for volumes in ``predictions.csv``, QC and its
    reference."""
    counts = per_region(class_voxel_counts(labels, len(classes)), membership)
    voxel_ml = float(voxel_mm3) / 1000.0
    return {name: (int(counts[i]), int(counts[i]) * voxel_ml) for i, name in enumerate(classes) if i > 0}


def label_volumes_ml(
    labels: np.ndarray,
    voxel_mm3: float,
    classes: Sequence[str],
    membership: np.ndarray | None = None,
) -> dict[str, float]:
    """Volume in mL of each foreground class (or region) of a label volume (:func:`class_volumes`)."""
    return {name: ml for name, (_, ml) in class_volumes(labels, voxel_mm3, classes, membership).items()}


@overload
def voxel_confidence(
    probs: np.ndarray, *, channel_dim: int = 0, regions: bool = False
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def voxel_confidence(
    probs: torch.Tensor, *, channel_dim: int = 0, regions: bool = False
) -> tuple[torch.Tensor, torch.Tensor]: ...
def voxel_confidence(
    probs: np.ndarray | torch.Tensor, *, channel_dim: int = 0, regions: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
    """Per voxel of class probabilities: the largest class probability and the entropy (0..1).

    Probabilities are normalised to sum 1 per voxel first (sigmoid outputs need not); the entropy is divided by
    ``log(n_classes)`` (at least ``log 2``). Computed in torch (both cores, fewer temporaries than numpy: a
    third of the time on a 64-slice LA2018 slab).

    With ``regions`` (a region model: channels ``1..`` are overlapping regions' sigmoids, channel 0 ``1 - max``)
    each region is a yes/no question of its own: the confidence is the mean over regions of ``max(p, 1 - p)`` and
    the entropy the mean binary entropy (divided by ``log 2``). Normalised across channels instead, a voxel that
    every nested region claims with 0.99 would read as 0.33 confident.

    Args:
        probs: Probabilities with the classes on ``channel_dim``: a numpy array or a tensor.
        channel_dim: The class axis.
        regions: The channels after the first are overlapping regions' probabilities.

    Returns:
        ``(confidence, entropy)``, float32, shaped like ``probs`` without the class axis; numpy arrays for an
        array, tensors for a tensor.
    """
    as_numpy = isinstance(probs, np.ndarray)
    # ascontiguousarray: torch.from_numpy refuses negative strides.
    p = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32)) if as_numpy else torch.as_tensor(probs).float()
    with torch.inference_mode():
        if regions:
            q = p.narrow(channel_dim, 1, p.shape[channel_dim] - 1).clamp(0.0, 1.0)
            confidence = torch.maximum(q, 1.0 - q).mean(dim=channel_dim)
            binary = q * q.clamp_min(1e-8).log() + (1.0 - q) * (1.0 - q).clamp_min(1e-8).log()
            entropy = binary.mean(dim=channel_dim).div_(-math.log(2.0))
            return (confidence.numpy(), entropy.numpy()) if as_numpy else (confidence, entropy)
        p = p / p.sum(dim=channel_dim, keepdim=True).clamp_min(1e-8)
        entropy = (p * p.clamp_min(1e-8).log()).sum(dim=channel_dim).div_(-math.log(max(2, p.shape[channel_dim])))
        confidence = p.amax(dim=channel_dim)
    if as_numpy:
        return confidence.numpy(), entropy.numpy()
    return confidence, entropy


@dataclass
class ConfidenceMaps:
    """:func:`voxel_confidence` of a whole scan, filled slab by slab during prediction (QC without keeping every
    class's probabilities: 4 bytes a voxel instead of ``4 * n_classes`` and the whole-volume copies).

    Stored as float16 (3 significant digits): QC averages them over the foreground, and its confidence check's
    scale floor is 0.02, far above that rounding. Voxels never filled are NaN ("not computed"), so a mean over
    a voxel the maps do not cover is NaN, never a silent zero.

    Attributes:
        confidence: ``(I, J, K)`` largest normalised class probability per voxel.
        entropy: ``(I, J, K)`` normalised entropy per voxel.
        regions: The probabilities are a region model's (:func:`voxel_confidence`).
    """

    confidence: np.ndarray
    entropy: np.ndarray
    regions: bool = False

    @classmethod
    def empty(cls, shape: Sequence[int], *, regions: bool = False) -> ConfidenceMaps:
        """Maps of ``shape``, all NaN, to be filled with :meth:`fill` or :meth:`fill_slices`."""
        shape = tuple(int(n) for n in shape)
        return cls(np.full(shape, np.nan, dtype=np.float16), np.full(shape, np.nan, dtype=np.float16), regions)

    @classmethod
    def from_probs(cls, probs: np.ndarray, *, regions: bool = False) -> ConfidenceMaps:
        """Maps of a whole ``(n_classes, I, J, K)`` probability volume."""
        maps = cls.empty(probs.shape[1:], regions=regions)
        maps.fill((slice(None),) * 3, probs)
        return maps

    def fill(self, index: tuple[slice, ...], probs: np.ndarray) -> None:
        """Writes the maps of ``probs`` (``(n_classes, ...)``, the shape of ``self.confidence[index]``) at ``index``."""
        confidence, entropy = voxel_confidence(probs, regions=self.regions)
        self.confidence[index] = confidence
        self.entropy[index] = entropy

    def fill_slices(
        self, index: tuple[slice, ...], axis: int, probs: torch.Tensor, labels: torch.Tensor | None = None
    ) -> None:
        """Writes the maps of ``(b, n_classes, H, W)`` slice probabilities (slices along ``axis``) at ``index``.

        Args:
            index: Where the ``b`` slices lie in the maps (:func:`medseg.inference.slabs.slab_index`).
            axis: The slice axis.
            probs: Their probabilities.
            labels: Their ``(b, H, W)`` predicted labels, before postprocessing. With them only the bounding box
                of the slices' foreground (the union over the ``b`` slices) is computed; the rest stays NaN. QC
                reads the maps only over the final mask's foreground, and postprocessing keeps that inside the
                box: the largest-component step only removes voxels, and a filled hole is enclosed by
                foreground in its own slice, so foreground lies beyond it along both in-plane axes. On LA2018
                predictions the boxes hold a third of the voxels.
        """
        if labels is not None:
            fg = (labels > 0).any(dim=0)
            rows = torch.nonzero(fg.any(dim=1)).flatten()
            if rows.numel() == 0:
                return  # no foreground in these slices: nothing QC reads
            cols = torch.nonzero(fg.any(dim=0)).flatten()
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            probs = probs[:, :, r0:r1, c0:c1]
            in_plane = iter((slice(r0, r1), slice(c0, c1)))  # H, W: the two axes other than ``axis``, in order
            index = tuple(part if a == axis else next(in_plane) for a, part in enumerate(index))
        confidence, entropy = voxel_confidence(probs, channel_dim=1, regions=self.regions)
        self.confidence[index] = np.moveaxis(confidence.to(torch.float16).numpy(), 0, axis)
        self.entropy[index] = np.moveaxis(entropy.to(torch.float16).numpy(), 0, axis)

    def transformed(self, transform: Callable[[np.ndarray], np.ndarray]) -> ConfidenceMaps:
        """The maps with ``transform`` (e.g. an axis reorientation) applied to each."""
        return ConfidenceMaps(transform(self.confidence), transform(self.entropy))


def output_features(
    labels: np.ndarray,
    probs: np.ndarray | None,
    voxel_mm3: float,
    classes: Sequence[str],
    *,
    confidence: ConfidenceMaps | None = None,
    membership: np.ndarray | None = None,
) -> dict[str, float]:
    """Numbers measured on a predicted mask and its probabilities.

    Args:
        labels: ``(I, J, K)`` predicted labels.
        probs: ``(n_classes, I, J, K)`` probabilities on the same grid, or ``None``.
        voxel_mm3: Volume of one voxel in mm³ (``Volume.voxel_volume``).
        classes: Class names, background first.
        confidence: Instead of ``probs``: their :class:`ConfidenceMaps` on the same grid.
        membership: Overlapping regions (``Regions.membership``): volumes and components are each region's, and
            the confidence is read per region (:func:`voxel_confidence`).

    Returns:
        ``volume_ml_<class>``, ``components_<class>`` per foreground class (or region), ``foreground_voxels`` and, with
        ``probs`` or ``confidence``, ``mean_confidence`` and ``mean_entropy`` over the predicted foreground (NaN
        when it is empty).
    """
    labels = np.asarray(labels)
    out: dict[str, float] = {}
    for name, ml in label_volumes_ml(labels, voxel_mm3, classes, membership).items():
        out[f"volume_ml_{name}"] = ml
    counts = component_counts(labels, range(1, len(classes)), membership)
    for name, n in zip(classes[1:], counts, strict=True):
        out[f"components_{name}"] = float(n)
    fg = labels > 0
    out["foreground_voxels"] = float(fg.sum())
    if probs is not None or confidence is not None:
        if not fg.any():
            out["mean_confidence"] = out["mean_entropy"] = float("nan")
        elif probs is not None:
            regions = membership is not None
            conf, entropy = voxel_confidence(np.asarray(probs)[:, fg], regions=regions)  # the foreground's (C, n_fg)
            out["mean_confidence"], out["mean_entropy"] = float(conf.mean()), float(entropy.mean())
        else:
            assert confidence is not None
            out["mean_confidence"] = float(confidence.confidence[fg].mean(dtype=np.float64))
            out["mean_entropy"] = float(confidence.entropy[fg].mean(dtype=np.float64))
    return out


# ----------------------------------------------------------------------------------------------------- reference


def _robust(values: Sequence[float], floor: float) -> tuple[float, float]:
    """(median, scale) with scale = max(1.4826 * MAD, floor) of the finite values."""
    # Memoised: every scan of a batch is compared with the same reference lists, and the two medians of each of
    # a dozen lists took 1.2 ms a scan (1.5 % of a hippocampus prediction); a tuple of ~100 numbers hashes in ~1 us.
    return _robust_of(tuple(values), float(floor))


@functools.lru_cache(maxsize=1024)
def _robust_of(values: tuple[float, ...], floor: float) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64).reshape(-1)  # None becomes NaN
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), floor
    med = float(np.median(v))
    return med, max(1.4826 * float(np.median(np.abs(v - med))), floor, 1e-12)


def build_reference(
    classes: Sequence[str],
    train_images: Sequence[Mapping[str, float]],
    train_geometry: Sequence[Mapping[str, float]],
    train_label_ml: Sequence[Mapping[str, float]],
    val_outputs: Sequence[Mapping[str, float]],
) -> dict[str, Any]:
    """The ``qc_reference`` stored in a checkpoint: the numbers QC compares each predicted scan with.

    Args:
        classes: Class names, background first.
        train_images: :func:`intensity_features` of each training scan.
        train_geometry: :func:`geometry_features` of each training scan (closest-RAS order).
        train_label_ml: :func:`label_volumes_ml` of each training label.
        val_outputs: :func:`output_features` of the validation cases' predictions (best weights, postprocessed).

    Returns:
        A dict of plain lists (``torch.load(weights_only=True)`` reads it): the raw values per number, so
        thresholds can be changed at prediction time without retraining.
    """

    def column(rows: Sequence[Mapping[str, float]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if key in r]

    keys_val = sorted({k for r in val_outputs for k in r if k.startswith(("components_", "mean_"))})
    return {
        "version": REFERENCE_VERSION,
        "classes": list(classes),
        "n_train": len(train_images),
        "n_val": len(val_outputs),
        "intensity": {k: column(train_images, k) for k in INTENSITY_FEATURES},
        "geometry": {k: column(train_geometry, k) for k in sorted({k for r in train_geometry for k in r})},
        "label_volume_ml": {name: column(train_label_ml, name) for name in classes[1:]},
        "validation": {k: column(val_outputs, k) for k in keys_val},
    }


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def assess(
    features: Mapping[str, float], reference: Mapping[str, Any] | None, settings: QCConfig | None = None
) -> QCResult:
    """Flags a predicted scan whose numbers lie far from the reference.

    Args:
        features: :func:`intensity_features`, :func:`geometry_features` and :func:`output_features` of the scan.
        reference: The checkpoint's ``qc_reference`` (:func:`build_reference`), or ``None`` (no QC: empty result
            with a note).
        settings: Thresholds (``inference.qc``); defaults when ``None``.

    Returns:
        A :class:`QCResult`.
    """
    settings = settings or QCConfig()
    if not settings.enabled:
        return QCResult(None, None, dict(features), note="QC disabled (inference.qc.enabled: false)")
    if not reference:
        return QCResult(
            None,
            None,
            dict(features),
            note=(
                "the checkpoint has no QC reference (only a run's best.pt carries one; last.pt and checkpoints "
                "trained before QC existed do not): qc_flags/qc_score left empty"
            ),
        )
    flags: list[str] = []
    checks: dict[str, float] = {}
    score = 0.0

    def check(name: str, reason: str, ratio: float) -> None:
        nonlocal score
        if not np.isfinite(ratio):
            return
        checks[name] = round(float(ratio), 4)
        score = max(score, ratio)
        if ratio >= 1.0:
            flags.append(reason)

    # Input: intensity (two-sided), one flag naming the feature furthest out.
    worst: tuple[float, str] = (0.0, "")
    for key, ref in (reference.get("intensity") or {}).items():
        if key in features and ref:
            med, scale = _robust(ref, _FLOORS.get(key, 0.1))
            z = abs(features[key] - med) / scale
            if np.isfinite(z) and z > worst[0]:
                worst = (z, f"{key} {_fmt(features[key])} vs training median {_fmt(med)}, z={z:.1f}")
    if worst[1]:
        check("intensity", f"intensities unlike the training scans ({worst[1]})", worst[0] / settings.intensity_z)

    # Input: spacing and shape against the training range.
    geometry = reference.get("geometry") or {}
    for kind, unit in (("spacing", " mm"), ("shape", " voxels")):
        ratios, text = [], []
        for axis in range(3):
            ref = geometry.get(f"{kind}_{axis}")
            key = f"{kind}_{axis}"
            if not ref or key not in features:
                continue
            lo, hi, x = float(min(ref)), float(max(ref)), float(features[key])
            out = max(x / hi if hi > 0 else 0.0, lo / x if x > 0 else float("inf"))
            ratios.append(out)
            text.append(f"{_fmt(x)} (training {_fmt(lo)}-{_fmt(hi)})")
        if ratios:
            r = max(ratios)
            # Inside the range adds nothing; the score reaches 1 at geometry_factor times outside it.
            ratio = math.log(r) / math.log(settings.geometry_factor) if r > 1 else 0.0
            check(kind, f"{kind} outside the training range: {' x '.join(text)}{unit}", ratio)

    # Output: empty mask / empty classes, volumes against the training labels.
    classes = list(reference.get("classes") or [])
    volumes = reference.get("label_volume_ml") or {}
    empty = [n for n in classes[1:] if features.get(f"volume_ml_{n}", 1.0) == 0.0]
    if classes and len(empty) == len(classes) - 1:
        flags.append("empty mask (no foreground voxel)")
        checks["empty"] = score = MAX_SCORE
    else:
        for name in empty:
            if volumes.get(name) and min(volumes[name]) > 0:  # every training label had this class
                flags.append(f"empty {name} (every training label has it)")
                checks["empty"] = score = MAX_SCORE
        for name in classes[1:]:
            key = f"volume_ml_{name}"
            # Against the training labels that hold the class: in a multi-organ set a structure outside some
            # scans' field of view is 0 mL there, and a median of 0 with no spread flagged every scan showing it
            # (z = 1e11). Too few such labels give no reference.
            present = [v for v in volumes.get(name) or [] if v > 0]
            if name in empty or key not in features or len(present) < MIN_VOLUME_REFERENCE:
                continue
            med, scale = _robust(present, 0.0)
            scale = max(scale, _VOLUME_FLOOR * abs(med))
            z = (features[key] - med) / scale
            check(
                f"volume_{name}",
                f"{name} volume {_fmt(features[key])} mL vs training labels' median {_fmt(med)} mL (z={z:+.1f})",
                abs(z) / settings.volume_z,
            )

    # Output: components and confidence against the validation predictions (one-sided).
    val = reference.get("validation") or {}
    for name in classes[1:]:
        key = f"components_{name}"
        if key in features and val.get(key) and name not in empty:
            med, scale = _robust(val[key], _FLOORS["components"])
            z = (features[key] - med) / scale
            check(
                f"components_{name}",
                f"{name} in {int(features[key])} pieces vs {_fmt(med)} in validation (z={z:+.1f})",
                z / settings.components_z,
            )
    for key, sign, what in (("mean_confidence", -1.0, "low confidence"), ("mean_entropy", 1.0, "high entropy")):
        name = key[len("mean_") :]
        if key in features and val.get(key):
            med, scale = _robust(val[key], _FLOORS[key])
            z = (features[key] - med) / scale
            check(
                name,
                f"{what} in the foreground ({key} {features[key]:.3f} vs validation {med:.3f}, z={z:+.1f})",
                sign * z / settings.confidence_z,
            )
    return QCResult(flags, round(min(score, MAX_SCORE), 3), dict(features), checks=checks)


def scan_features(
    image: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    shape: Sequence[int],
    labels: np.ndarray,
    probs: np.ndarray | None,
    classes: Sequence[str],
    *,
    voxel_mm3: float,
    confidence: ConfidenceMaps | None = None,
    membership: np.ndarray | None = None,
) -> dict[str, float]:
    """All QC numbers of one scan: intensity, geometry (pass closest-RAS ``spacing``/``shape``) and output
    (per region with ``membership``; volumes from ``voxel_mm3``, ``Volume.voxel_volume``)."""
    out = intensity_features(image)
    out.update(geometry_features(spacing, shape))
    out.update(output_features(labels, probs, voxel_mm3, classes, confidence=confidence, membership=membership))
    return out
