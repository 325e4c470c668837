"""Why a ``state_dict`` does not fit a model, in one line (torch's own error lists every tensor: ~100 lines)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Tensors named in each part of the summary before "..." (the count is always given).
SHOWN = 3


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def state_dict_mismatch(model: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """Summarises how ``state`` differs from ``model.state_dict()``: counts and the first few tensors.

    Args:
        model: The model the weights should load into.
        state: The weights (e.g. a checkpoint's ``model_state``).

    Returns:
        ``None`` when every tensor is there with the right shape; otherwise e.g. ``"38 of 38 tensors differ
        in size (inc.double_conv.0.weight: checkpoint (16, 1, 3, 3), model (8, 1, 3, 3); ...)"``.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k, v in expected.items() if k in state and _shape(state[k]) != tuple(v.shape)]
    parts = []
    if resized:
        shown = [f"{k}: checkpoint {_shape(state[k])}, model {tuple(expected[k].shape)}" for k in resized[:SHOWN]]
        if len(resized) > SHOWN:
            shown.append("...")
        parts.append(f"{len(resized)} of {len(expected)} tensors differ in size ({'; '.join(shown)})")
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model ({_names(unexpected)})")
    return "; ".join(parts) or None
