"""Per-class results stay readable from 2 classes to a multi-organ set: log, palette, curves, overlays, report."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from scipy import ndimage

from medseg.class_display import (
    MAX_LISTED,
    class_palette,
    class_weights_text,
    per_class_text,
    per_class_values_text,
    plot_class_curves,
)
from medseg.evaluation import draw_overlay
from medseg.evaluation.html_report import render_report
from medseg.evaluation.overlays import PAIRED_CLASSES, class_colours, overlay_axis, pick_slice
from medseg.training.history import TrainingLog

matplotlib.use("Agg")


def test_few_classes_are_listed_by_name_as_before() -> None:
    assert per_class_text({"Anterior": 0.88124, "Posterior": None, "Tail": float("nan")}) == "Anterior 0.8812"
    assert per_class_text({"a": 0.5, "b": 0.25}, digits=2) == "a 0.50, b 0.25"


def test_many_classes_are_summarised_with_the_lowest_named() -> None:
    scores: dict[str, float | None] = {f"organ_{k}": (k % 7) / 6 for k in range(1, 42)}
    scores["organ_20"] = None  # not scored this epoch: left out of the count
    text = per_class_text(scores)
    values = [v for v in scores.values() if v is not None]
    assert text.startswith(f"40 classes: median {np.median(values):.4f}, {sum(v >= 0.5 for v in values)} >= 0.5; ")
    assert text.endswith("lowest organ_7 0.0000, organ_14 0.0000, organ_21 0.0000")  # ties keep class order
    assert len(text) < 120


def test_per_class_settings_are_named_or_given_as_their_range() -> None:
    assert per_class_values_text(["background", "a"], [0.2, 1.634]) == "background=0.2, a=1.63"
    names = ["background", *(f"organ_{k}" for k in range(1, 42))]
    weights = [0.2] * 12 + [5.0] + [1.0] * 29
    assert per_class_values_text(names, weights) == "42 classes, 0.2 (background) to 5 (organ_12)"


def test_class_weights_are_logged_as_they_act() -> None:
    three = ["background", "a", "b"]
    assert class_weights_text(three, [0.2, 1.634, 0.8], "softmax") == "background=0.2, a=1.63, b=0.8"
    assert class_weights_text(three, [0.2, 1.634, 0.8], "sigmoid") == "a=1.63, b=0.8 (sigmoid: foreground classes only)"
    assert class_weights_text(three[:2], [0.2, 1.83], "sigmoid") == "a=1.83 (no effect: one foreground class)"
    assert class_weights_text(three, None, "sigmoid") == "none"


@pytest.mark.parametrize("n", [1, 5, 10, 13, 20, 41, 60, 117])
def test_palette_gives_every_class_its_own_colour(n: int) -> None:
    colours = class_palette(n)
    assert len(colours) == n and len(set(colours)) == n
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)


def test_overlay_colours_are_pairs_for_few_classes_and_one_per_class_for_many() -> None:
    few = [c for k in range(1, PAIRED_CLASSES + 1) for c in class_colours(k, PAIRED_CLASSES)]
    assert len(set(few)) == len(few)  # ground truth and prediction of every class: all different
    many = [class_colours(k, 41) for k in range(1, 42)]
    assert all(gt == pred for gt, pred in many) and len({gt for gt, _ in many}) == 41


def _legend_labels(n_classes: int) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    rng = np.random.default_rng(0)
    curves = {f"c{k}": [float(v) for v in rng.random(5)] for k in range(n_classes)}
    curves["c0"] = [None, None, 0.2, 0.3, 0.4]  # validated from epoch 3 on
    plot_class_curves(ax, [1, 2, 3, 4, 5], curves)
    labels = [t.get_text() for t in ax.legend().get_texts()]
    n_lines = len(ax.lines)
    plt.close(fig)
    return [*labels, str(n_lines)]


def test_curves_name_few_classes_and_show_the_spread_of_many() -> None:
    assert _legend_labels(3) == ["c0", "c1", "c2", "3"]
    many = MAX_LISTED + 1
    assert _legend_labels(many) == [
        f"each of {many} classes",
        "middle half of the classes",
        "median class",
        str(many + 1),  # a thin line per class and the median
    ]


def _contiguous(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    values = np.unique(labels)
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    lut[values] = np.arange(len(values))
    return lut[labels], ["background", *(f"organ_{v}" for v in values[1:])]


def test_overlay_of_a_multi_organ_ct_keeps_the_legend_beside_the_slice(
    tmp_path: Path, totalseg_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = nib.load(totalseg_dir / "example_seg.nii.gz")
    gt, classes = _contiguous(np.asarray(seg.dataobj))
    assert len(classes) - 1 > 2 * PAIRED_CLASSES  # 41 structures
    pred = ndimage.shift(gt, (2, 0, 0), order=0)
    image = np.asarray(nib.load(totalseg_dir / "example_ct_sm.nii.gz").dataobj)
    drawn: list[Figure] = []
    savefig = Figure.savefig

    def keep(fig: Figure, *args: Any, **kwargs: Any) -> None:
        drawn.append(fig)
        savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tight_layout used to warn that the legend did not fit
        path = draw_overlay(
            tmp_path / "ct.png",
            case_id="ct",
            gt=gt,
            pred=pred,
            classes=classes,
            spacing=seg.header.get_zooms(),
            image=image,
            dice_by_class={name: 0.5 for name in classes[1:]},
        )
    (ax,) = drawn[0].axes
    legend = ax.get_legend()
    assert legend is not None
    renderer = drawn[0].canvas.get_renderer()  # type: ignore[attr-defined]
    assert legend.get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1  # beside, not over the slice
    labels = [t.get_text() for t in legend.get_texts()]
    axis = overlay_axis(seg.header.get_zooms())
    index = pick_slice(gt, pred, axis)
    on_slice = np.unique([np.take(gt, index, axis=axis), np.take(pred, index, axis=axis)])
    n_here = int(np.count_nonzero(on_slice))
    # The line styles keyed once, then one entry per class drawn on this slice, with its Dice.
    assert labels[:3] == ["ground truth", "prediction", f"{len(classes) - 1 - n_here} more classes not on this slice"]
    assert labels[3:] == [f"{classes[k]} (Dice 0.500)" for k in on_slice if k > 0]
    # The slice shows many contour colours, not tab10's ten.
    rgb = (imread(str(path))[..., :3] * 255).round().astype(int)
    coloured = rgb[np.ptp(rgb, axis=-1) > 60]
    assert len({tuple(c) for c in coloured}) > 30


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_report_and_curves_of_a_run_with_many_classes(tmp_path: Path) -> None:
    classes = ["background", *(f"organ_{k}" for k in range(1, 42))]
    rng = np.random.default_rng(1)
    history = TrainingLog(tmp_path / "train", classes, tensorboard=False)
    for epoch in range(1, 4):
        lr = 1e-3 * 0.1 ** (epoch - 1)  # 1e-3, 1e-4, 1e-5: the report must not print 0.000 for them
        row: dict[str, object] = {"epoch": epoch, "lr": lr, "train_loss": 1.0 / epoch, "val_dice_mean": 0.4}
        row.update({f"val_dice_{c}": float(rng.random()) for c in classes[1:]})
        row.update({"seconds": 1.0, "slices_per_s": 10.0, "data_wait_share": 0.0, "steps": 3})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history.add(row)
    history.close()
    assert (tmp_path / "train" / "curves.png").is_file()
    metrics = [
        {"case": case, "class": c, "dice": 0.05 if c == "organ_2" else 0.8, "hd95_mm": 1.0, "flag": ""}
        for case in ("a", "b", "c")
        for c in classes[1:]
    ]
    _write_csv(tmp_path / "evaluation" / "metrics.csv", metrics)
    stat = {"mean": 0.8, "median": 0.8, "std": 0.0, "n": 3}
    summary = {
        "mean_dice": 0.78,
        "n_evaluated": 3,
        "classes": {c: {"dice": stat, "hd95_mm": stat, "flags": {"pred_empty": 1}} for c in classes[1:]},
    }
    (tmp_path / "evaluation" / "summary.json").write_text(json.dumps(summary))
    volumes = {f"volume_ml_{c}": (0.0 if c == "organ_3" else 2.5) for c in classes[1:]}
    _write_csv(tmp_path / "predictions" / "predictions.csv", [{"case": "a", "status": "ok", **volumes}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = render_report(tmp_path)
    assert "41 classes sorted by mean Dice: the structures that fail sit at the left" in page
    epochs = page[page.index("Per-epoch table") :].split("</table>")[0]
    for lr in ("0.001", "0.0001", "1e-05"):
        assert f'<td class="num" data-v="{float(lr):.6g}">{lr}</td>' in epochs
    per_class = page[page.index("<h3>Per class</h3>") :].split("</table>")[0]
    assert per_class.count("<tr>") == 1 + 41  # the header and one row per class, not one per class and metric
    assert per_class.count("pred_empty 1") == 41
    # The prediction table: classes found and the foreground volume, not 41 volume columns.
    prediction = page[page.index('id="prediction"') :].split("</table>")[0]
    assert "<th>classes found</th><th>foreground (mL)</th>" in prediction and "organ_1 (mL)" not in prediction
    assert '<td class="num" data-v="40">40</td><td class="num" data-v="100">100' in prediction
