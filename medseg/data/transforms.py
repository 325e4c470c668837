"""Training augmentation of 2D slices, a whole batch at once.

A batch is ``{"image": (B, C, H, W) float32, "label": (B, H, W) int64}``. Spatial transforms move image and
label together (one random draw per sample for both): the image bilinearly, the label by nearest neighbour, so
label values stay exactly the classes that were there. Validation and prediction use no random transform.

Order (as in nnU-Net): spatial first (elastic deformation and rotation/zoom in ONE resampling, then flips), then
intensity (noise, scale, low resolution, inverted gamma, gamma), then the intensity curve.

Each transform means what MONAI's transform of the same name means, with the same parameters and ranges
(the grids are built with MONAI's own ``create_grid`` / ``create_control_grid`` / ``create_rotate`` /
``create_scale``, and ``tests/test_data_transforms.py`` compares the results with MONAI's transforms):

- elastic (``Rand2DElasticd``): control points every ``spacing`` pixels, each moved by ``N(0, 1) * m`` pixels
  with ``m ~ U(magnitude)``; the control grid is interpolated bicubically to every pixel.
- affine (``RandAffined``): rotation by ``U(-rotate, rotate)`` and zoom ``1 + U(-scale, scale)`` drawn per axis
  (rows and columns independently, unlike nnU-Net's isotropic zoom), about the slice centre.
- flip (``RandFlipd``): per axis, with its own probability.
- noise (``RandGaussianNoised``): ``N(0, s)`` with ``s ~ U(0, std)`` (the values from torch's generator, seeded
  per sample from the noise stream: a third of the time of numpy's).
- scale intensity (``RandScaleIntensityd``): ``x * (1 + U(-factor, factor))``.
- low resolution (``RandSimulateLowResolution`` with ``downsample_mode="bilinear", upsample_mode="bicubic"``): the
  slice is shrunk to ``round(size * z)`` pixels per axis, ``z ~ U(zoom)``, bilinearly with pixel centres aligned,
  and enlarged back bicubically (as prediction enlarges a coarse scan); all channels of a sample alike. Not
  MONAI's default ``nearest`` down-sampling: torch's legacy nearest picks the first pixel of each block and so
  moves the image 0.5-0.8 px against its label (tested). Why: a scan from a coarser scanner reaches the model
  re-sampled to the target spacing, i.e. blurred; nnU-Net trains with the same transform for the same reason.
  Off by default (``LowResolutionConfig`` says why).
- inverted gamma (``RandAdjustContrastd``, ``invert_image``, ``retain_stats``): gamma on the negated slice
  stack, negated back (nnU-Net's second gamma transform); off by default.
- gamma (``RandAdjustContrastd``, ``retain_stats``): the slice stack is rescaled to [0, 1], raised to
  ``U(gamma)``, rescaled back, and given its old mean and standard deviation again.
- intensity curve (no MONAI equivalent; the idea of ``RandIntensityRemap``): the slice stack is mapped through a
  random piecewise-linear curve that may rise, fall or turn, and given its old mean and standard deviation again
  (``IntensityCurveConfig`` in ``medseg.config``); off by default.

Why batched: per-sample MONAI transforms spend most of their time in per-call bookkeeping (about 1 ms per
elastic or affine sample on a CPU core, 18 ms per batch of 32 hippocampus slices) while the model's step takes
about 95 ms in bf16: the loop waited for data a fifth of its time. Here the random numbers are drawn per sample
(cheap) and the arithmetic runs once per batch (one bicubic interpolation of all control grids, at just the
slices' pixels; one ``grid_sample`` for all images, one for all labels; vectorised intensity transforms):
3 ms per batch.

Random numbers: each transform draws from its own stream (``numpy.random.Generator``s spawned from the seed), in
sample order, so switching one transform off leaves the others' draws unchanged, and a batch of ``B`` samples
equals ``B`` calls on one sample each (tested). The training loader seeds the augmentation once per batch from
(seed, epoch, batch), so a batch is the same whatever the number of workers and across kill-and-resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils import create_control_grid, create_grid

from medseg.config import AugmentationConfig
from medseg.errors import ConfigError
from medseg.threads import single_thread

T = TypeVar("T")

IMAGE_KEY = "image"
LABEL_KEY = "label"

#: Streams spawned from the seed, one per transform (the order is part of the seeding contract).
_STREAMS = (
    "spatial",
    "flip",
    "noise",
    "scale_intensity",
    "gamma",
    "low_resolution",
    "inverted_gamma",
    "intensity_curve",
)


@dataclass
class _SpatialDraws:
    """One batch's spatial draws: which samples move, and how."""

    elastic: list[int] = field(default_factory=list)  # samples with an elastic deformation
    affine: list[int] = field(default_factory=list)  # samples with an affine (with or without elastic)
    matrices: dict[int, np.ndarray] = field(default_factory=dict)  # sample -> 2x2 rotation @ zoom
    offsets: dict[int, np.ndarray] = field(default_factory=dict)  # sample -> (2, gh, gw) control-point moves


