"""Training augmentation: MONAI dictionary transforms on 2D slices.

Each sample is ``{"image": (C, H, W) float32 tensor, "label": (1, H, W) float32 tensor}``. Spatial transforms
move image and label together (one random draw per sample for both keys): the image bilinearly, the label by
nearest neighbour, so label values stay exactly the classes that were there. Validation and prediction use no
random transform.

Order (as in nnU-Net): spatial (elastic + affine in one resampling, flips) first, then intensity (noise, scale,
gamma). MONAI draws the zoom per axis (rows and columns independently), unlike nnU-Net's isotropic zoom.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
)

from medseg.config import AugmentationConfig
from medseg.data.dataset import single_thread
from medseg.errors import ConfigError

IMAGE_KEY = "image"
LABEL_KEY = "label"
_KEYS = (IMAGE_KEY, LABEL_KEY)
_MODES = ("bilinear", "nearest")
# Slices are zero-padded to the patch size and normalised so that 0 is "nothing"; zeros outside the field of view
# keep the padding consistent with what inference sees (reflection would invent mirrored anatomy).
_PADDING = ("zeros", "zeros")


class RandElasticAffined(RandomizableTransform):
    """Elastic deformation and rotation/scaling, each with its own probability, in ONE resampling.

    Both are drawn independently per sample; when both fire, ``Rand2DElasticd`` applies the deformation and the
    affine through a single grid. Resampling twice would blur the image twice and snap the label to the nearest
    voxel twice, which erodes thin structures and misaligns them from the image (measured on hippocampus slices:
    image/label agreement 0.955 chained vs 0.987 fused). A skipped transform costs nothing (``Rand2DElasticd``
    alone resamples through an identity grid even when its own probability says no).

    Args:
        keys: Dict keys to transform together (the same random draw for all).
        elastic_prob: Probability of the elastic deformation.
        affine_prob: Probability of the rotation/scaling.
        spacing: Elastic control-point spacing in pixels.
        magnitude: Elastic displacement magnitude range.
        rotate_rad: Rotation range in radians (+-).
        scale: Zoom range as a fraction (1 + U(-scale, scale) per axis).
        mode: Interpolation per key (``bilinear`` for images, ``nearest`` for labels).
        padding_mode: Padding per key outside the field of view.
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        elastic_prob: float,
        affine_prob: float,
        spacing: tuple[float, float],
        magnitude: tuple[float, float],
        rotate_rad: float,
        scale: float,
        mode: tuple[str, ...],
        padding_mode: tuple[str, ...],
    ) -> None:
        RandomizableTransform.__init__(self, 1.0)
        self.elastic_prob = elastic_prob
        self.affine_prob = affine_prob
        common: dict[str, Any] = {"keys": keys, "prob": 1.0, "mode": mode, "padding_mode": padding_mode}
        affine: dict[str, Any] = {"rotate_range": (rotate_rad,), "scale_range": (scale, scale)}
        self.both = Rand2DElasticd(spacing=spacing, magnitude_range=magnitude, **affine, **common)
        self.elastic = Rand2DElasticd(spacing=spacing, magnitude_range=magnitude, **common)
        self.affine = RandAffined(**affine, **common)
        self._do_elastic = self._do_affine = False

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandElasticAffined:
        """Seeds this transform and, from it, the wrapped MONAI transforms (``Compose.set_random_state`` calls this)."""
        super().set_random_state(seed, state)
        for child in (self.both, self.elastic, self.affine):
            child.set_random_state(seed=int(self.R.randint(np.iinfo(np.uint32).max, dtype=np.uint32)))
        return self

    def randomize(self, data: Any = None) -> None:
        self._do_elastic = bool(self.R.rand() < self.elastic_prob)
        self._do_affine = bool(self.R.rand() < self.affine_prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        self.randomize()
        if self._do_elastic and self._do_affine:
            return self.both(data)
        if self._do_elastic:
            return self.elastic(data)
        if self._do_affine:
            return self.affine(data)
        return dict(data)


class SliceAugmentation(Compose):
    """A ``Compose`` for single slices: metadata tracking off (plain tensors out), one torch thread.

    MetaTensor bookkeeping roughly doubles the per-sample cost on small 2D slices, which carry no metadata worth
    tracking. One intra-op thread: see :func:`medseg.data.dataset.single_thread` (about 5x faster per slice in
    the training process on a busy 2-core machine). Both global settings are restored after each call.
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        previous_meta = get_track_meta()
        set_track_meta(False)
        try:
            with single_thread():
                return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(previous_meta)


def train_transforms(cfg: AugmentationConfig, *, seed: int | None = None) -> SliceAugmentation:
    """Builds the training augmentation from the ``augmentation`` config section.

    Args:
        cfg: Probabilities and ranges of each transform. A probability of 0 leaves that transform out;
            ``enabled: false`` gives an identity pipeline.
        seed: Seeds every random transform (``Compose.set_random_state``); ``None`` = MONAI's default state.

    Returns:
        A MONAI ``Compose`` on ``{"image": (C, H, W), "label": (1, H, W)}`` dicts of float32 tensors or arrays.

    Raises:
        ConfigError: For flip axes other than 0 and 1.
    """
    transforms: list[Any] = []
    if cfg.enabled:
        if cfg.elastic.prob > 0 or cfg.affine.prob > 0:
            transforms.append(
                RandElasticAffined(
                    keys=_KEYS,
                    elastic_prob=cfg.elastic.prob,
                    affine_prob=cfg.affine.prob,
                    spacing=tuple(cfg.elastic.spacing),  # type: ignore[arg-type]
                    magnitude=tuple(cfg.elastic.magnitude),  # type: ignore[arg-type]
                    rotate_rad=math.radians(cfg.affine.rotate_deg),
                    scale=cfg.affine.scale,
                    mode=_MODES,
                    padding_mode=_PADDING,
                )
            )
        if cfg.flip.prob > 0:
            bad = [a for a in cfg.flip.axes if a not in (0, 1)]
            if bad:
                raise ConfigError(f"augmentation.flip.axes: slice axes are 0 (rows) and 1 (columns), got {bad}")
            # One independent flip per axis, so "both axes" also yields single-axis flips.
            transforms += [
                RandFlipd(keys=_KEYS, prob=cfg.flip.prob, spatial_axis=a) for a in sorted(set(cfg.flip.axes))
            ]
        if cfg.noise.prob > 0:
            transforms.append(RandGaussianNoised(keys=IMAGE_KEY, prob=cfg.noise.prob, mean=0.0, std=cfg.noise.std))
        if cfg.scale_intensity.prob > 0:
            transforms.append(
                RandScaleIntensityd(keys=IMAGE_KEY, factors=cfg.scale_intensity.factor, prob=cfg.scale_intensity.prob)
            )
        if cfg.gamma.prob > 0:
            # MONAI rescales to [0, 1] before the power and back afterwards, so negative z-scores are safe;
            # retain_stats keeps the slice's mean/std, as nnU-Net's gamma transform does.
            transforms.append(
                RandAdjustContrastd(
                    keys=IMAGE_KEY,
                    prob=cfg.gamma.prob,
                    gamma=(cfg.gamma.gamma[0], cfg.gamma.gamma[1]),
                    retain_stats=True,
                )
            )
    compose = SliceAugmentation(transforms)
    if seed is not None:
        compose.set_random_state(seed=seed)
    return compose
