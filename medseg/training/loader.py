"""The training DataLoader, with augmentation that is a pure function of (seed, epoch, batch position).

Random transforms normally draw from a generator that lives in the main process or, with workers, in each
worker process, whose state no checkpoint can capture. Here the sampler yields one ``(batch seed, slice
indices)`` per batch; the process that builds the batch (the training process or a worker) re-seeds the window
positions and the augmentation with the batch seed, cuts the windows into one batch and augments it as a
whole. So the augmented batch ``b`` of epoch ``e`` is the same whatever ``num_workers`` is, whether workers
persist, and whether the run was killed and resumed in between: what makes kill-and-resume end with the same
weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medseg.data.sampling import ForegroundSampler


class SeededSampler(Sampler[tuple[int, list[int]]]):
    """Wraps a :class:`ForegroundSampler`: yields one ``(seed, indices)`` per batch, the batch's slice indices
    and its augmentation seed.

    The last incomplete batch is dropped when there is at least one full batch (a batch of a few slices gives
    noisy BatchNorm statistics).

    Args:
        base: The epoch-aware sampler that picks slice indices (its ``rank``/``world_size`` shard them).
        seed: Base seed of the augmentation.
        batch_size: Slices per batch.
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
        n = len(self.base)
        return n // self.batch_size if n >= self.batch_size else 1

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        r, w = self.base.rank, self.base.world_size
        indices = self.base.indices(self.epoch)[r::w].tolist()
        n_batches = -(-len(indices) // self.batch_size)
        # A stream separate from the sampler's own ([seed, epoch]) so index choice and augmentation are independent;
        # the rank is part of the key so ranks augment differently.
        rng = np.random.default_rng([self.seed, self.epoch, r, 0x5EED])
        seeds = rng.integers(0, 2**32 - 1, size=n_batches).tolist()  # a dropped last batch draws one too
        b = self.batch_size
        return iter([(seeds[k], indices[k * b : (k + 1) * b]) for k in range(len(self))])


class SeededBatches(Dataset[dict[str, torch.Tensor]]):
    """Indexed by ``(seed, indices)``: the batch of those slices, augmented as a whole.

    The seed re-seeds the dataset's window positions and its augmentation (``dataset.transforms``), then the
    windows are cut straight into one batch (:meth:`SliceDataset.crop_batch`) and augmented at once, here, in
    the process that builds the batch (the training process, or a worker).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, list[int]]) -> dict[str, torch.Tensor]:
        seed, indices = key
        self.dataset.reseed(int(seed))
        batch: dict[str, torch.Tensor] = self.dataset.crop_batch(indices)
        if self.dataset.transforms is None:
            return batch
        # On this process's threads (the augmentation keeps to one thread where the thread count would change
        # its bits): whole-batch ops are large enough to share, and in the training process the model's
        # threads are still awake from the last step.
        out: dict[str, torch.Tensor] = self.dataset.transforms(batch)
        return out


def _as_built(batch: Any) -> Any:
    """``collate_fn`` of a loader whose dataset returns whole batches (a module-level function: workers pickle it)."""
    return batch


def build_train_loader(
    dataset: Any,
    sampler: SeededSampler,
    *,
    num_workers: int,
    device: torch.device,
    seed: int,
) -> DataLoader[dict[str, torch.Tensor]]:
    """A DataLoader of seeded, augmented batches.

    Args:
        dataset: A ``medseg.data.dataset.SliceDataset``; its ``transforms`` (a batch augmentation, or ``None``)
            augment each batch as a whole.
        sampler: From :class:`SeededSampler` (it sets the batch size); call ``sampler.set_epoch`` before each epoch.
        num_workers: Worker processes (0 = load in the main process). With workers, they persist across epochs
            (no re-fork per epoch) and prefetch two batches each.
        device: Pinned memory only for CUDA (it costs a copy and buys nothing on CPU).
        seed: Seeds the loader's own generator, so creating worker seeds never touches the global RNG.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    workers = int(num_workers)
    return DataLoader(
        SeededBatches(dataset),
        batch_size=None,  # the sampler yields whole batches
        sampler=sampler,
        collate_fn=_as_built,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        generator=generator,
    )
