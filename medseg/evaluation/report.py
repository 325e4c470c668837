"""Evaluation report: predictions vs ground truth -> ``metrics.csv``, ``summary.json`` and PNG overlays.

Each case is evaluated in isolation: a prediction that cannot be read, lies on another grid than its ground
truth or holds labels outside the classes is recorded (``error`` column, ``failed_cases`` in the summary) and
the rest go on. Spacing comes from the ground-truth file's geometry.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medseg.data.checks import GEOMETRY_TOLERANCE, grid_corners
from medseg.data.label_grid import place_on_grid
from medseg.data.label_reading import LabelReading
from medseg.errors import BadCaseError, GeometryMismatchError, MedsegError
from medseg.evaluation.overlays import draw_overlay
from medseg.io import case_id_from_path, is_supported_file, load_label, load_volume
from medseg.io.atomic import atomic_write_text
from medseg.io.segmentation import LabelKind, label_kind
from medseg.io.structure_masks import structure_files
from medseg.metrics import FLAGS, METRIC_COLUMNS, NSD_TOLERANCE_MM, case_metrics
from medseg.volume import Volume

log = logging.getLogger(__name__)

#: Columns of ``metrics.csv``; a failed case has one row with ``case`` and ``error`` filled in.
CSV_COLUMNS = ("case", *METRIC_COLUMNS, "error")
#: Metrics summarised per class in ``summary.json`` (``abs_vol_diff_ml`` is derived from ``vol_diff_ml``).
SUMMARY_METRICS = (*(c for c in METRIC_COLUMNS if c not in ("class", "flag")), "abs_vol_diff_ml")

#: Affine tolerance (mm) for "prediction and ground truth are on the same grid": float32 headers written by
#: different tools differ in the 6th digit, a real misregistration is at least a fraction of a voxel.
GRID_ATOL_MM = 1e-3


class EvalPair(NamedTuple):
    """One case to evaluate: its id, the predicted mask, the ground-truth mask, optionally the image."""

    case_id: str
    pred: Path
    gt: Path
    image: Path | None = None


def _files_by_case(
    folder: Path, what: str, *, allow_folders: bool = False, structure_folders: bool = False
) -> dict[str, Path]:
    if not folder.is_dir():
        raise MedsegError(f"{what} folder '{folder}' does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        # Hidden files include the temp files of atomic writes that a killed run may have left.
        if path.name.startswith("."):
            continue
        # A case's labels may be a structure folder (one mask file per structure, named after the case).
        folder_ok = (allow_folders and path.is_dir()) or (structure_folders and structure_files(path) is not None)
        if not (is_supported_file(path) or folder_ok):
            continue
        cid = case_id_from_path(path)
        if cid in found:
            raise MedsegError(
                f"{what} folder '{folder}' has two files for case '{cid}': '{found[cid].name}' and '{path.name}'"
            )
        found[cid] = path
    return found


def match_predictions(pred_dir: str | Path, gt_dir: str | Path, image_dir: str | Path | None = None) -> list[EvalPair]:
    """Pairs predicted masks with ground-truth masks (and optionally images) by case id.

    Case ids come from :func:`medseg.io.case_id_from_path` (``case.nii.gz``, ``case_0000.nii.gz`` -> ``case``).
    The folders are not searched recursively. Predictions without a ground truth are skipped with a warning (they
    cannot be scored); ground-truth cases without a prediction are ignored, since predicting a subset (e.g. the
    validation cases) of a labelled folder is normal. An image (file or DICOM folder) is attached when
    ``image_dir`` has one for the case.

    Args:
        pred_dir: Folder of predicted label masks.
        gt_dir: Folder of ground-truth label masks (files, or structure folders named after their cases).
        image_dir: Optional folder of the images, used as overlay background.

    Returns:
        One :class:`EvalPair` per matched case, sorted by case id.

    Raises:
        MedsegError: A folder is missing, two files in one folder map to the same case id, or no prediction
            matches any ground truth.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds = _files_by_case(pred_dir, "Prediction")
    gts = _files_by_case(gt_dir, "Ground-truth", structure_folders=True)
    images = _files_by_case(Path(image_dir), "Image", allow_folders=True) if image_dir is not None else {}
    unmatched = sorted(set(preds) - set(gts))
    if unmatched:
        log.warning(
            "%d prediction(s) in '%s' have no ground truth in '%s' and are not evaluated: %s",
            len(unmatched),
            pred_dir,
            gt_dir,
            ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""),
        )
    pairs = [EvalPair(cid, preds[cid], gts[cid], images.get(cid)) for cid in sorted(set(preds) & set(gts))]
    if preds and not pairs:
        shown = ", ".join(sorted(preds)[:3]) + (", ..." if len(preds) > 3 else "")
        found = ", ".join(sorted(gts)[:3]) + (", ..." if len(gts) > 3 else "") if gts else "none"
        raise MedsegError(
            f"Nothing to evaluate: no prediction in '{pred_dir}' (case ids {shown}) has a ground truth with the "
            f"same case id in '{gt_dir}' (case ids found: {found}). The ground-truth folder is a flat folder of masks "
            "named <case id> plus a scan ending, not searched recursively; or evaluate against a labelled test set "
            "with data.root (in the data.layout the model was trained with) and no evaluation.ground_truth"
        )
    return pairs


