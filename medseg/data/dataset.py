"""The training dataset: every slice of the prepared cases, cut into patches of one size.

Per-sample work is a window read from the prepared case's own slices into a zeroed patch, nothing else (the
training loader augments whole batches): no file reads, no normalisation, no copy of the dataset. The slices are
stored once without their 2.5D context channels; a sample gathers its neighbours by index, so memory does not
grow with ``context_slices``, and slices of different sizes cost their own size, not the largest one's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from medseg.data.prepare import PreparedCase, PreparedData, prepare_cases, prepare_training_data
from medseg.data.sampling import ForegroundSampler, foreground_sampler
from medseg.data.slicing import context_indices, padded_size
from medseg.data.unannotated import foreground_mask
from medseg.threads import single_thread

log = logging.getLogger(__name__)

# The keys of medseg.data.transforms (not imported from there: that would pull in MONAI for every user).
IMAGE_KEY = "image"
LABEL_KEY = "label"

__all__ = [
    "ForegroundSampler",
    "PreparedCase",
    "PreparedData",
    "SliceDataset",
    "foreground_sampler",
    "prepare_cases",
    "prepare_training_data",
    "worker_init_fn",
]


class SliceDataset(Dataset[dict[str, torch.Tensor]]):
    """Labelled 2D (or 2.5D) slices of prepared cases, zero-padded (centred) to one patch size.

    Items are ``{"image": float32 (C, H, W), "label": int64 (H, W)}`` with ``(H, W) = patch_hw``.

    Args:
        prepared: Labelled cases from :func:`prepare_training_data` / :func:`prepare_cases`, all with the same
            number of channels.
        patch_hw: Patch size; ``None`` = the largest slice rounded up to ``pad_multiple``. Must cover every slice.
        transforms: Batch augmentation on ``{"image": (B, C, H, W), "label": (B, H, W)}`` tensor dicts
            (:func:`medseg.data.transforms.train_transforms`), applied here to each item as a batch of one;
            ``None`` for none. The training loader augments whole batches instead (:meth:`crop_batch`).
        pad_multiple: Used when ``patch_hw`` is ``None`` (16 = four poolings).
        crop_hw: The plan's training patch: each item is a random window of this size (slices smaller than it
            are padded; see :meth:`_window`). ``None`` = whole padded slices (``patch_hw``).
        foreground_fraction: Chance that a window on a slice holding labels is centred on a random labelled
            pixel (the sampler already draws this share of slices from those holding labels); otherwise it lies
            anywhere within the slice.
        seed: Seed of the window positions (:meth:`reseed` reseeds them per DataLoader worker).

    Attributes:
        patch_hw: The size of the items (``crop_hw`` if given).
        foreground: ``(len,)`` bool, whether each slice holds a label > 0 (for :func:`foreground_sampler`).
        annotated: ``(len,)`` bool, whether each slice holds an annotated voxel (all True unless the dataset marks
            unannotated voxels, ``medseg.data.unannotated``): the sampler draws only these.
        case_index: ``(len,)`` index into ``prepared`` of each slice's case.
    """

    def __init__(
        self,
        prepared: Sequence[PreparedCase],
        patch_hw: Sequence[int] | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        pad_multiple: int = 16,
        crop_hw: Sequence[int] | None = None,
        foreground_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not prepared:
            raise ValueError("SliceDataset needs at least one prepared case")
        unlabelled = [p.id for p in prepared if p.label is None]
        if unlabelled:
            raise ValueError(f"SliceDataset needs labelled cases; no label for {', '.join(unlabelled[:5])}")
        inputs = {int(p.n_input_channels) for p in prepared}
        if len(inputs) != 1:
            raise ValueError(f"all cases need the same number of input channels, got {sorted(inputs)}")
        contexts = {int(p.context) for p in prepared}
        if len(contexts) != 1:
            raise ValueError(f"all cases need the same 2.5D context, got {sorted(contexts)}")
        # Several input channels (modalities): stored per modality, each with its own 2.5D neighbours.
        self.n_input_channels = inputs.pop()
        self.context = contexts.pop()
        self.channels = self.n_input_channels * (2 * self.context + 1)
        max_hw = np.max([p.image.shape[-2:] for p in prepared], axis=0)
        if patch_hw is None:
            # Items cover the largest slice and the crop (a crop larger than every slice is all padding).
            patch_hw = padded_size(max_hw, pad_multiple, crop_hw)
        self.patch_hw = tuple(int(s) for s in patch_hw)
        too_big = [
            (p.id, tuple(p.image.shape[-2:])) for p in prepared if np.any(np.array(p.image.shape[-2:]) > self.patch_hw)
        ]
        if too_big:
            raise ValueError(f"slices larger than patch_hw {self.patch_hw}: {too_big[:5]}; use a larger patch_hw")
        self.transforms = transforms

        # The prepared cases' own arrays are read per item (no padded copy of the dataset: that doubled the
        # training data's memory, and more when slice sizes differ). Items are cut from a virtual array in which
        # every slice lies centred in ``stored_hw``, the padding of slicing.pad_to_shape.
        self._cases = list(prepared)
        n_total = sum(p.n_slices for p in prepared)
        ph, pw = self.patch_hw
        self._first = np.cumsum([0] + [p.n_slices for p in prepared[:-1]]).astype(np.int64)
        case_index = np.empty(n_total, dtype=np.int64)
        boxes = np.empty((n_total, 4), dtype=np.int64)  # top, left, h, w of the real slice in the virtual array
        foreground = np.empty(n_total, dtype=bool)
        annotated = np.empty(n_total, dtype=bool)
        neighbours = np.empty((n_total, 2 * self.context + 1), dtype=np.int64)  # within the slice's case
        for ci, case in enumerate(prepared):
            n, h, w = case.n_slices, case.image.shape[-2], case.image.shape[-1]
            start = int(self._first[ci])
            case_index[start : start + n] = ci
            neighbours[start : start + n] = context_indices(n, self.context)
            boxes[start : start + n] = ((ph - h) // 2, (pw - w) // 2, h, w)
            assert case.label is not None
            foreground[start : start + n] = case.foreground
            annotated[start : start + n] = case.annotated
        self.case_index = case_index
        self._neighbours = neighbours
        self.case_ids = [p.id for p in prepared]
        self.foreground = foreground
        self.annotated = annotated
        self._boxes = boxes
        self.stored_hw = self.patch_hw
        self.crop_hw = tuple(int(s) for s in crop_hw) if crop_hw is not None else self.patch_hw
        if any(c > st for c, st in zip(self.crop_hw, self.stored_hw, strict=True)):
            raise ValueError(f"crop_hw {self.crop_hw} is larger than the stored slices {self.stored_hw}")
        if self.crop_hw != self.stored_hw:
            self.patch_hw = self.crop_hw
        self.foreground_fraction = float(foreground_fraction)
        self._rng = np.random.default_rng(seed)
        log.info(
            "SliceDataset: %d slices from %d cases, patch %s, %d channels, %.0f%% with foreground%s",
            n_total,
            len(prepared),
            self.patch_hw,
            self.channels,
            100 * self.foreground[self.annotated].mean() if self.annotated.any() else 0.0,
            "" if self.annotated.all() else f" of the {int(self.annotated.sum())} with annotated voxels (drawn alone)",
        )

    def __len__(self) -> int:
        return int(self.case_index.shape[0])

    def _window(self, index: int) -> tuple[int, int]:
        """Top-left corner of item ``index``'s window (``patch_hw``) in the virtual array of centred slices.

        Per axis: a slice smaller than the patch gets the window centred on it (the rest is padding); a larger
        one gets a random window inside it, centred (as far as it fits) on a random labelled pixel with chance
        ``foreground_fraction`` when the slice holds labels. Whole slices (no crop) start at (0, 0).
        """
        if self.crop_hw == self.stored_hw:
            return 0, 0
        top, left, h, w = (int(v) for v in self._boxes[index])
        centre: tuple[int, int] | None = None
        if self.foreground[index] and self.foreground_fraction > 0 and self._rng.random() < self.foreground_fraction:
            label = self._case_label(index)
            unannotated = self._cases[int(self.case_index[index])].unannotated
            fg = np.flatnonzero(foreground_mask(label, unannotated).reshape(-1))  # row-major, as over the padded slice
            r, c = divmod(int(fg[self._rng.integers(fg.size)]), w)
            centre = (r + top, c + left)
        out = []
        for ax, (b0, size, patch, stored) in enumerate(
            ((top, h, self.crop_hw[0], self.stored_hw[0]), (left, w, self.crop_hw[1], self.stored_hw[1]))
        ):
            if size <= patch:
                start = b0 + size // 2 - patch // 2
            elif centre is not None:
                start = min(max(centre[ax] - patch // 2, b0), b0 + size - patch)
            else:
                start = int(self._rng.integers(b0, b0 + size - patch + 1))
            out.append(min(max(start, 0), stored - patch))
        return out[0], out[1]

    def _case_label(self, index: int) -> np.ndarray:
        ci = int(self.case_index[index])
        label = self._cases[ci].label
        assert label is not None
        return np.asarray(label[index - int(self._first[ci])])

    def crop(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` before augmentation: ``{"image": float32 (C, H, W), "label": int64 (H, W)}``, new arrays
        (nothing downstream can touch the prepared slices)."""
        batch = self.crop_batch([index])
        return {IMAGE_KEY: batch[IMAGE_KEY][0], LABEL_KEY: batch[LABEL_KEY][0]}

    def crop_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Items ``indices`` before augmentation, stacked: ``{"image": (B, C, H, W), "label": (B, H, W)}``.

        Equal to stacking :meth:`crop` of each index (window positions are drawn in the same order), but each
        window is written straight into one zeroed batch: no per-item arrays and no stacking copy, which took
        about half of the 0.8 ms that cutting a hippocampus batch of 32 cost (``benchmarks/choices.md``).
        """
        ph, pw = self.patch_hw
        image = np.zeros((len(indices), self.channels, ph, pw), dtype=np.float32)
        label = np.zeros((len(indices), ph, pw), dtype=np.int64)
        for k, index in enumerate(indices):
            self._fill(int(index), image[k], label[k])
        return {IMAGE_KEY: torch.from_numpy(image), LABEL_KEY: torch.from_numpy(label)}

    def _fill(self, index: int, image: np.ndarray, label: np.ndarray) -> None:
        """Writes item ``index`` into the zeroed ``image`` (C, H, W) and ``label`` (H, W)."""
        y0, x0 = self._window(index)
        ph, pw = self.patch_hw
        top, left, h, w = self._boxes[index].tolist()
        ci = int(self.case_index[index])
        case = self._cases[ci]
        local = index - int(self._first[ci])
        neighbours = self._neighbours[index]  # edge slices replicated
        label_slices = case.label
        assert label_slices is not None
        # The part of the window the slice covers, in window and in slice coordinates; the rest stays zero.
        r0, r1 = max(y0, top), min(y0 + ph, top + h)
        c0, c1 = max(x0, left), min(x0 + pw, left + w)
        rows, cols = slice(r0 - top, r1 - top), slice(c0 - left, c1 - left)
        in_rows, in_cols = slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0)
        window = case.image[:, :, rows, cols][neighbours]  # (2k+1, C, h', w')
        # Channel-major (C * (2k+1), H, W), as channels_to_slices: modality c's neighbours are rows c*(2k+1)...
        stacked = image.reshape(self.n_input_channels, len(neighbours), ph, pw)
        stacked[:, :, in_rows, in_cols] = window.swapaxes(0, 1)
        label[in_rows, in_cols] = label_slices[local, rows, cols]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.crop(index)
        if self.transforms is None:
            return item
        # A batch of one: the training loader instead augments whole batches (medseg.training.loader).
        with single_thread():
            out = self.transforms({key: value[None] for key, value in item.items()})
        return {IMAGE_KEY: out[IMAGE_KEY][0].contiguous(), LABEL_KEY: out[LABEL_KEY][0].contiguous()}

    def reseed(self, seed: int) -> None:
        """Seeds the random transforms (each DataLoader worker needs its own stream: see :func:`worker_init_fn`)."""
        self._rng = np.random.default_rng(seed % (2**32))
        set_state = getattr(self.transforms, "set_random_state", None)
        if set_state is not None:
            set_state(seed=seed % (2**32))


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: gives each worker its own augmentation stream.

    Forked workers inherit the same transform state; without reseeding, all workers would draw the same
    augmentations. ``torch``'s per-worker seed differs per worker and per epoch, and follows ``torch.manual_seed``.
    """
    info = get_worker_info()
    if info is None:
        return
    dataset = info.dataset
    reseed = getattr(dataset, "reseed", None)
    if reseed is not None:
        reseed(info.seed)
    np.random.seed(info.seed % (2**32))
