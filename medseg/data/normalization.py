"""Intensity normalisation, stored with the model so prediction normalises exactly as training did.

Schemes:
    ``zscore``: per volume, ``(x - mean) / std`` over all voxels, or over the non-zero voxels only with
        ``nonzero`` (skull-stripped MRI; voxels outside stay 0). Needs no fitting: MRI intensities are not
        calibrated, and MSD Hippocampus mixes 0-200 and 1e6-scale volumes.
    ``ct``: as nnU-Net's CTNormalization: clip to the 0.5/99.5 percentiles of the training set's foreground
        voxels, then subtract the mean and divide by the std of those (clipped) foreground voxels. HU are
        calibrated, so one dataset-wide mapping keeps tissue contrast comparable across scans.
    ``percentile``: per volume, map the 1st..99th percentile to [0, 1] and clip.

Statistics are computed in float64 (1e6-scale intensities lose digits in float32 sums); results are float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from medseg.errors import CheckpointError, ConfigError, UnreadableScanError

Scheme = Literal["zscore", "ct", "percentile"]
SCHEMES: tuple[str, ...] = get_args(Scheme)

#: Smallest std used as a divisor, so a constant volume becomes zeros instead of NaN.
_EPS = 1e-8
#: Foreground voxels kept per case when fitting ``ct`` (seeded subsample; nnU-Net samples likewise).
CT_SAMPLES_PER_CASE = 100_000


class NonFiniteIntensityError(UnreadableScanError):
    """A scan holds NaN or infinite intensities, which no normalisation can handle."""


@dataclass
class NormalizationParams:
    """What :func:`normalize` needs; stored in the checkpoint via :meth:`to_dict`.

    Attributes:
        scheme: ``zscore``, ``ct`` or ``percentile``.
        nonzero: ``zscore`` over non-zero voxels only.
        clip_low: ``ct``: lower clip value (0.5th foreground percentile of the training set).
        clip_high: ``ct``: upper clip value (99.5th percentile).
        mean: ``ct``: mean of the clipped training foreground.
        std: ``ct``: std of the clipped training foreground.
        lower_percentile: ``percentile``: percentile mapped to 0.
        upper_percentile: ``percentile``: percentile mapped to 1.
    """

    scheme: str
    nonzero: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    lower_percentile: float = 1.0
    upper_percentile: float = 99.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"normalization scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.scheme == "ct" and None in (self.clip_low, self.clip_high, self.mean, self.std):
            raise ValueError("ct normalization needs clip_low, clip_high, mean and std (use fit_normalization)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (plain floats/bools/str) for the checkpoint."""
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        """The scheme and only the numbers it uses (for the log), e.g. ``ct: clip [-37, 117], then (x - 39.63) /
        29.56, fitted on the training foreground``."""
        if self.scheme == "ct":
            return (
                f"ct: clip [{self.clip_low:.4g}, {self.clip_high:.4g}], then (x - {self.mean:.4g}) / {self.std:.4g}, "
                "fitted on the training foreground"
            )
        if self.scheme == "percentile":
            return f"percentile: per volume, percentiles {self.lower_percentile:g}-{self.upper_percentile:g} to 0-1"
        return "zscore: per volume" + (", over non-zero voxels" if self.nonzero else "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationParams:
        """Rebuilds the parameters stored by :meth:`to_dict`.

        Raises:
            CheckpointError: If the dict is not a valid normalisation entry.
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"normalization entry must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"normalization entry has unknown keys {sorted(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"invalid normalization entry {data}: {err}") from None


def resolve_scheme(normalization: str, modality: str) -> Scheme:
    """``auto`` -> ``ct`` for CT, else ``zscore``; other names are checked and returned.

    Raises:
        ConfigError: For an unknown scheme name.
    """
    if normalization == "auto":
        return "ct" if modality == "ct" else "zscore"
    if normalization not in SCHEMES:
        raise ConfigError(
            f"preprocessing.normalization: unknown scheme {normalization!r}; accepted: auto, {', '.join(SCHEMES)}"
        )
    return normalization  # type: ignore[return-value]


def _require_finite(array: np.ndarray, source: str | Path | None) -> None:
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteIntensityError(source or "<array>", f"{n_bad} voxels are NaN or infinite")


class CTStatsAccumulator:
    """Collects a seeded subsample of foreground intensities case by case, so fitting needs no second read."""

    def __init__(self, samples_per_case: int = CT_SAMPLES_PER_CASE, seed: int = 0) -> None:
        self.samples_per_case = samples_per_case
        self._rng = np.random.default_rng(seed)
        self._fg: list[np.ndarray] = []
        self._all: list[np.ndarray] = []

    def add(self, image: np.ndarray, label: np.ndarray | None, source: str | Path | None = None) -> None:
        """Adds one case's voxels; the foreground is ``label > 0`` (all voxels are kept as a fallback)."""
        image = np.asarray(image)
        _require_finite(image, source)
        flat = image.reshape(-1)
        self._all.append(self._subsample(flat))
        if label is not None:
            fg = flat[np.asarray(label).reshape(-1) > 0]
            if fg.size:
                self._fg.append(self._subsample(fg))

    def _subsample(self, values: np.ndarray) -> np.ndarray:
        if values.size > self.samples_per_case:
            values = self._rng.choice(values, self.samples_per_case, replace=False)
        return values.astype(np.float64)

    def params(self) -> NormalizationParams:
        """The fitted ``ct`` parameters.

        Raises:
            ValueError: If no case was added.
        """
        if not self._all:
            raise ValueError("ct normalization needs at least one training image to fit on")
        # Without any labelled voxel the whole image is the best available estimate.
        values = np.concatenate(self._fg if self._fg else self._all)
        low, high = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, low, high)
        return NormalizationParams(
            scheme="ct",
            clip_low=float(low),
            clip_high=float(high),
            mean=float(clipped.mean()),
            std=float(max(clipped.std(), _EPS)),
        )