def _labels(volume: Volume, path: Path, n_classes: int, labels: LabelReading) -> np.ndarray:
    """Class indices of a mask file: checked as training checks labels, stored values mapped to classes."""
    problem = labels.problem(volume.array, n_classes)
    if problem:
        raise BadCaseError(f"'{path}' is not a label mask for {n_classes} classes: {problem}")
    return labels.indices(volume.array, n_classes, np.int64)


def _load_pair(pair: EvalPair, classes: Sequence[str], labels: LabelReading) -> tuple[np.ndarray, np.ndarray, Volume]:
    # A DICOM SEG / RTSTRUCT (prediction or ground truth) is read onto the scan's grid; its segments / ROIs, a
    # structure folder's files and a Slicer segmentation's segments are matched to the classes by name, as in
    # training (a planning system's ROI order is not the class order, and it adds body or couch outlines).
    n_classes = len(classes)
    pred_kind, gt_kind = label_kind(pair.pred), label_kind(pair.gt)

    def read(path: Path, kind: LabelKind) -> Volume:
        names = None if kind == "map" else classes
        unlisted, aliases = labels.unlisted_background, labels.alias_map()
        nested = labels.regions is not None  # a region model's SEG / RTSTRUCT holds each region's whole mask
        return load_label(path, pair.image, names, ignore_unlisted=unlisted, aliases=aliases, nested=nested)

    pred_vol, gt_vol = read(pair.pred, pred_kind), read(pair.gt, gt_kind)
    pred_reading, gt_reading = labels.for_kind(pred_kind), labels.for_kind(gt_kind)
    placement = None
    if not pred_vol.same_grid(gt_vol, atol=GRID_ATOL_MM):
        # A ground truth saved in another axis order (or, if allowed, cut to its extent): placed as in training.
        placement = place_on_grid(gt_vol, pred_vol, GEOMETRY_TOLERANCE, fill=gt_reading.ignore or 0)
        if placement is not None and (placement.whole or gt_reading.place_cut):
            problem = placement.problem(pred_vol.shape)
            if problem:
                raise BadCaseError(f"Ground truth '{pair.gt}' against prediction '{pair.pred}': {problem}")
            gt_vol = placement.volume
    if not pred_vol.same_grid(gt_vol, atol=GRID_ATOL_MM):
        cut = placement is not None and not placement.whole
        raise GeometryMismatchError(
            f"Prediction '{pair.pred}' (shape {pred_vol.shape}, spacing {np.round(pred_vol.spacing, 4).tolist()}, "
            f"origin {np.round(pred_vol.origin, 3).tolist()}) is not on the grid of ground truth '{pair.gt}' "
            f"(shape {gt_vol.shape}, spacing {np.round(gt_vol.spacing, 4).tolist()}, "
            f"origin {np.round(gt_vol.origin, 3).tolist()})"
            + _grid_difference(pred_vol, gt_vol)
            + (
                "; the ground truth's voxels are the prediction's, shifted by whole voxels: if it was saved cut to "
                "its extent, set data.place_cut_labels: true"
                if cut
                else ""
            )
        )
    # A prediction marks no voxel unannotated: only the ground truth's ignore label is read as such.
    pred = _labels(pred_vol, pair.pred, n_classes, replace(pred_reading, ignore=None))
    return pred, _labels(gt_vol, pair.gt, n_classes, gt_reading), gt_vol


def _grid_difference(pred: Volume, gt: Volume) -> str:
    """What the message above cannot show: how far apart the grids' corners are, and their directions when those
    differ (an oblique scan against an axis-aligned ground truth has the same shape, spacing and origin)."""
    if pred.shape != gt.shape:
        return ""
    shift = np.linalg.norm(grid_corners(pred.shape, pred.affine) - grid_corners(gt.shape, gt.affine), axis=1)
    text = f"; their grid corners are up to {shift.max():.4g} mm apart"
    if not np.allclose(pred.direction, gt.direction, atol=1e-4):
        text += (
            f", directions {np.round(pred.direction, 4).tolist()} (prediction) and "
            f"{np.round(gt.direction, 4).tolist()} (ground truth)"
        )
    return text


