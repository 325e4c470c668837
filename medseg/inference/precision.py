"""Device and numeric-precision choices shared by the trainer and the predictor.

One place decides what ``device: auto`` and ``precision: auto`` mean, so a model is predicted with the same
arithmetic it was validated with:

* ``resolve_device``: ``auto`` = CUDA when present, else CPU. Under ``torchrun`` (``LOCAL_RANK`` set) ``auto`` and
  ``cuda`` pick ``cuda:<LOCAL_RANK>``, one process per GPU.
* ``resolve_precision``: ``auto`` = float16 autocast on CUDA; bfloat16 autocast on CPUs with native bf16
  (AVX512-BF16 / AMX, as oneDNN reports it); full float32 elsewhere (``None`` = no autocast). On CPUs without
  native bf16 the emulated path is slower than float32 and less accurate, so ``auto`` does not use it.
* ``autocast``: the matching ``torch.autocast`` context, or a no-op for float32.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator

import torch

from medseg.errors import ConfigError

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def local_rank() -> int | None:
    """The process's rank on its node under ``torchrun`` (``LOCAL_RANK``), or ``None`` outside torchrun.

    Raises:
        ConfigError: If ``LOCAL_RANK`` is set but is not a non-negative integer.
    """
    raw = os.environ.get("LOCAL_RANK")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ConfigError(f"Environment variable LOCAL_RANK must be a non-negative integer, got {raw!r}")
    return int(raw)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turns a device option into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under torchrun,
            ``"auto"`` and ``"cuda"`` resolve to ``cuda:<LOCAL_RANK>``; an explicit ``"cuda:N"`` is honoured as given.

    Returns:
        The device to put the model and tensors on.

    Raises:
        ConfigError: Unknown option, CUDA requested but not available, or a GPU index that does not exist.
    """
    if isinstance(device, torch.device):
        device = str(device)
    text = str(device).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = "cuda"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available (use 'cpu' or 'auto')")
    count = torch.cuda.device_count()
    if match.group(1) is not None:
        index = int(match.group(1))
    else:
        rank = local_rank()
        # One process per GPU under torchrun; wrap around so more ranks than GPUs still run (shared GPUs).
        index = rank % count if rank is not None else torch.cuda.current_device()
    if index >= count:
        raise ConfigError(f"device: {device!r} requested but only {count} CUDA device(s) exist (0..{count - 1})")
    return torch.device("cuda", index)


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN's own check; cached).

    CPUs without AVX512-BF16/AMX still *execute* bf16 autocast through emulation, but slower than float32, so
    this asks oneDNN whether the fast path exists rather than whether a bf16 conv merely runs.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op missing in this torch build: stay on the safe side
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Chooses the autocast dtype for ``device``.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``. ``auto`` = fp16 on CUDA, bf16 on CPUs with
            native bf16, else fp32. Explicit choices are honoured (with a warning where they are emulated).
        device: The resolved device.

    Returns:
        ``torch.bfloat16`` / ``torch.float16`` for mixed precision, or ``None`` for plain float32.

    Raises:
        ConfigError: Unknown option, or bf16 requested on a GPU that cannot run it.
    """
    key = str(precision).strip().lower()
    if key == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return None
    if key not in _PRECISIONS:
        raise ConfigError(f"precision: expected 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    dtype = _PRECISIONS[key]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision: 'bf16' requested but {device} does not support bfloat16; use 'fp16' or 'auto'")
    if dtype is torch.bfloat16 and device.type == "cpu" and not cpu_supports_bf16():
        warnings.warn("precision 'bf16' on a CPU without native bf16 is emulated (slower than fp32)", stacklevel=2)
    if dtype is torch.float16 and device.type == "cpu":
        warnings.warn("precision 'fp16' on CPU is slow and rarely useful; consider 'bf16' or 'fp32'", stacklevel=2)
    return dtype


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """Whether training in ``dtype`` needs a ``GradScaler`` (float16's narrow range underflows small gradients)."""
    return dtype is torch.float16


def resolve_channels_last(channels_last: str | bool, device: torch.device) -> bool:
    """Chooses the memory format for convolutions.

    Args:
        channels_last: ``"auto"`` or a bool. ``auto`` = True on CUDA (tensor cores want NHWC) and on CPU (oneDNN
            convolutions run NHWC natively, avoiding reorders); False on other devices.
        device: The resolved device.
    """
    if isinstance(channels_last, bool):
        return channels_last
    if str(channels_last).strip().lower() != "auto":
        raise ConfigError(f"channels_last: expected 'auto', true or false, got {channels_last!r}")
    return device.type in ("cuda", "cpu")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed-precision context for ``device``: ``torch.autocast`` with ``dtype``, or nothing when ``dtype`` is None.

    Args:
        device: Where the computation runs.
        dtype: From :func:`resolve_precision`.
    """
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
