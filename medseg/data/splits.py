"""Train/validation splits by case, never by slice: slices of one case never straddle the two sets, nor (with
``data.group_pattern``) the cases of one patient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from medseg.data.name_patterns import compile_named
from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.config import DataConfig

T = TypeVar("T")


def _case_id(case: object) -> str:
    return str(getattr(case, "id", case))


def case_groups(ids: Sequence[str], group_pattern: str | None) -> list[str]:
    """The group (patient) of each case id: ``group_pattern``'s ``group`` group, or the id itself when ``None``.

    Raises:
        ConfigError: An invalid pattern, one without ``(?P<group>...)``, or a case id it does not match.
    """
    if group_pattern is None:
        return list(ids)
    pattern = compile_named(group_pattern, "data.group_pattern", "group")
    groups = []
    for cid in ids:
        match = pattern.match(cid)
        if match is None or not match.group("group"):
            raise ConfigError(
                f"Case '{cid}' does not match data.group_pattern '{group_pattern}', so its patient is unknown; "
                "fix the pattern (it is matched at the start of the case id)"
            )
        groups.append(match.group("group"))
    return groups


def split_cases(
    cases: Sequence[T],
    val_fraction: float,
    seed: int,
    folds: int | None = None,
    fold: int = 0,
    group_pattern: str | None = None,
) -> tuple[list[T], list[T]]:
    """Splits cases into training and validation sets.

    The cases are ordered by id first, so the split depends only on the set of ids and the seed, not on the
    order discovery returned them in. With ``group_pattern`` the groups (patients) are split instead of the
    cases, and each case follows its group; without it every case is its own group (the same splits as before
    groups existed).

    Args:
        cases: Cases (anything with an ``id``; plain strings work too).
        val_fraction: Share of cases (of groups) for validation when ``folds`` is ``None`` (at least one when
            > 0 and at least one left for training).
        seed: Shuffling seed; the same seed gives the same split.
        folds: k-fold cross-validation: number of folds.
        fold: Which fold is the validation set (``0..folds-1``).
        group_pattern: ``data.group_pattern`` (:func:`case_groups`).

    Returns:
        ``(train, val)``, each sorted by id; disjoint, together all cases.

    Raises:
        ConfigError: Too few cases (groups) for the folds, fold out of range, a bad ``val_fraction`` or
            ``group_pattern``.
    """
    ordered = sorted(cases, key=_case_id)
    groups = case_groups([_case_id(c) for c in ordered], group_pattern)
    names = sorted(set(groups)) if group_pattern is not None else groups  # ungrouped: one per case, as ever
    what = "groups (data.group_pattern)" if group_pattern is not None else "cases"
    n = len(names)
    order = np.random.default_rng(seed).permutation(n)
    if folds is not None:
        if folds < 2:
            raise ConfigError(f"data.folds must be >= 2, got {folds}")
        if not 0 <= fold < folds:
            raise ConfigError(f"data.fold must be in 0..{folds - 1}, got {fold}")
        if n < folds:
            raise ConfigError(f"data.folds={folds} needs at least {folds} {what}, got {n}")
        val_pos = set(np.array_split(order, folds)[fold].tolist())
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        n_val = round(val_fraction * n)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        val_pos = set(order[:n_val].tolist())
    held_out = {names[i] for i in val_pos}
    train = [c for c, g in zip(ordered, groups, strict=True) if g not in held_out]
    val = [c for c, g in zip(ordered, groups, strict=True) if g in held_out]
    return train, val


def split_for(cases: Sequence[T], data: DataConfig) -> tuple[list[T], list[T]]:
    """:func:`split_cases` as the ``data`` section configures it (``val_fraction`` or ``folds``/``fold``, ``seed``,
    ``group_pattern``): the one split every stage of a run agrees on."""
    return split_cases(
        cases, data.val_fraction, data.seed, folds=data.folds, fold=data.fold, group_pattern=data.group_pattern
    )