def fit_normalization(
    scheme: str,
    images: Iterable[np.ndarray],
    labels: Iterable[np.ndarray | None] | None = None,
    nonzero: bool = False,
    *,
    seed: int = 0,
) -> NormalizationParams:
    """Fits normalisation parameters on the training images (only ``ct`` has anything to fit).

    Args:
        scheme: ``zscore``, ``ct`` or ``percentile``.
        images: Training image arrays (consumed only for ``ct``).
        labels: Matching label arrays (``ct`` uses their foreground, ``label > 0``); ``None`` = use all voxels.
        nonzero: ``zscore`` over non-zero voxels.
        seed: Seed of the ``ct`` voxel subsample.

    Returns:
        The parameters for :func:`normalize`.

    Raises:
        ValueError: Unknown scheme, or ``ct`` with no images.
        NonFiniteIntensityError: An image holds NaN/inf.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"normalization scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme != "ct":
        return NormalizationParams(scheme=scheme, nonzero=nonzero)
    acc = CTStatsAccumulator(seed=seed)
    label_iter = iter(labels) if labels is not None else None
    for image in images:
        acc.add(image, next(label_iter) if label_iter is not None else None)
    return acc.params()


def normalize(array: np.ndarray, params: NormalizationParams, *, source: str | Path | None = None) -> np.ndarray:
    """Normalises a volume (any shape) as ``params`` says.

    Args:
        array: Raw intensities.
        params: From :func:`fit_normalization` or :meth:`NormalizationParams.from_dict`.
        source: File the array came from, named in errors.

    Returns:
        A new float32 array of the same shape.

    Raises:
        NonFiniteIntensityError: If the array holds NaN or inf.
    """
    array = np.asarray(array)
    _require_finite(array, source)
    out = np.empty(array.shape, dtype=np.float32)
    if params.scheme == "ct":
        assert params.clip_low is not None and params.clip_high is not None
        assert params.mean is not None and params.std is not None
        # float64 arithmetic, float32 result, without a full float64 temporary.
        np.clip(array, params.clip_low, params.clip_high, out=out, dtype=np.float64, casting="same_kind")
        out -= np.float32(params.mean)
        out /= np.float32(max(params.std, _EPS))
        return out
    if params.scheme == "percentile":
        low, high = np.percentile(array, [params.lower_percentile, params.upper_percentile])
        if high - low <= _EPS:
            out.fill(0.0)
            return out
        np.subtract(array, low, out=out, dtype=np.float64, casting="same_kind")
        out /= np.float32(high - low)
        np.clip(out, 0.0, 1.0, out=out)
        return out
    # zscore
    mask = array != 0 if params.nonzero else None
    values = array[mask] if mask is not None else array
    if values.size == 0:
        out.fill(0.0)
        return out
    mean = float(np.mean(values, dtype=np.float64))
    std = float(np.std(values, dtype=np.float64))
    np.subtract(array, mean, out=out, dtype=np.float64, casting="same_kind")
    out /= np.float32(max(std, _EPS))
    if mask is not None:
        out[~mask] = 0.0
    return out
