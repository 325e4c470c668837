"""A model summary in the seed's ``torchsummary`` style: layer table, parameter count, memory estimate.

::

    s = summary(build_model(spec), (3, 256, 256), batch_size=16)
    print(s.table())

The table lists every leaf module (the ones that hold the computation) with its output shape for one input of
``input_shape`` and the parameters it owns; the total is ``sum(p.numel() for p in model.parameters())``, exactly.
The memory estimate is the seed's analytic one: input + 2 x (every layer's output, kept for the backward pass) +
parameters, in float32, for ``batch_size`` inputs. :func:`measure_step_memory` measures one real training step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

_MIB = 2**20


@dataclass(frozen=True)
class LayerRow:
    """One row of the table: a leaf module, its output shape (batch first) and the parameters it owns."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`summary` found.

    Attributes:
        rows: One per leaf module call, in execution order.
        total_params: ``sum(p.numel() for p in model.parameters())``.
        trainable_params: The same over parameters with ``requires_grad``.
        input_shape: ``(C, H, W)`` of one input.
        batch_size: Inputs the memory estimate is for.
        input_mb, activations_mb, params_mb: The analytic estimate's parts (MiB, float32); activations count
            every layer output twice (forward value + its gradient), as the seed's estimate does.
    """

    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    input_shape: tuple[int, ...]
    batch_size: int
    input_mb: float
    activations_mb: float
    params_mb: float
    notes: list[str] = field(default_factory=list)

    @property
    def estimated_mb(self) -> float:
        """Input + forward/backward activations + parameters (MiB)."""
        return self.input_mb + self.activations_mb + self.params_mb

    def table(self) -> str:
        """The seed-style text table, then the totals and the estimate."""
        width = max([len(f"{r.kind}-{i + 1}") for i, r in enumerate(self.rows)] + [12])
        lines = [
            f"{'Layer (type)':>{width}}  {'Output Shape':>26}  {'Param #':>12}",
            "=" * (width + 42),
        ]
        for i, r in enumerate(self.rows):
            shape = str([-1, *r.output_shape[1:]])
            lines.append(f"{f'{r.kind}-{i + 1}':>{width}}  {shape:>26}  {r.params:>12,}")
        lines += [
            "=" * (width + 42),
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            "-" * (width + 42),
            f"Input size (MB): {self.input_mb:.2f}  (batch {self.batch_size} x {tuple(self.input_shape)})",
            f"Forward/backward pass size (MB): {self.activations_mb:.2f}",
            f"Params size (MB): {self.params_mb:.2f}",
            f"Estimated Total Size (MB): {self.estimated_mb:.2f}",
            *self.notes,
        ]
        return "\n".join(lines)


def summary(
    model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1, device: str | torch.device = "cpu"
) -> ModelSummary:
    """Runs one ``(1, *input_shape)`` zero input through ``model`` (eval mode, no grad) and tabulates its layers.

    Args:
        model: Any ``nn.Module`` taking one ``(B, C, H, W)`` tensor; its train/eval mode is restored.
        input_shape: ``(C, H, W)`` of one input.
        batch_size: Inputs the memory estimate is for (the table shows ``-1`` for the batch, as the seed's).
        device: Where to run the probe; the model must already be there.

    Returns:
        A :class:`ModelSummary`.

    Raises:
        ValueError: ``batch_size`` < 1 or an empty ``input_shape``.
    """
    if batch_size < 1 or not input_shape:
        raise ValueError(f"need batch_size >= 1 and an input shape, got {batch_size=}, {tuple(input_shape)=}")
    rows: list[LayerRow] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            own = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(names.get(module, "?"), type(module).__name__, tuple(output.shape), own))

    for module in model.modules():
        if not any(True for _ in module.children()):
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    notes = []
    in_table = sum(r.params for r in rows)
    if in_table != total:
        # Parameters owned by non-leaf modules, or leaves never called, or called twice (shared weights).
        notes.append(f"Note: the rows hold {in_table:,} parameters; the model has {total:,}")
    activations = sum(math.prod(r.output_shape[1:]) for r in rows)
    return ModelSummary(
        rows=rows,
        total_params=total,
        trainable_params=trainable,
        input_shape=tuple(int(s) for s in input_shape),
        batch_size=int(batch_size),
        input_mb=math.prod(input_shape) * batch_size * 4 / _MIB,
        activations_mb=2.0 * activations * batch_size * 4 / _MIB,
        params_mb=total * 4 / _MIB,
        notes=notes,
    )


def _rss_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class StepMemory:
    """Measured memory of one training step.

    Attributes:
        device: Where the step ran.
        peak_mb: CUDA: peak allocated by torch during the step (weights, optimiser state, activations). CPU: peak
            resident set of the process during the step, minus the resident set just before it.
        method: How it was measured (``torch.cuda.max_memory_allocated`` or ``/proc VmHWM``).
    """

    device: str
    peak_mb: float | None
    method: str


def measure_step_memory(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_shape: Sequence[int],
    batch_size: int,
    n_classes: int,
    *,
    device: str | torch.device = "cpu",
    optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    precision: torch.dtype | None = None,
    channels_last: bool = False,
    seed: int = 0,
) -> StepMemory:
    """Measures the memory of one training step (forward, loss, backward, optimiser step) on random data.

    The model's weights change (one optimiser step): pass a copy you do not need any more.

    Args:
        model: The network, already on ``device``.
        loss_fn: ``loss(logits, labels)``.
        input_shape: ``(C, H, W)`` of one input.
        batch_size: Inputs per step.
        n_classes: Labels are drawn from ``[0, n_classes)``.
        device: Where the step runs.
        optimizer_factory: Builds the optimiser (default AdamW, whose state is part of the peak).
        precision: Autocast dtype of the forward pass, as in training (``None`` = float32).
        channels_last: Feed NHWC inputs (the model should already be converted), as in training.
        seed: Seeds the random batch.

    Returns:
        A :class:`StepMemory`; ``peak_mb`` is ``None`` where the platform gives no measurement.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *input_shape), generator=gen)
    y = torch.randint(0, n_classes, (batch_size, *input_shape[1:]), generator=gen)
    optimizer = (optimizer_factory or (lambda m: torch.optim.AdamW(m.parameters())))(model)
    model.train()

    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            logits = model(x.to(device).contiguous(memory_format=memory_format))
        loss = loss_fn(logits, y.to(device))
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return StepMemory(
            str(device), torch.cuda.max_memory_allocated(device) / _MIB, "torch.cuda.max_memory_allocated"
        )
    before = _rss_kb("VmRSS")
    if before is None or not _reset_peak_rss() or os.name != "posix":
        step()
        return StepMemory(str(device), None, "unavailable (needs Linux /proc)")
    step()
    peak = _rss_kb("VmHWM")
    # VmHWM and VmRSS are sampled at different moments (page accounting moves by a few kB between them), so a
    # step that stays under the reset peak reads a few kB below zero: that is "no rise", not negative memory.
    rise = None if peak is None else max(0.0, (peak - before) / 1024)
    return StepMemory(str(device), rise, "/proc VmHWM - VmRSS before")
