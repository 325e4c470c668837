"""How many slices go through the network at once: ``inference.batch_size: auto`` from a memory budget.

A fixed batch of 64 slices is harmless at 64 x 64 (hippocampus) and gigabytes at 512 x 512 (CT): a base-32
UNet's activations for one 512 x 512 slice are about 224 MiB, so 64 of them peaked at 8.1 GiB RSS (issue 15).
``auto`` therefore sizes the batch from the slice, the model and a budget:

* **Per-slice bytes.** One probe forward pass of a small zero slice records the largest leaf-module output per
  input pixel (for a UNet the first level's ``base_features`` maps); a slice then costs
  :data:`LIVE_MAPS_FACTOR` times that, scaled to the padded slice area, plus its input and output buffers.
  The factor was measured (``ru_maxrss`` of a fresh process, base-32 UNet, 256 x 256 slices, batch 2 vs 6):
  the peak grew by 7.0 (fp32) and 6.1 (fp32, channels_last) full-resolution feature maps per slice on a CPU with
  AVX2 (AMD EPYC), but by 9.75 and 9.15 on an Intel Xeon with AVX-512, where oneDNN reorders float32 maps into
  its blocked layouts (bf16 + channels_last there: 5.9); 10.5 and 8.85 with the convolution-ReLU fusion off, so
  the layouts, not the fusion, cost it. Skips kept for the decoder, a block's input and output, the
  concatenation, and those copies; 11 covers both CPUs.
* **Budget.** ``inference.memory_gb`` when set; otherwise from the machine: on CPU a fifth of the memory
  available now (``MemAvailable`` in ``/proc/meminfo``), at most :data:`CPU_BUDGET_CAP_GB` (larger batches
  do not make a CPU faster, they only hold more memory); on CUDA half the free GPU memory
  (``torch.cuda.mem_get_info``).
* **Batch.** ``budget // per_slice``, at least 1, at most :data:`MAX_AUTO_BATCH`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from medseg.data.slicing import padded_size
from medseg.errors import ConfigError
from medseg.inference.settings import InferenceSettings

#: ``inference.batch_size`` value that asks for a batch sized by memory.
AUTO: Literal["auto"] = "auto"
#: Full-resolution largest-layer maps alive per slice during a forward pass (measured 6.1-9.75; see module doc).
LIVE_MAPS_FACTOR = 11
#: Upper bound of an automatic batch (the old fixed default; more buys nothing on CPU).
MAX_AUTO_BATCH = 64
#: Default CPU budget: this fraction of ``MemAvailable`` ...
CPU_BUDGET_FRACTION = 0.2
#: ... but no more than this many GiB (1 GiB = 2 slices of 512 x 512 at base 32). At 2 GiB a 512 x 512 x 100 CT
#: peaked at 2.13 GiB RSS with base 32 and a 512 x 512 x 200 one at 2.51 GiB with base 8, above issue 15's
#: 1.5 GiB + 3 x the scan (benchmarks/RESULTS.md, "Large-volume prediction"); a CPU is no faster with the
#: larger batch.
CPU_BUDGET_CAP_GB = 1.0
#: ... and no less than this (a machine reporting almost nothing free still predicts, one slice at a time).
CPU_BUDGET_FLOOR_GB = 0.25
#: Default CUDA budget: this fraction of the free GPU memory.
CUDA_BUDGET_FRACTION = 0.5

_GIB = 2**30
_PROBE_HW = 64
# Largest leaf output per input pixel, per (model, in_channels), measured once per model object.
_probe_cache: weakref.WeakKeyDictionary[nn.Module, dict[int, float]] = weakref.WeakKeyDictionary()


BatchSizeOption = int | Literal["auto"]


def check_batch_size(option: object) -> BatchSizeOption:
    """Validates a batch-size option: a positive integer or ``"auto"``.

    Raises:
        ConfigError: Anything else.
    """
    if option == AUTO:
        return AUTO
    if isinstance(option, bool) or not isinstance(option, int) or option < 1:
        raise ConfigError(f"inference.batch_size must be a positive integer or 'auto', got {option!r}")
    return option


def available_memory_bytes() -> int | None:
    """Memory the OS says can be allocated without swapping (``MemAvailable``), ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_memory_gb(device: torch.device) -> float:
    """The budget (GiB) for one forward batch when ``inference.memory_gb`` is not set (see the module doc)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return CUDA_BUDGET_FRACTION * free / _GIB
    avail = available_memory_bytes()
    if avail is None:
        return CPU_BUDGET_CAP_GB
    return min(CPU_BUDGET_CAP_GB, max(CPU_BUDGET_FLOOR_GB, CPU_BUDGET_FRACTION * avail / _GIB))


def resolve_memory_gb(memory_gb: float | None, device: torch.device) -> float:
    """``memory_gb`` if given (must be > 0), else :func:`default_memory_gb`.

    Raises:
        ConfigError: A budget <= 0.
    """
    if memory_gb is None:
        return default_memory_gb(device)
    if not memory_gb > 0:
        raise ConfigError(f"inference.memory_gb must be > 0, got {memory_gb!r}")
    return float(memory_gb)


def largest_map_per_pixel(model: nn.Module, in_channels: int, device: torch.device) -> float:
    """Elements of the model's largest leaf-module output per input pixel (one cached probe forward pass).

    Args:
        model: The network, already on ``device``; its train/eval mode is restored.
        in_channels: Input channels of a slice.
        device: Where the model lives.
    """
    per_model = _probe_cache.setdefault(model, {})
    if in_channels in per_model:
        return per_model[in_channels]
    largest = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal largest
        if isinstance(out, torch.Tensor):
            largest = max(largest, out.numel())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    was_training = model.training
    try:
        model.eval()
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        with torch.inference_mode():
            model(torch.zeros((1, in_channels, _PROBE_HW, _PROBE_HW), device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    value = largest / float(_PROBE_HW * _PROBE_HW)
    per_model[in_channels] = value
    return value


def slice_bytes(model: nn.Module, in_channels: int, padded_hw: Sequence[int], settings: InferenceSettings) -> int:
    """Estimated working memory of one slice in a forward batch (activations, input and output buffers).

    Activations are counted at 4 bytes per element whatever the autocast dtype (bf16 autocast keeps some
    tensors in float32, and the estimate must not be optimistic).
    """
    pixels = int(padded_hw[0]) * int(padded_hw[1])
    maps = LIVE_MAPS_FACTOR * largest_map_per_pixel(model, in_channels, settings.device) * pixels
    # Input (+ padded copy) and the probabilities: logits, float32 probabilities, the host copy, flips' sum.
    buffers = 2 * in_channels * pixels + 4 * settings.n_classes * pixels
    return int(4 * (maps + buffers))


def auto_batch_size(
    model: nn.Module,
    in_channels: int,
    slice_hw: Sequence[int],
    settings: InferenceSettings,
    memory_gb: float,
) -> int:
    """Slices per forward pass that fit ``memory_gb``, between 1 and :data:`MAX_AUTO_BATCH`.

    Args:
        model: The network (on ``settings.device``).
        in_channels: Input channels of a slice (``2 * context + 1``).
        slice_hw: Unpadded ``(H, W)`` of the slices; padded here exactly as the forward pass pads them.
        settings: The forward settings (padding, classes, device).
        memory_gb: Budget for one batch's working memory.
    """
    padded = padded_size(slice_hw, settings.pad_multiple, settings.patch_hw)
    per_slice = slice_bytes(model, in_channels, padded, settings)
    return max(1, min(MAX_AUTO_BATCH, math.floor(memory_gb * _GIB / max(1, per_slice))))


def settings_for_slices(
    settings: InferenceSettings,
    option: BatchSizeOption,
    model: nn.Module,
    in_channels: int,
    slice_hw: Sequence[int],
    memory_gb: float | None,
) -> InferenceSettings:
    """``settings`` with the batch size ``option`` resolved for slices of ``slice_hw`` (unchanged for an int)."""
    if option != AUTO:
        return settings if settings.batch_size == option else settings.with_options(batch_size=int(option))
    budget = resolve_memory_gb(memory_gb, settings.device)
    batch = auto_batch_size(model, in_channels, slice_hw, settings, budget)
    return settings if settings.batch_size == batch else settings.with_options(batch_size=batch)