class BatchAugmentation:
    """The training augmentation from an ``augmentation`` config section, applied to whole batches.

    Args:
        cfg: Probabilities and ranges of each transform; a probability of 0 (or ``enabled: false``) leaves that
            transform out.
        seed: Seed of the random streams (:meth:`set_random_state` reseeds them).

    Raises:
        ConfigError: For flip axes other than 0 and 1.
    """

    def __init__(self, cfg: AugmentationConfig, *, seed: int = 0) -> None:
        bad = [a for a in cfg.flip.axes if a not in (0, 1)]
        if bad:
            raise ConfigError(f"augmentation.flip.axes: slice axes are 0 (rows) and 1 (columns), got {bad}")
        self.cfg = cfg
        on = cfg.enabled
        self.elastic_prob = cfg.elastic.prob if on else 0.0
        self.affine_prob = cfg.affine.prob if on else 0.0
        self.flip_prob = cfg.flip.prob if on else 0.0
        self.flip_axes = sorted(set(cfg.flip.axes))
        self.noise_prob = cfg.noise.prob if on else 0.0
        self.scale_prob = cfg.scale_intensity.prob if on else 0.0
        self.gamma_prob = cfg.gamma.prob if on else 0.0
        self.inverted_gamma_prob = cfg.inverted_gamma.prob if on else 0.0
        self.curve_prob = cfg.intensity_curve.prob if on else 0.0
        self.low_res_prob = cfg.low_resolution.prob if on else 0.0
        self.rotate_rad = math.radians(cfg.affine.rotate_deg)
        self._grids: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.set_random_state(seed)

    @property
    def is_identity(self) -> bool:
        """True when no transform can fire (every probability is 0)."""
        probs = (self.elastic_prob, self.affine_prob, self.flip_prob, self.noise_prob, self.scale_prob)
        return max(*probs, self.low_res_prob, self.gamma_prob, self.inverted_gamma_prob, self.curve_prob) == 0.0

    def set_random_state(self, seed: int) -> BatchAugmentation:
        """Reseeds every stream from ``seed`` (a non-negative int)."""
        children = np.random.SeedSequence(int(seed) % 2**63).spawn(len(_STREAMS))
        self._rng = {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)}
        return self

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Augments a batch; the input tensors are not modified.

        Args:
            batch: ``{"image": (B, C, H, W) float32, "label": (B, H, W) integer}`` (other keys pass through).

        Returns:
            A new dict with the augmented ``image`` (float32) and ``label`` (the input's dtype), same shapes.
        """
        image, label = batch[IMAGE_KEY], batch[LABEL_KEY]
        if image.ndim != 4 or label.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(
                f"expected image (B, C, H, W) and label (B, H, W), got {tuple(image.shape)} and {tuple(label.shape)}"
            )
        out = dict(batch)
        if self.is_identity:
            return out
        # One copy each; every step below works in place on it.
        image, label = image.clone(), label.clone()
        image, label = self._spatial(image, label)
        image, label = self._flip(image, label)
        # The spatial part runs on the caller's threads: grid_sample and the grids' products compute each value on
        # its own, so their bits do not depend on the thread count (tested), and two threads take a third off
        # it. The intensity part's means and sums would add in another order with more threads: one thread keeps
        # a seeded batch the same in a DataLoader worker (one thread) and in the training process.
        with single_thread():
            image = self._intensity(image)
        out[IMAGE_KEY], out[LABEL_KEY] = image, label
        return out

    # ------------------------------------------------------------------------------------------- spatial

    def _base_grids(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For slices of size ``hw``: MONAI's pixel grid (3, H, W) and elastic control grid (3, gh, gw), both
        homogeneous in centred pixel coordinates, and where the slice's pixels lie in the control grid.

        The last is a ``grid_sample`` grid (1, H, W, 2): Rand2DElastic upsamples the control grid bicubically by
        ``spacing`` (``interpolate(..., recompute_scale_factor=True)``: output size ``floor(g * spacing)``, pixel
        ``o`` at source ``(o + 0.5) * g / out - 0.5``) and then crops the slice's size from its centre. Sampling
        the same bicubic kernel at just the cropped pixels gives the same values without computing the border
        that the crop throws away (2-3x the slice's area).
        """
        if hw not in self._grids:
            pixel = torch.as_tensor(create_grid(spatial_size=hw, backend="torch"), dtype=torch.float32)
            control = torch.as_tensor(
                create_control_grid(hw, tuple(self.cfg.elastic.spacing), backend="torch"), dtype=torch.float32
            )
            axes = []
            for size, g, s in zip(hw, control.shape[1:], self.cfg.elastic.spacing, strict=True):
                out = math.floor(int(g) * float(s))
                start = out // 2 - size // 2  # CenterSpatialCrop
                o = torch.arange(start, start + size, dtype=torch.float64)
                axes.append(((o + 0.5) / out * 2 - 1).to(torch.float32))  # grid_sample, align_corners=False
            rows, cols = torch.meshgrid(axes[0], axes[1], indexing="ij")
            at = torch.stack([cols, rows], dim=-1)[None]  # x (columns) first
            self._grids[hw] = (pixel, control, at)
        return self._grids[hw]

    def _draw_spatial(self, n: int, control_hw: tuple[int, int]) -> _SpatialDraws:
        rng, draws = self._rng["spatial"], _SpatialDraws()
        lo, hi = self.cfg.elastic.magnitude
        s = self.cfg.affine.scale
        for i in range(n):
            do_elastic = rng.random() < self.elastic_prob
            do_affine = rng.random() < self.affine_prob
            if do_elastic:
                draws.elastic.append(i)
                draws.offsets[i] = rng.uniform(lo, hi) * rng.standard_normal((2, *control_hw))
            if do_affine:
                draws.affine.append(i)
                angle = rng.uniform(-self.rotate_rad, self.rotate_rad)
                zoom = (rng.uniform(1 - s, 1 + s), rng.uniform(1 - s, 1 + s))
                draws.matrices[i] = rotate_zoom(angle, zoom)
        return draws

    def _spatial(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        pixel, control, at = self._base_grids(hw)
        d = self._draw_spatial(int(image.shape[0]), (int(control.shape[1]), int(control.shape[2])))
        moved = sorted(set(d.elastic) | set(d.affine))
        if not moved:
            return image, label
        grids = torch.empty((len(moved), 2, *hw), dtype=torch.float32)
        row = {sample: k for k, sample in enumerate(moved)}
        if d.elastic:
            # As Rand2DElastic: move the control points, apply the affine to them, interpolate bicubically.
            points = control[:2].expand(len(d.elastic), -1, -1, -1).clone()
            points += torch.as_tensor(np.stack([d.offsets[i] for i in d.elastic]), dtype=torch.float32)
            el_matrices = np.stack([d.matrices.get(i, np.eye(2)) for i in d.elastic])
            points = _times_2x2(torch.as_tensor(el_matrices, dtype=torch.float32), points)
            n_el = len(d.elastic)
            dense = F.grid_sample(
                points, at.expand(n_el, -1, -1, -1), mode="bicubic", padding_mode="border", align_corners=False
            )
            grids[[row[i] for i in d.elastic]] = dense
        only_affine = [i for i in d.affine if i not in d.offsets]
        if only_affine:
            matrices = torch.as_tensor(np.stack([d.matrices[i] for i in only_affine]), dtype=torch.float32)
            grids[[row[i] for i in only_affine]] = _times_2x2(matrices, pixel[None, :2])
        # MONAI's Resample: centred pixel coordinates -> grid_sample's [-1, 1] (x = columns first).
        scale = torch.tensor([2.0 / max(2, hw[1]), 2.0 / max(2, hw[0])]).view(1, 1, 1, 2)
        flow = grids.flip(1).permute(0, 2, 3, 1) * scale
        idx = torch.as_tensor(moved)
        image[idx] = F.grid_sample(image[idx], flow, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = F.grid_sample(
            label[idx][:, None].to(torch.float32), flow, mode="nearest", padding_mode="zeros", align_corners=False
        )
        label[idx] = sampled[:, 0].round().to(label.dtype)
        return image, label

    def _flip(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flip_prob == 0:
            return image, label
        rng = self._rng["flip"]
        n = int(image.shape[0])
        # One independent flip per axis, so "both axes" also yields single-axis flips; drawn sample by sample.
        flips = [[rng.random() < self.flip_prob for _ in self.flip_axes] for _ in range(n)]
        for a, axis in enumerate(self.flip_axes):
            picked = [i for i in range(n) if flips[i][a]]
            if picked:
                idx = torch.as_tensor(picked)
                image[idx] = image[idx].flip(2 + axis)
                label[idx] = label[idx].flip(1 + axis)
        return image, label

    # ----------------------------------------------------------------------------------------- intensity

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        n, shape = int(image.shape[0]), tuple(image.shape[1:])
        if self.noise_prob > 0:
            std = self.cfg.noise.std
            # Per picked sample its sigma and the seed of its noise, from the noise stream; the noise itself comes
            # from torch's generator (27 us for a 3 x 48 x 64 sample against 92 us for numpy's float64 normal).
            picked, draws = self._pick(
                "noise", n, self.noise_prob, lambda r: (r.uniform(0.0, std), int(r.integers(0, 2**63 - 1)))
            )
            if picked:
                noise = torch.empty((len(picked), *shape), dtype=torch.float32)
                generator = torch.Generator()
                for k, (sigma, seed) in enumerate(draws):
                    torch.randn(shape, generator=generator.manual_seed(seed), out=noise[k]).mul_(sigma)
                image[picked] += noise
        if self.scale_prob > 0:
            f = self.cfg.scale_intensity.factor
            picked, factors = self._pick("scale_intensity", n, self.scale_prob, lambda r: 1.0 + r.uniform(-f, f))
            if picked:
                per_sample = np.ones(n)
                per_sample[picked] = factors
                image *= torch.as_tensor(per_sample, dtype=torch.float32).view(-1, 1, 1, 1)
        if self.low_res_prob > 0:
            self._low_resolution(image)
        # Inverted gamma before gamma, as nnU-Net orders its two gamma transforms.
        if self.inverted_gamma_prob > 0:
            g0, g1 = self.cfg.inverted_gamma.gamma
            picked, gammas = self._pick("inverted_gamma", n, self.inverted_gamma_prob, lambda r: r.uniform(g0, g1))
            if picked:
                image[picked] = -_gamma_retain_stats(-image[picked], torch.tensor(gammas, dtype=torch.float32))
        if self.gamma_prob > 0:
            g0, g1 = self.cfg.gamma.gamma
            picked, gammas = self._pick("gamma", n, self.gamma_prob, lambda r: r.uniform(g0, g1))
            if picked:
                image[picked] = _gamma_retain_stats(image[picked], torch.tensor(gammas, dtype=torch.float32))
        # Last: the curve replaces whatever brightness order the transforms above left.
        if self.curve_prob > 0:
            k = self.cfg.intensity_curve.points
            picked, curves = self._pick("intensity_curve", n, self.curve_prob, lambda r: r.uniform(0.0, 1.0, k))
            if picked:
                image[picked] = _curve_retain_stats(
                    image[picked], torch.as_tensor(np.stack(curves), dtype=torch.float32)
                )
        return image

    def _pick(
        self, stream: str, n: int, prob: float, draw: Callable[[np.random.Generator], T]
    ) -> tuple[list[int], list[T]]:
        """Which of ``n`` samples a transform picks (probability ``prob``), and ``draw``'s parameters for each,
        from the transform's own stream in sample order: a pick decision, then that sample's draws."""
        rng = self._rng[stream]
        picked, drawn = [], []
        for i in range(n):
            if rng.random() < prob:
                picked.append(i)
                drawn.append(draw(rng))
        return picked, drawn

    def _low_resolution(self, image: torch.Tensor) -> None:
        """In place: each picked sample down (bilinear) and back up (bicubic), as RandSimulateLowResolution with
        ``downsample_mode="bilinear", upsample_mode="bicubic"``."""
        rng, (z0, z1) = self._rng["low_resolution"], self.cfg.low_resolution.zoom
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        for i in range(int(image.shape[0])):
            if rng.random() >= self.low_res_prob:
                continue
            zoom = rng.uniform(z0, z1)
            small = tuple(max(1, round(s * zoom)) for s in hw)
            if small == hw:
                continue
            # One sample at a time: every sample has its own small size (about 0.2 ms each for a hippocampus slice).
            # Down with pixel centres aligned (bilinear, align_corners=False), not torch's legacy "nearest" (MONAI's
            # default): that one takes the first source pixel of each block, which moves the image 0.5-0.8 px
            # up-left against its label at every zoom, and a model trained on it predicts shifted masks.
            down = F.interpolate(image[i : i + 1], size=small, mode="bilinear", align_corners=False)
            # Up as prediction enlarges a coarse scan to the target spacing (medseg.data.resample: bicubic).
            image[i : i + 1] = F.interpolate(down, size=hw, mode="bicubic", align_corners=False)


def _times_2x2(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``einsum("nij,njhw->nihw")`` for 2 x 2 matrices, as two products and a sum per value.

    A matrix product's kernel is chosen by shape and thread count: on an AMD EPYC (torch 2.13) ``einsum`` gave
    values 1 ulp apart with one and two threads for 3 or 5 matrices, so a seeded batch differed between a
    DataLoader worker and the training process. Element-wise products compute each value on its own.

    Args:
        matrices: ``(n, 2, 2)``.
        points: ``(n, 2, H, W)``, or ``(1, 2, H, W)`` for the same points under every matrix.
    """
    m = matrices[:, :, :, None, None]  # (n, i, j, 1, 1)
    return m[:, :, 0] * points[:, None, 0] + m[:, :, 1] * points[:, None, 1]


def rotate_zoom(angle: float, zoom: tuple[float, float]) -> np.ndarray:
    """MONAI's ``create_rotate(2, angle)[:2, :2] @ create_scale(2, zoom)[:2, :2]``, written out (2 x 2 float64).

    The two helpers cost 11 us a sample in argument handling, a tenth of a hippocampus batch's spatial work;
    ``tests/test_data_transforms.py`` checks the two agree.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos * zoom[0], -sin * zoom[1]], [sin * zoom[0], cos * zoom[1]]])


def _gamma_retain_stats(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MONAI's ``AdjustContrast(retain_stats=True)`` per sample of ``x`` (N, C, H, W) with its own ``gamma`` (N,)."""
    dims = (1, 2, 3)
    std, mean = _std_mean(x)
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    out = ((x - lo) / (span + 1e-7)) ** gamma.view(-1, 1, 1, 1) * span + lo
    return _with_stats(out, mean, std)


def _std_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of ``x`` (N, C, H, W): ``(std, mean)``, each (N, 1, 1, 1), std with Bessel's correction.

    As ``torch.std_mean(x, dim=(1, 2, 3), keepdim=True)``, in two plain passes: torch's CPU ``std`` kernel took
    0.55 ms for three 3 x 128 x 96 stacks where these passes take 0.05 ms (torch 2.13, one thread), and the
    retain-stats transforms call it twice per picked batch.
    """
    dims = (1, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    d = x - mean
    n = x[0].numel()
    var = (d * d).sum(dim=dims, keepdim=True) / max(n - 1, 1)
    return var.sqrt(), mean


def _with_stats(out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``out`` (N, C, H, W) shifted and scaled per sample to the given ``mean`` and ``std`` (N, 1, 1, 1)."""
    out_std, out_mean = _std_mean(out)
    return std * ((out - out_mean) / (out_std + 1e-8)) + mean


def _end_percentiles(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``flat`` (N, M): its 0.5th percentile rounded down and 99.5th rounded up to values of the row
    (numpy's ``method="lower"`` / ``"higher"``), each (N, 1), so the range is never narrower than the exact one.

    Order statistics, not ``torch.quantile`` (a full sort). The k-th smallest value is the largest of the k
    smallest: ``topk`` keeps only the 0.5 % at each end and took half the time of two ``kthvalue`` selections
    (0.65 vs 1.4 ms for three 3 x 128 x 96 LA2018 stacks, one thread).
    """
    last = int(flat.shape[1]) - 1
    k_lo, k_hi = math.floor(0.005 * last) + 1, last + 1 - math.ceil(0.995 * last)
    lo = flat.topk(k_lo, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    hi = flat.topk(k_hi, dim=1, largest=True, sorted=False).values.amin(dim=1, keepdim=True)
    return lo, hi


def _curve_retain_stats(x: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Maps each sample of ``x`` (N, C, H, W) through its piecewise-linear curve (N, K), keeping its mean and std.

    The K control values sit evenly over the sample's 0.5th-99.5th percentile range (so a few extreme voxels do
    not squeeze the tissue into one segment); values beyond it take the end values.
    """
    n, k = int(x.shape[0]), int(curves.shape[1])
    flat = x.reshape(n, -1)
    lo, hi = _end_percentiles(flat)
    pos = ((flat - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0) * (k - 1)
    left = pos.floor().clamp(max=k - 2).long()
    frac = pos - left
    y0, y1 = curves.gather(1, left), curves.gather(1, left + 1)
    out = (y0 + frac * (y1 - y0)).view_as(x)
    std, mean = _std_mean(x)
    return _with_stats(out, mean, std)


def train_transforms(cfg: AugmentationConfig, *, seed: int | None = None) -> BatchAugmentation:
    """Builds the training augmentation from the ``augmentation`` config section.

    Args:
        cfg: Probabilities and ranges of each transform. A probability of 0 leaves that transform out;
            ``enabled: false`` gives an identity augmentation.
        seed: Seed of the random streams (``None`` = 0).

    Returns:
        A :class:`BatchAugmentation` on ``{"image": (B, C, H, W), "label": (B, H, W)}`` tensor batches.

    Raises:
        ConfigError: For flip axes other than 0 and 1.
    """
    return BatchAugmentation(cfg, seed=0 if seed is None else seed)
