"""How per-class results are shown, readable from one class to a hundred.

A log line or a figure legend with one entry per class works for the hippocampus (2 classes) or BraTS (4), and
breaks on multi-organ CT (BTCV 13 organs, AMOS 15, TotalSegmentator 117): every epoch line grew to 3,000
characters, legends covered the figures, and matplotlib's 10 default colours repeated, so two organs drew in
one colour. Up to :data:`MAX_LISTED` foreground classes every class is named, as before; above it, log lines give
the median, how many classes reach 0.5 and the lowest ones, and figures draw the spread over classes (the
per-class numbers stay in the CSV files).
One palette (:func:`class_palette`) gives every class its own colour in every figure.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_LISTED = 10
"""Most foreground classes named one by one in log lines and figure legends."""

LOWEST_SHOWN = 3
"""Classes named in a summary line (the lowest scores) when there are more than :data:`MAX_LISTED`."""


def listed(n_classes: int) -> bool:
    """Whether ``n_classes`` foreground classes are named one by one (else summarised)."""
    return n_classes <= MAX_LISTED


@functools.lru_cache(maxsize=32)
def class_palette(n_classes: int) -> tuple[str, ...]:
    """``n_classes`` distinct colours (hex), one per foreground class in class order.

    matplotlib's qualitative maps while they suffice (tab10, tab20, then tab20 + tab20b + tab20c for up to 60);
    beyond, ``turbo`` sampled evenly, with neighbouring classes taken from opposite halves of the map so that
    adjacent label values (often adjacent organs) do not get near-identical colours. Cached: an overlay asks for
    each class's colour in turn.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if n_classes <= 0:
        return ()
    if n_classes <= 10:
        colours: list[Any] = list(colormaps["tab10"].colors)  # type: ignore[attr-defined]
    elif n_classes <= 20:
        colours = list(colormaps["tab20"].colors)  # type: ignore[attr-defined]
    elif n_classes <= 60:
        colours = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]  # type: ignore[attr-defined]
    else:
        samples = np.linspace(0.05, 0.95, n_classes)
        half = (n_classes + 1) // 2
        order = [i // 2 if i % 2 == 0 else half + i // 2 for i in range(n_classes)]
        colours = [colormaps["turbo"](float(samples[k])) for k in order]
    return tuple(to_hex(c) for c in colours[:n_classes])


def per_class_text(scores: Mapping[str, float | None], digits: int = 4) -> str:
    """Per-class scores for a log line: all of them by name, or a summary naming the lowest.

    Args:
        scores: Score per class name, in class order; ``None`` or NaN entries are left out.
        digits: Decimals shown.

    Returns:
        ``"a 0.8812, b 0.8640"``, or with many classes
        ``"41 classes: median 0.6120, 18 >= 0.5; lowest c 0.0000, d 0.0312, e 0.1200"``.
    """
    known = [(name, float(v)) for name, v in scores.items() if v is not None and not math.isnan(float(v))]
    if listed(len(known)):
        return ", ".join(f"{name} {v:.{digits}f}" for name, v in known)
    values = [v for _, v in known]
    lowest = sorted(known, key=lambda item: item[1])[:LOWEST_SHOWN]
    return (
        f"{len(known)} classes: median {float(np.median(values)):.{digits}f}, {sum(v >= 0.5 for v in values)} >= 0.5; "
        "lowest " + ", ".join(f"{name} {v:.{digits}f}" for name, v in lowest)
    )


def per_class_values_text(names: Sequence[str], values: Sequence[float]) -> str:
    """Per-class settings (class weights, output biases) for a log line: each by name, or their range.

    Returns:
        ``"background=0.2, a=1.63"``, or with many classes ``"42 classes, 0.2 (background) to 5 (organ_13)"``.
    """
    pairs = list(zip(names, (float(v) for v in values), strict=True))
    if listed(len(pairs) - 1):  # the background counts as no foreground class
        return ", ".join(f"{name}={v:.3g}" for name, v in pairs)
    low = min(pairs, key=lambda item: item[1])
    high = max(pairs, key=lambda item: item[1])
    return f"{len(pairs)} classes, {low[1]:.3g} ({low[0]}) to {high[1]:.3g} ({high[0]})"


def class_weights_text(classes: Sequence[str], weights: Sequence[float] | None, mode: str) -> str:
    """The loss's class weights for the log, as they act: a sigmoid loss has no background output and weighs the
    foreground classes against each other only, so one foreground class's weight does nothing.

    Returns:
        ``"none"``, ``"background=0.2, a=1.63"`` (softmax), ``"a=1.2, b=0.8 (sigmoid: foreground classes only)"``
        or ``"la=1.83 (no effect: one foreground class)"``.
    """
    if weights is None:
        return "none"
    values = [float(w) for w in weights]
    if mode == "softmax":
        return per_class_values_text(classes, values)
    if len(classes) == 2:
        return f"{classes[1]}={values[1]:.3g} (no effect: one foreground class)"
    return f"{per_class_values_text(classes[1:], values[1:])} ({mode}: foreground classes only)"


def plot_class_curves(ax: Any, x: Sequence[float], curves: Mapping[str, Sequence[float | None]]) -> None:
    """Draws per-class curves (e.g. validation Dice per epoch) on a matplotlib axes.

    Up to :data:`MAX_LISTED` classes: one labelled line per class in its palette colour. More: each class as a
    thin unlabelled grey line, with the median over classes and the band between their 25th and 75th
    percentiles, so the figure shows how the classes spread without a legend entry for each. The caller draws
    the mean and the legend.

    Args:
        ax: A matplotlib axes.
        x: The x values (epochs).
        curves: Values per class name, in class order, each as long as ``x``; ``None`` where unknown.
    """
    values = np.array(
        [[np.nan if v is None else float(v) for v in curve] for curve in curves.values()], dtype=float
    ).reshape(len(curves), len(x))
    xs = np.asarray(x, dtype=float)
    if listed(len(curves)):
        for (name, _), colour, row in zip(curves.items(), class_palette(len(curves)), values, strict=True):
            known = ~np.isnan(row)
            ax.plot(xs[known], row[known], "o-", color=colour, ms=3, lw=1, label=name)
        return
    for k, row in enumerate(values):
        known = ~np.isnan(row)
        label = f"each of {len(curves)} classes" if k == 0 else None
        ax.plot(xs[known], row[known], "-", color="0.6", lw=0.6, alpha=0.5, label=label)
    seen = ~np.isnan(values).all(axis=0)
    if seen.any():
        q25, q50, q75 = np.nanpercentile(values[:, seen], [25, 50, 75], axis=0)
        ax.fill_between(xs[seen], q25, q75, color="tab:blue", alpha=0.2, label="middle half of the classes")
        ax.plot(xs[seen], q50, "-", color="tab:blue", lw=1.5, label="median class")