def _finite(values: list[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def _stats(values: list[float]) -> dict[str, float | int | None]:
    a = _finite(values)
    return {
        "mean": float(a.mean()) if a.size else None,
        "median": float(np.median(a)) if a.size else None,
        # Sample standard deviation (ddof=1), as in "mean ± SD" tables; undefined for fewer than two cases.
        "std": float(a.std(ddof=1)) if a.size > 1 else None,
        "n": int(a.size),
    }


def _csv_cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _as_pairs(pairs: Sequence[EvalPair | Sequence[Any]]) -> list[EvalPair]:
    out = []
    for p in pairs:
        if isinstance(p, EvalPair):
            out.append(p)
        else:
            cid, pred, gt, *rest = p
            image = rest[0] if rest else None
            out.append(EvalPair(str(cid), Path(pred), Path(gt), Path(image) if image is not None else None))
    return out


def _overlay_image(pair: EvalPair, gt_vol: Volume) -> np.ndarray | None:
    if pair.image is None:
        return None
    try:
        image = load_volume(pair.image)
    except MedsegError as err:
        try:  # a multi-channel image (e.g. MSD brain MR): its first channel is a fine background
            image = load_volume(pair.image, channel=0)
        except MedsegError:
            log.warning("Overlay of '%s' drawn on the labels: %s", pair.case_id, err)
            return None
    if image.shape != gt_vol.shape:
        log.warning(
            "Overlay of '%s' drawn on the labels: image '%s' has shape %s, ground truth %s",
            pair.case_id,
            pair.image,
            image.shape,
            gt_vol.shape,
        )
        return None
    if not image.same_grid(gt_vol, atol=GRID_ATOL_MM):
        log.warning("Image '%s' and ground truth '%s' differ in their affines", pair.image, pair.gt)
    return np.asarray(image.array)


def _select_overlays(case_dice: dict[str, float], k: int) -> list[tuple[str, int, str]]:
    ranked = sorted(case_dice, key=lambda c: (-case_dice[c], c))
    best = ranked[:k]
    worst = [c for c in reversed(ranked) if c not in best][:k]
    return [("best", i + 1, c) for i, c in enumerate(best)] + [("worst", i + 1, c) for i, c in enumerate(worst)]


def _remove_stale_overlays(out_dir: Path, written: list[str]) -> None:
    # A re-run into the same folder must not leave last run's best/worst PNGs looking like this run's. Only
    # files with the names this module writes are touched.
    folder = out_dir / "overlays"
    if not folder.is_dir():
        return
    keep = {out_dir / rel for rel in written}
    for png in [*folder.glob("best_*.png"), *folder.glob("worst_*.png")]:
        if png not in keep:
            png.unlink()


def evaluate(
    pairs: Sequence[EvalPair | Sequence[Any]],
    classes: Sequence[str],
    out_dir: str | Path,
    overlays: int = 3,
    *,
    labels: LabelReading | None = None,
    skip_both_empty: bool = False,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> dict[str, Any]:
    """Scores predictions against ground truth and writes the report.

    Writes, atomically, into ``out_dir``:

    - ``metrics.csv``: one row per case and foreground class with the columns :data:`CSV_COLUMNS`
      (undefined values are empty cells; a failed case is one row with its ``error``).
    - ``summary.json``: ``n_cases``, ``n_evaluated``, ``n_failed``, ``failed_cases`` (case, error),
      ``mean_dice`` (mean over evaluated cases of the case's mean Dice over foreground classes; a class empty in
      both masks counts as Dice 1, or is left out with ``skip_both_empty``, and a case with no class left is
      then left out too), ``n_in_mean_dice`` (the cases that mean is over), ``both_empty`` (``"one"`` or
      ``"skip"``), ``nsd_tolerance_mm``, and per class the ``mean``/``median``/``std`` (sample SD)/``n`` of each of
      :data:`SUMMARY_METRICS` over the cases where it is defined, plus the count of each flag; ``overlays``
      lists the PNGs relative to ``out_dir``.
    - ``overlays/{best,worst}_NN_<case>.png`` for the ``overlays`` best and worst cases by mean Dice
      (see :func:`medseg.evaluation.overlays.draw_overlay`).

    Args:
        pairs: ``(case_id, pred_path, gt_path[, image_path])`` tuples, e.g. from :func:`match_predictions`.
        classes: Class names by label value, background first.
        out_dir: Output folder (created).
        overlays: How many best and how many worst cases to draw (0 = none).
        labels: How mask files are read (``LabelReading``: the value each class is stored as, e.g. ``[0, 255]``;
            unlisted values; a ground truth cut to its extent); ``None`` = class k as k, others refused. DICOM SEG /
            RTSTRUCT files are matched by segment name instead; a ground truth in another axis order is always placed.
        skip_both_empty: Leave a class absent from both masks out of the Dice and IoU means (nnU-Net's
            convention; partial-field-of-view multi-organ sets) instead of counting it as 1 (BraTS, MSD).
        nsd_tolerance_mm: Tolerance (mm) of the normalised surface Dice column ``nsd``; stored in the summary
            as ``nsd_tolerance_mm``.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ValueError: If ``classes`` has no foreground class or ``overlays`` is negative.
    """
    classes = list(classes)
    reading = labels or LabelReading()
    if len(classes) < 2:
        raise ValueError(f"classes must list background and at least one foreground class, got {classes}")
    if overlays < 0:
        raise ValueError(f"overlays must be >= 0, got {overlays}")
    out_dir = Path(out_dir)
    cases = _as_pairs(pairs)

    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    evaluated: list[str] = []
    case_dice: dict[str, float] = {}
    class_dice: dict[str, dict[str, float]] = {}
    membership = None if reading.regions is None else reading.regions.membership()
    for pair in cases:
        try:
            pred, gt, gt_vol = _load_pair(pair, classes, reading)
            case_rows = case_metrics(
                pred,
                gt,
                gt_vol.spacing,
                classes,
                voxel_mm3=gt_vol.voxel_volume,
                skip_both_empty=skip_both_empty,
                unannotated=reading.ignore is not None,
                membership=membership,
                nsd_tolerance_mm=nsd_tolerance_mm,
            )
        except Exception as err:  # per-case isolation: one bad file must not stop the report
            if not isinstance(err, MedsegError):
                log.exception("Unexpected error evaluating case '%s'", pair.case_id)
            reason = str(err) if isinstance(err, MedsegError) else f"{type(err).__name__}: {err}"
            log.warning("Case '%s' not evaluated: %s", pair.case_id, reason)
            failed.append({"case": pair.case_id, "error": reason})
            rows.append({"case": pair.case_id, "error": reason})
            continue
        for row in case_rows:
            rows.append({"case": pair.case_id, **row, "error": ""})
        evaluated.append(pair.case_id)
        scored = _finite([r["dice"] for r in case_rows])
        if scored.size:  # with skip_both_empty, a case whose classes are all absent from both masks has no Dice
            case_dice[pair.case_id] = float(scored.mean())
        class_dice[pair.case_id] = {r["class"]: r["dice"] for r in case_rows}

    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(col, "")) for col in CSV_COLUMNS])
    atomic_write_text(out_dir / "metrics.csv", buf.getvalue())

    per_class: dict[str, Any] = {}
    for name in classes[1:]:
        crow = [r for r in rows if r.get("class") == name]
        stats: dict[str, Any] = {}
        for metric in SUMMARY_METRICS:
            if metric == "abs_vol_diff_ml":
                stats[metric] = _stats([abs(r["vol_diff_ml"]) for r in crow])
            else:
                stats[metric] = _stats([r[metric] for r in crow])
        # The sparse-annotation flags only where there is an ignore label: summary.json stays as it was otherwise.
        flags = FLAGS if reading.ignore is not None else FLAGS[:3]
        stats["flags"] = {flag: sum(flag in r["flag"].split(";") for r in crow) for flag in flags}
        per_class[name] = stats

    written: list[str] = []
    if overlays and case_dice:
        by_id = {p.case_id: p for p in cases}
        for rank, number, cid in _select_overlays(case_dice, overlays):
            pair = by_id[cid]
            target = out_dir / "overlays" / f"{rank}_{number:02d}_{cid}.png"
            try:
                pred, gt, gt_vol = _load_pair(pair, classes, reading)
                draw_overlay(
                    target,
                    case_id=cid,
                    gt=gt,
                    pred=pred,
                    classes=classes,
                    spacing=gt_vol.spacing,
                    image=_overlay_image(pair, gt_vol),
                    dice_by_class=class_dice[cid],
                    title=f"{cid} - {rank} #{number}, mean Dice {case_dice[cid]:.3f}",
                    membership=membership,
                )
            except Exception as err:  # an overlay is a convenience; its failure must not lose the metrics
                log.warning("Overlay of case '%s' not drawn: %s", cid, err)
                continue
            written.append(target.relative_to(out_dir).as_posix())
    _remove_stale_overlays(out_dir, written)

    summary: dict[str, Any] = {
        "n_cases": len(cases),
        "n_evaluated": len(evaluated),
        "n_failed": len(failed),
        "failed_cases": failed,
        "mean_dice": float(np.mean(list(case_dice.values()))) if case_dice else None,
        "n_in_mean_dice": len(case_dice),
        "both_empty": "skip" if skip_both_empty else "one",
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
        "classes": per_class,
        "overlays": written,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary
