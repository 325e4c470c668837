"""Process-group helpers, so the trainer already asks "which rank am I?" in the places DDP will need.

Single-process runs see ``rank 0 of 1`` and every helper is a no-op. What the trainer already does with them:
it writes checkpoints, ``metrics.csv``, curves and TensorBoard and shows the progress bar only on rank 0
(:func:`is_main_process`, followed by :func:`barrier`), shards each epoch's sample sequence by rank
(``foreground_sampler(..., rank=, world_size=)`` wrapped by ``medseg.training.loader.SeededSampler``), trains
``wrap_model(model)`` and saves ``unwrap_model(model)``'s weights. What adding DistributedDataParallel (issue 8)
still needs: initialising the process group (torchrun env, gloo/nccl from ``training.distributed_backend``),
averaging the train loss with :func:`all_reduce_mean`, and sharding validation cases over ranks (today every
rank validates all of them, identical results, duplicated work).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialised (e.g. under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank; 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group; 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the only process that writes checkpoints, logs, curves and shows the progress bar."""
    return get_rank() == 0


def barrier() -> None:
    """Waits for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / get_world_size()


def wrap_model(model: nn.Module) -> nn.Module:
    """The model to train: wrapped in DistributedDataParallel under a process group, unchanged otherwise."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under a DDP wrapper (what checkpoints store, so they load without DDP)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model
