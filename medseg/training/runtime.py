"""Process-wide training setup: seeds, deterministic mode, DataLoader worker count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

#: ``num_workers: auto`` on CPU: DataLoader worker processes per this many cores (see ``resolve_num_workers``).
CPU_CORES_PER_WORKER = 4


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic algorithms (``warn_only``: ops without a deterministic kernel warn instead of failing).

    Off, cuDNN may benchmark convolution algorithms (faster on CUDA, not bitwise reproducible).
    """
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        # cuBLAS needs this for deterministic matmuls on CUDA >= 10.2; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def available_cpus() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def resolve_num_workers(num_workers: int | str, device: torch.device) -> int:
    """DataLoader worker processes for ``num_workers`` (an int, or ``auto``).

    ``auto``: on CUDA, ``min(4, cores - 1)`` (the GPU would otherwise wait on the CPU's augmentation). On CPU the
    model's convolutions already use every core, so workers only help where cores are plentiful:
    ``cores // CPU_CORES_PER_WORKER - 1`` capped at 4, i.e. 0 below 8 cores, 1 at 8, 2 at 12.

    Measured on the shared 2-core development machine (``benchmarks/train_speed.py``, sample hippocampus, batch
    32, default augmentation, ``benchmarks/out/train_speed*.json``): loading in the main process, the model waits
    for data 2 % of the step time with ``base_features`` 32 and 7.5 % with 16, which bounds what workers can
    gain. With one compute thread (the other core free) one worker gained 5-10 % (base 16: 47.9 -> 50.5
    slices/s); with torch's default two threads the workers took cores from the model and the rate was
    unchanged or lower. Measured again on a 2-core CPU with native bf16 (AMX), where the model step is 2-3x
    faster and loading is a larger share of it (``speed_workers{0,1}_*.json``, ``benchmarks/choices.md``): one
    worker lowered the loop/bare ratio from 0.94 to 0.89 (hippocampus, fp32 + channels_last), 0.92 to 0.85
    (bf16 + channels_last) and 0.88 to 0.78 (LA2018, bf16), although the loop hardly waited for data any more:
    a third busy process on two cores stalls the model's two compute threads. Hence 0 on small machines; set
    ``num_workers: 1`` when the model leaves a core idle. The 8-core threshold is a heuristic, not a measurement.
    """
    if isinstance(num_workers, int):
        return max(0, num_workers)
    cores = available_cpus()
    if device.type == "cuda":
        return max(0, min(4, cores - 1))
    return max(0, min(4, cores // CPU_CORES_PER_WORKER - 1))
