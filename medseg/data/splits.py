"""Train/validation splits by case, never by slice: slices of one patient never straddle the two sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from medseg.errors import ConfigError

T = TypeVar("T")


def _case_id(case: object) -> str:
    return str(getattr(case, "id", case))


def split_cases(
    cases: Sequence[T], val_fraction: float, seed: int, folds: int | None = None, fold: int = 0
) -> tuple[list[T], list[T]]:
    """Splits cases into training and validation sets.

    The cases are ordered by id first, so the split depends only on the set of ids and the seed, not on the
    order discovery returned them in.

    Args:
        cases: Cases (anything with an ``id``; plain strings work too).
        val_fraction: Share of cases for validation when ``folds`` is ``None`` (at least one case when > 0
            and at least one case left for training).
        seed: Shuffling seed; the same seed gives the same split.
        folds: k-fold cross-validation: number of folds.
        fold: Which fold is the validation set (``0..folds-1``).

    Returns:
        ``(train, val)``, each sorted by id; disjoint, together all cases.

    Raises:
        ConfigError: Too few cases for the folds, fold out of range, or a bad ``val_fraction``.
    """
    ordered = sorted(cases, key=_case_id)
    n = len(ordered)
    order = np.random.default_rng(seed).permutation(n)
    if folds is not None:
        if folds < 2:
            raise ConfigError(f"data.folds must be >= 2, got {folds}")
        if not 0 <= fold < folds:
            raise ConfigError(f"data.fold must be in 0..{folds - 1}, got {fold}")
        if n < folds:
            raise ConfigError(f"data.folds={folds} needs at least {folds} cases, got {n}")
        val_pos = set(np.array_split(order, folds)[fold].tolist())
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        n_val = round(val_fraction * n)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        val_pos = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(ordered) if i not in val_pos]
    val = [c for i, c in enumerate(ordered) if i in val_pos]
    return train, val
