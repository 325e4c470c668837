"""The training DataLoader, with augmentation that is a pure function of (seed, epoch, sample position).

Random transforms normally draw from a generator that lives in the main process or, with workers, in each
worker process, whose state no checkpoint can capture. Here the sampler yields ``(slice index, batch seed)``
pairs; the dataset re-seeds its window positions when the batch seed changes, i.e. at the first sample of each
batch (a DataLoader worker builds a whole batch, in order), and the collate function seeds the augmentation
with the batch seed and augments the whole batch at once. So the augmented batch ``b`` of epoch ``e`` is the
same whatever ``num_workers`` is, whether workers persist, and whether the run was killed and resumed in
between: what makes kill-and-resume end with the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from medseg.data.dataset import single_thread
from medseg.data.sampling import ForegroundSampler


class SeededSampler(Sampler[tuple[int, int]]):
    """Wraps a :class:`ForegroundSampler`: yields ``(index, seed)`` with one augmentation seed per batch.

    Args:
        base: The epoch-aware sampler that picks slice indices (its ``rank``/``world_size`` shard them).
        seed: Base seed of the augmentation.
        batch_size: The DataLoader's batch size (consecutive runs of this many samples share a seed).
    """

    def __init__(self, base: ForegroundSampler, seed: int, batch_size: int) -> None:
        self.base = base
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose samples the next iteration yields (call before every epoch)."""
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        r, w = self.base.rank, self.base.world_size
        indices = self.base.indices(self.epoch)[r::w]
        n_batches = -(-indices.size // self.batch_size)
        # A stream separate from the sampler's own ([seed, epoch]) so index choice and augmentation are independent;
        # the rank is part of the key so ranks augment differently.
        rng = np.random.default_rng([self.seed, self.epoch, r, 0x5EED])
        seeds = np.repeat(rng.integers(0, 2**32 - 1, size=n_batches), self.batch_size)[: indices.size]
        return iter(zip(indices.tolist(), seeds.tolist(), strict=True))


class SeededAugmentation(Dataset[tuple[dict[str, torch.Tensor], int]]):
    """Indexes a ``SliceDataset`` with ``(index, seed)``: the un-augmented item and its batch seed.

    The dataset's window positions are re-seeded when ``seed`` changes (at the first sample of a batch); the
    augmentation itself runs on the whole batch in :class:`AugmentBatch`.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[dict[str, torch.Tensor], int]:
        index, seed = key
        if seed != self._seed:
            self.dataset.reseed(int(seed))
            self._seed = int(seed)
        return self.dataset.crop(int(index)), int(seed)


class AugmentBatch:
    """``DataLoader(collate_fn=...)``: stacks a batch, seeds the augmentation with its seed and augments it.

    Runs where the batch is built (the training process, or a worker), once per batch.

    Args:
        augmentation: A :class:`medseg.data.transforms.BatchAugmentation`, or ``None`` for none.
    """

    def __init__(self, augmentation: Any | None) -> None:
        self.augmentation = augmentation

    def __call__(self, items: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
        batch = default_collate([item for item, _ in items])
        if self.augmentation is None:
            return batch
        seeds = {seed for _, seed in items}
        if len(seeds) != 1:  # SeededSampler gives every sample of a batch the same seed
            raise RuntimeError(f"a batch holds samples of {len(seeds)} augmentation seeds; batch_size mismatch?")
        self.augmentation.set_random_state(seeds.pop())
        with single_thread():
            out: dict[str, torch.Tensor] = self.augmentation(batch)
        return out


def build_train_loader(
    dataset: Any,
    sampler: SeededSampler,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    seed: int,
) -> DataLoader[tuple[dict[str, torch.Tensor], int]]:
    """A DataLoader over seeded samples.

    Args:
        dataset: A ``medseg.data.dataset.SliceDataset``; its ``transforms`` (a batch augmentation, or ``None``)
            augment each batch as a whole.
        sampler: From :class:`SeededSampler`; call ``sampler.set_epoch`` before each epoch.
        batch_size: Slices per batch. The last incomplete batch is dropped when there is at least one full batch
            (a batch of a few slices gives noisy BatchNorm statistics).
        num_workers: Worker processes (0 = load in the main process). With workers, they persist across epochs
            (no re-fork per epoch) and prefetch two batches each.
        device: Pinned memory only for CUDA (it costs a copy and buys nothing on CPU).
        seed: Seeds the loader's own generator, so creating worker seeds never touches the global RNG.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    workers = int(num_workers)
    return DataLoader(
        SeededAugmentation(dataset),
        batch_size=batch_size,
        collate_fn=AugmentBatch(dataset.transforms),
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=len(sampler) >= batch_size,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        generator=generator,
    )
