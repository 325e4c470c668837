"""Foreground oversampling: a fixed share of every batch comes from slices that hold labels.

Small structures (the hippocampus fills ~2 % of a crop, tumours less) leave most slices empty; nnU-Net forces a
third of each batch to contain foreground. Here a share ``fraction`` of the sample positions is reserved for
foreground slices, spread evenly over the epoch (so every batch gets its share, not just the epoch on average);
the other positions walk through a shuffled permutation of all slices. Where a dataset marks unannotated voxels
(``medseg.data.unannotated``), a slice without an annotated voxel teaches nothing and is never drawn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class ForegroundSampler(Sampler[int]):
    """Yields ``num_samples`` slice indices per epoch with a share ``fraction`` drawn from foreground slices.

    Deterministic for a given ``seed`` and epoch. Each ``__iter__`` uses the current epoch and then advances
    it; :meth:`set_epoch` sets it explicitly (resume, distributed training). With ``world_size > 1`` every rank
    draws the same sequence and keeps every ``world_size``-th sample, so ranks see disjoint samples.

    Args:
        foreground: ``(n,)`` bool per slice.
        fraction: Share of samples forced from foreground slices (0 = plain shuffling).
        num_samples: Samples per epoch over all ranks; ``None`` = the number of slices that may be drawn.
        seed: Base seed.
        rank: This process's rank.
        world_size: Number of processes.
        eligible: ``(n,)`` bool, the slices that may be drawn at all (those with annotated voxels); ``None`` = all.
    """

    def __init__(
        self,
        foreground: np.ndarray,
        fraction: float,
        num_samples: int | None = None,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        eligible: np.ndarray | None = None,
    ) -> None:
        self.foreground = np.asarray(foreground, dtype=bool).reshape(-1)
        if self.foreground.size == 0:
            raise ValueError("ForegroundSampler needs at least one slice")
        if eligible is None:
            self.eligible_indices = np.arange(self.foreground.size)
        else:
            eligible = np.asarray(eligible, dtype=bool).reshape(-1)
            if eligible.shape != self.foreground.shape:
                raise ValueError(f"eligible has {eligible.size} entries for {self.foreground.size} slices")
            self.eligible_indices = np.flatnonzero(eligible)
            if self.eligible_indices.size == 0:
                raise ValueError("ForegroundSampler: no slice holds an annotated voxel")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.fg_indices = np.flatnonzero(self.foreground)
        if fraction > 0 and self.fg_indices.size == 0:
            log.warning("Foreground oversampling requested but no slice holds a label; sampling uniformly")
        self.fraction = fraction if self.fg_indices.size else 0.0
        self.num_samples = int(num_samples) if num_samples is not None else int(self.eligible_indices.size)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose order the next ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def indices(self, epoch: int) -> np.ndarray:
        """The full (all ranks) index sequence of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.num_samples
        # Evenly spread forced positions: position i is forced when floor(f*(i+1)+u) > floor(f*i+u).
        u = rng.random()
        steps = np.floor(self.fraction * np.arange(n + 1) + u)
        forced = np.diff(steps) > 0
        out = np.empty(n, dtype=np.int64)
        out[forced] = _cycled_permutation(rng, self.fg_indices, int(forced.sum()))
        out[~forced] = _cycled_permutation(rng, self.eligible_indices, int((~forced).sum()))
        # Ranks take strided samples; pad by wrapping so every rank gets len(self) indices.
        total = len(self) * self.world_size
        return np.resize(out, total) if total > n else out

    def __iter__(self) -> Iterator[int]:
        seq = self.indices(self.epoch)[self.rank :: self.world_size]
        self.epoch += 1
        return iter(seq.tolist())


def _cycled_permutation(rng: np.random.Generator, values: np.ndarray, count: int) -> np.ndarray:
    # Shuffled passes over ``values`` (no repeats until every value was used), as many as needed.
    if count == 0:
        return np.empty(0, dtype=np.int64)
    passes = math.ceil(count / values.size)
    return np.concatenate([rng.permutation(values) for _ in range(passes)])[:count]


def foreground_sampler(
    dataset: Any,
    fraction: float,
    num_samples: int | None = None,
    seed: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> ForegroundSampler:
    """A :class:`ForegroundSampler` for a dataset with a ``foreground`` attribute (e.g. ``SliceDataset``).

    Args:
        dataset: Has ``foreground``: ``(len,)`` bool per slice, and optionally ``annotated`` (the slices that may
            be drawn at all).
        fraction: Share of samples from foreground slices (``training.foreground_fraction``).
        num_samples: Samples per epoch; ``None`` = the number of slices that may be drawn.
        seed: Base seed (the order changes per epoch, deterministically).
        rank: This process's rank (distributed training).
        world_size: Number of processes.
    """
    eligible = getattr(dataset, "annotated", None)
    return ForegroundSampler(
        dataset.foreground, fraction, num_samples, seed, rank=rank, world_size=world_size, eligible=eligible
    )
