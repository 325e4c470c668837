"""Process-group helpers, so the trainer already asks "which rank am I?" in the places DDP will need.

Single-process runs see ``rank 0 of 1`` and every helper is a no-op. What the trainer already does with them:
it writes checkpoints, ``metrics.csv``, curves and TensorBoard and shows the progress bar only on rank 0
(:func:`is_main_process`, followed by :func:`barrier`), shards each epoch's sample sequence by rank
(``foreground_sampler(..., rank=, world_size=)`` wrapped by ``medseg.training.loader.SeededSampler``), trains
``wrap_model(model)`` (DistributedDataParallel) and saves ``unwrap_model(model)``'s weights, averages the train
loss over ranks (:func:`all_reduce_mean`) and skips a non-finite step only when every rank does (:func:`all_ranks`).

Under ``torchrun``, ``pipelines.run`` calls :func:`init_distributed` (backend from ``training.distributed_backend``:
``auto`` = nccl with CUDA, else gloo; device ``cuda:<LOCAL_RANK>``) and :func:`shutdown_distributed` at the end.

Validation: every rank validates all validation cases with the same (synchronised) weights and rank 0's Dice is
broadcast (:func:`broadcast_object`), so best-checkpoint and early-stopping decisions agree on every rank. This
is the simplest correct choice; sharding validation cases over ranks would save time on large validation sets.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from medseg.launch import launched_distributed

log = logging.getLogger(__name__)


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``nccl`` when CUDA is present, else ``gloo``; ``gloo``/``nccl`` as given.

    Raises:
        ConfigError: ``nccl`` was asked for on a machine without CUDA.
    """
    from medseg.errors import ConfigError

    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("training.distributed_backend is 'nccl', but CUDA is not available; use 'gloo' or 'auto'")
    return backend


def init_distributed(backend: str = "auto", *, timeout_minutes: float = 30.0) -> bool:
    """Initialises the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    A no-op (returns ``False``) outside a multi-process launch or when the group already exists. With CUDA the
    process's default device is set to ``cuda:<LOCAL_RANK>`` first (one process per GPU), which nccl needs.

    Args:
        backend: ``training.distributed_backend``: ``auto``, ``gloo`` or ``nccl``.
        timeout_minutes: How long a collective waits for the other ranks before failing.

    Returns:
        Whether this call created the process group (the caller then owns :func:`shutdown_distributed`).
    """
    if not launched_distributed() or is_distributed():
        return False
    name = resolve_backend(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=name, timeout=datetime.timedelta(minutes=timeout_minutes))
    log.debug("Process group: rank %d of %d, backend %s", get_rank(), get_world_size(), name)
    return True


def shutdown_distributed() -> None:
    """Destroys the process group (no-op when none exists)."""
    if is_distributed():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (``obj`` itself in a single process).

    Used for decisions that must be identical on every rank (validation Dice -> best / early stopping, elapsed
    time -> ``max_minutes``): if ranks disagreed, one would stop while the others wait in a collective forever.
    """
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _collective_device() -> str:
    # nccl only reduces CUDA tensors; gloo takes CPU ones.
    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"


def all_reduce_sum(value: int) -> int:
    """Sum of an integer over all ranks (the value itself in a single process)."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t)
    return int(t.item())


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` is true on every rank (``flag`` itself in a single process).

    The trainer skips a step with a non-finite loss only when every rank skips it: under DDP a rank that runs
    ``backward`` waits for the others' gradients, so a rank that skipped alone would leave it waiting forever.
    """
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


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
