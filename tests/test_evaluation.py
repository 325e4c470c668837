"""medseg.evaluation: the report end to end on real hippocampus labels, failures, spacing, overlays."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.evaluation import EvalPair, draw_overlay, evaluate, match_predictions
from medseg.evaluation.report import CSV_COLUMNS
from medseg.io import load_volume
from medseg.metrics import case_metrics, hd95

CLASSES = ["background", "Anterior", "Posterior"]


def _save_like(array: np.ndarray, like: Path, path: Path, affine: np.ndarray | None = None) -> Path:
    img = nib.load(str(like))
    out = nib.Nifti1Image(array.astype(np.uint8), img.affine if affine is None else affine, img.header)
    out.set_data_dtype(np.uint8)
    nib.save(out, str(path))
    return path


def _build(root: Path, msd: Path, labels: list[Path]) -> dict[str, Path]:
    """gt/, images/ (nnU-Net ``_0000`` names) and pred/ with real labels and perturbed predictions.

    Case 0 is predicted perfectly, case 1 eroded, case 2 shifted, the last case's prediction is a corrupt file,
    and pred/ has one stray prediction without ground truth.
    """
    dirs = {name: root / name for name in ("gt", "pred", "images")}
    for d in dirs.values():
        d.mkdir()
    for k, lab in enumerate(labels):
        cid = lab.name[: -len(".nii.gz")]
        shutil.copy(lab, dirs["gt"] / lab.name)
        shutil.copy(msd / "imagesTr" / lab.name, dirs["images"] / f"{cid}_0000.nii.gz")
        gt = np.asarray(nib.load(str(lab)).dataobj)
        if k == 0:
            pred = gt
        elif k == 1:
            pred = np.where(ndimage.binary_erosion(gt > 0), gt, 0)
        elif k == 2:
            pred = ndimage.shift(gt, (2, 1, 1), order=0)
        else:
            (dirs["pred"] / lab.name).write_bytes(b"\x1f\x8b this is not a gzip stream, let alone NIfTI")
            continue
        _save_like(pred, lab, dirs["pred"] / lab.name)
    _save_like(np.asarray(nib.load(str(labels[0])).dataobj), labels[0], dirs["pred"] / "stray_case.nii.gz")
    return dirs


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _grey_levels(png: Path) -> tuple[int, float]:
    """Distinct grey levels and their std in the central part of a PNG (inside the axes, away from the text).

    An MR slice gives dozens of levels and a large std; a label map a handful; a blank canvas one, std 0.
    """
    rgb = imread(str(png))[..., :3]
    h, w = rgb.shape[:2]
    centre = rgb[int(0.3 * h) : int(0.7 * h), int(0.3 * w) : int(0.7 * w)]
    values = centre[..., 0][np.ptp(centre, axis=-1) < 1e-6]  # grey pixels only: contours are coloured
    return len(np.unique(np.round(values * 255))), float(values.std()) if values.size else 0.0


@pytest.fixture(params=["sample_data", "shared"])
def msd_cases(request: pytest.FixtureRequest) -> tuple[Path, list[Path]]:
    """An MSD-layout hippocampus folder and four of its labels: sample_data/ always, ../shared/data when present.

    The shared variant takes the last four cases, which the sample subset (the first cases) does not cover.
    """
    if request.param == "shared":
        root = request.getfixturevalue("hippo_dir")
        return root, sorted((root / "labelsTr").glob("*.nii.gz"))[-4:]
    root = request.getfixturevalue("sample_hippo")
    return root, sorted((root / "labelsTr").glob("*.nii.gz"))[:4]


def test_evaluate_end_to_end_on_real_labels(
    tmp_path: Path, msd_cases: tuple[Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    dirs = _build(tmp_path, *msd_cases)
    with caplog.at_level(logging.WARNING):
        pairs = match_predictions(dirs["pred"], dirs["gt"], dirs["images"])
    assert "stray_case" in caplog.text  # a prediction without ground truth is reported, not scored
    assert [p.case_id for p in pairs] == sorted(p.name[: -len(".nii.gz")] for p in dirs["gt"].iterdir())
    assert all(p.image is not None and p.image.name.endswith("_0000.nii.gz") for p in pairs)
    ids = [p.case_id for p in pairs]

    out = tmp_path / "report"
    summary = evaluate(pairs, CLASSES, out, overlays=1)

    # metrics.csv: every scored case x class, plus one row for the corrupt prediction.
    rows = _read_csv(out / "metrics.csv")
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == 3 * 2 + 1
    failed = [r for r in rows if r["error"]]
    assert [r["case"] for r in failed] == [ids[3]]
    assert str(dirs["pred"] / f"{ids[3]}.nii.gz") in failed[0]["error"]

    # Values equal the metrics computed directly on the files (CSV keeps 6 significant digits).
    for cid in ids[:3]:
        gt_vol = load_volume(dirs["gt"] / f"{cid}.nii.gz")
        pred = np.asarray(load_volume(dirs["pred"] / f"{cid}.nii.gz").array)
        expected = case_metrics(pred, np.asarray(gt_vol.array), gt_vol.spacing, CLASSES)
        got = [r for r in rows if r["case"] == cid]
        assert [r["class"] for r in got] == CLASSES[1:]
        for e, g in zip(expected, got, strict=True):
            for col in ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "vol_pred_ml", "vol_gt_ml", "vol_diff_ml"):
                assert float(g[col]) == pytest.approx(e[col], rel=1e-5, abs=1e-9), (cid, col)
    perfect = [r for r in rows if r["case"] == ids[0]]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95_mm"]) == 0.0 for r in perfect)

    # summary.json: what the function returned, counts, per-class stats over the three scored cases.
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["nsd_tolerance_mm"] == 1.0 and "nsd" in summary["classes"][CLASSES[1]]
    # A wider surface tolerance (evaluation.surface_tolerance_mm) is what the nsd column is scored at.
    wide = evaluate(pairs, CLASSES, tmp_path / "report_3mm", overlays=0, nsd_tolerance_mm=3.0)
    assert wide["nsd_tolerance_mm"] == 3.0
    for cid in ids[:3]:
        gt_vol = load_volume(dirs["gt"] / f"{cid}.nii.gz")
        pred = np.asarray(load_volume(dirs["pred"] / f"{cid}.nii.gz").array)
        expected = case_metrics(pred, np.asarray(gt_vol.array), gt_vol.spacing, CLASSES, nsd_tolerance_mm=3.0)
        got = [r for r in _read_csv(tmp_path / "report_3mm" / "metrics.csv") if r["case"] == cid]
        assert [float(r["nsd"]) for r in got] == pytest.approx([e["nsd"] for e in expected], rel=1e-5)
    assert (summary["n_cases"], summary["n_evaluated"], summary["n_failed"]) == (4, 3, 1)
    assert summary["failed_cases"][0]["case"] == ids[3]
    case_means = [np.mean([float(r["dice"]) for r in rows if r["case"] == c]) for c in ids[:3]]
    assert summary["mean_dice"] == pytest.approx(np.mean(case_means), abs=1e-5)
    for name in CLASSES[1:]:
        dices = [float(r["dice"]) for r in rows if r["class"] == name]
        stats = summary["classes"][name]["dice"]
        assert stats["n"] == 3
        assert stats["mean"] == pytest.approx(np.mean(dices), abs=1e-5)
        assert stats["median"] == pytest.approx(np.median(dices), abs=1e-5)
        assert stats["std"] == pytest.approx(np.std(dices, ddof=1), abs=1e-5)
        assert summary["classes"][name]["flags"] == {"both_empty": 0, "pred_empty": 0, "gt_empty": 0}

    # Overlays: the best (perfect) and the worst case by mean Dice, drawn on the real image.
    worst = ids[int(np.argmin(case_means))]
    assert summary["overlays"] == [f"overlays/best_01_{ids[0]}.png", f"overlays/worst_01_{worst}.png"]
    for rel in summary["overlays"]:
        levels, std = _grey_levels(out / rel)
        assert levels > 30 and std > 0.05, f"{rel} does not show the MR image ({levels} grey levels, std {std})"
    # Atomic writes leave no temp files behind; inputs are untouched.
    assert not [p for p in out.rglob(".*")]
    assert sorted(p.name for p in dirs["pred"].iterdir()) == sorted(
        [*(f"{c}.nii.gz" for c in ids), "stray_case.nii.gz"]
    )


def test_spacing_is_taken_from_the_files(tmp_path: Path, sample_hippo: Path) -> None:
    lab = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]
    gt = np.asarray(nib.load(str(lab)).dataobj)
    pred = ndimage.shift(gt, (0, 0, 1), order=0)
    aniso = np.diag([1.0, 1.0, 3.0, 1.0])
    pairs = []
    for tag, affine in (("iso", np.eye(4)), ("aniso", aniso)):
        (tmp_path / tag).mkdir()
        g = _save_like(gt, lab, tmp_path / tag / "gt.nii.gz", affine)
        p = _save_like(pred, lab, tmp_path / tag / "pred.nii.gz", affine)
        pairs.append((tag, p, g))  # plain tuples are accepted too
    evaluate(pairs, CLASSES, tmp_path / "out", overlays=0)
    rows = {(r["case"], r["class"]): r for r in _read_csv(tmp_path / "out" / "metrics.csv")}
    for name in CLASSES[1:]:
        index = CLASSES.index(name)
        iso, ani = rows[("iso", name)], rows[("aniso", name)]
        assert float(ani["hd95_mm"]) == pytest.approx(hd95(pred == index, gt == index, (1, 1, 3)), rel=1e-5)
        assert float(ani["hd95_mm"]) > float(iso["hd95_mm"])
        assert float(ani["assd_mm"]) > float(iso["assd_mm"])
        assert float(ani["vol_gt_ml"]) == pytest.approx(3 * float(iso["vol_gt_ml"]), rel=1e-5)
        assert ani["dice"] == iso["dice"]  # voxel overlap does not depend on spacing
    assert not (tmp_path / "out" / "overlays").exists()


def test_bad_cases_are_recorded_not_fatal(tmp_path: Path, sample_hippo: Path) -> None:
    labels = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[:4]
    gt_arrays = [np.asarray(nib.load(str(p)).dataobj) for p in labels]
    moved = nib.load(str(labels[0])).affine.copy()
    moved[:3, 3] += 5.0  # same voxels, origin 5 mm away: not the ground truth's grid
    bad_geom = _save_like(gt_arrays[0], labels[0], tmp_path / "moved.nii.gz", moved)
    bad_label = _save_like(np.where(gt_arrays[1] > 0, 5, 0), labels[1], tmp_path / "label5.nii.gz")
    pairs = [
        EvalPair("moved", bad_geom, labels[0]),
        EvalPair("label5", bad_label, labels[1]),
        EvalPair("missing", tmp_path / "nope.nii.gz", labels[2]),
        EvalPair("good", labels[3], labels[3]),
    ]
    summary = evaluate(pairs, CLASSES, tmp_path / "out", overlays=2)
    errors = {f["case"]: f["error"] for f in summary["failed_cases"]}
    assert set(errors) == {"moved", "label5", "missing"}
    assert str(bad_geom) in errors["moved"] and str(labels[0]) in errors["moved"] and "grid" in errors["moved"]
    assert "label values 5 are outside the 3 classes" in errors["label5"]
    assert "nope.nii.gz" in errors["missing"]
    assert summary["n_evaluated"] == 1 and summary["mean_dice"] == 1.0
    # One scored case: drawn once, as the best, not again as the worst.
    assert summary["overlays"] == ["overlays/best_01_good.png"]
    # A re-run into the same folder replaces the previous run's overlays instead of adding to them.
    stale = tmp_path / "out" / "overlays" / "worst_01_old_case.png"
    stale.write_bytes(b"old")
    again = evaluate(pairs[-1:], CLASSES, tmp_path / "out", overlays=2)
    assert again["overlays"] == ["overlays/best_01_good.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["best_01_good.png"]


def test_empty_classes_are_flagged_and_counted(tmp_path: Path, sample_hippo: Path) -> None:
    lab = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]
    gt = np.asarray(nib.load(str(lab)).dataobj)
    only_anterior = np.where(gt == 1, 1, 0)
    g = _save_like(only_anterior, lab, tmp_path / "gt.nii.gz")
    p_missing = _save_like(np.zeros_like(gt), lab, tmp_path / "empty.nii.gz")
    p_same = _save_like(only_anterior, lab, tmp_path / "same.nii.gz")
    summary = evaluate([("empty", p_missing, g), ("same", p_same, g)], CLASSES, tmp_path / "out", overlays=0)
    rows = {(r["case"], r["class"]): r for r in _read_csv(tmp_path / "out" / "metrics.csv")}
    assert rows[("empty", "Anterior")]["flag"] == "pred_empty"
    assert rows[("empty", "Anterior")]["dice"] == "0"
    assert rows[("empty", "Anterior")]["hd95_mm"] == ""  # undefined distance: an empty cell, not a number
    assert rows[("empty", "Posterior")]["flag"] == "both_empty"
    assert rows[("same", "Posterior")]["dice"] == "1"
    ant, post = summary["classes"]["Anterior"], summary["classes"]["Posterior"]
    assert ant["flags"]["pred_empty"] == 1 and post["flags"]["both_empty"] == 2
    assert ant["hd95_mm"]["n"] == 1 and ant["hd95_mm"]["std"] is None  # defined for one case only
    assert post["hd95_mm"] == {"mean": None, "median": None, "std": None, "n": 0}
    assert ant["dice"]["mean"] == pytest.approx(0.5)


def test_both_empty_skip_leaves_absent_classes_out_of_the_means(tmp_path: Path, sample_hippo: Path) -> None:
    """``skip_both_empty`` (``evaluation.both_empty: skip``): a class absent from both masks has no Dice (an empty
    cell, still flagged), class and case means are over the classes present, a case with none is left out of the
    mean Dice; a false positive on an absent class still scores 0. Checked against Dice computed by hand."""
    from medseg.evaluation.html_report import _both_empty_note

    lab = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]
    gt = np.asarray(nib.load(str(lab)).dataobj)
    only_anterior = np.where(gt == 1, 1, 0)
    eroded = np.where(ndimage.binary_erosion(gt == 1), 1, 0)
    g = _save_like(only_anterior, lab, tmp_path / "gt.nii.gz")
    none = _save_like(np.zeros_like(gt), lab, tmp_path / "none.nii.gz")
    p_eroded = _save_like(eroded, lab, tmp_path / "eroded.nii.gz")
    p_stray = _save_like(np.where(gt == 2, 2, only_anterior), lab, tmp_path / "stray.nii.gz")  # posterior: FP
    pairs = [("eroded", p_eroded, g), ("stray", p_stray, g), ("nothing", none, none)]

    def by_hand(p: np.ndarray, t: np.ndarray) -> float:
        return float(2 * (p & t).sum() / (p.sum() + t.sum()))

    d_eroded = by_hand(eroded == 1, only_anterior == 1)
    one = evaluate(pairs, CLASSES, tmp_path / "one", overlays=0)
    skip = evaluate(pairs, CLASSES, tmp_path / "skip", overlays=0, skip_both_empty=True)

    # one: posterior of "eroded" and both classes of "nothing" count 1
    assert one["both_empty"] == "one" and one["n_in_mean_dice"] == 3
    assert one["mean_dice"] == pytest.approx(((d_eroded + 1) / 2 + (1 + 0) / 2 + 1) / 3)
    assert one["classes"]["Posterior"]["dice"]["mean"] == pytest.approx((1 + 0 + 1) / 3)
    # skip: only the pairs where either mask has the class
    assert skip["both_empty"] == "skip" and skip["n_evaluated"] == 3 and skip["n_in_mean_dice"] == 2
    assert skip["mean_dice"] == pytest.approx((d_eroded + (1 + 0) / 2) / 2)
    assert skip["classes"]["Posterior"]["dice"] == {"mean": 0.0, "median": 0.0, "std": None, "n": 1}
    assert skip["classes"]["Anterior"]["dice"]["n"] == 2
    flags = {"both_empty": 2, "pred_empty": 0, "gt_empty": 1}
    assert skip["classes"]["Posterior"]["flags"] == one["classes"]["Posterior"]["flags"] == flags
    rows = {(r["case"], r["class"]): r for r in _read_csv(tmp_path / "skip" / "metrics.csv")}
    assert rows[("eroded", "Posterior")]["flag"] == "both_empty"
    assert rows[("eroded", "Posterior")]["dice"] == rows[("eroded", "Posterior")]["iou"] == ""
    assert rows[("stray", "Posterior")]["dice"] == "0"  # a false positive is still scored
    # the report says which convention its means follow
    assert "count as Dice 1" in _both_empty_note(one) and "3 case/class pair(s)" in _both_empty_note(one)
    assert "left out of the Dice means" in _both_empty_note(skip) and "1 case(s) had no class left" in (
        _both_empty_note(skip)
    )
    assert _both_empty_note({"classes": {"a": {"flags": {"both_empty": 0}}}}) == ""


def test_overlay_without_image_draws_the_labels(tmp_path: Path, sample_hippo: Path) -> None:
    vol = load_volume(sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0])
    gt = np.asarray(vol.array)
    pred = ndimage.shift(gt, (1, 0, 0), order=0)
    with_labels = draw_overlay(
        tmp_path / "labels.png", case_id="c", gt=gt, pred=pred, classes=CLASSES, spacing=vol.spacing
    )
    image = load_volume(sample_hippo / "imagesTr" / vol.source.name).array  # type: ignore[union-attr]
    with_image = draw_overlay(
        tmp_path / "image.png", case_id="c", gt=gt, pred=pred, classes=CLASSES, spacing=vol.spacing, image=image
    )
    levels_l, std_l = _grey_levels(with_labels)
    levels_i, _ = _grey_levels(with_image)
    assert std_l > 0.05  # the label map is visible as grey levels behind the contours
    assert levels_i > 30 and levels_l <= len(CLASSES) + 2
    # Contours are drawn in colour (not grey): ground truth and prediction of both classes.
    rgb = imread(str(with_labels))[..., :3]
    assert np.count_nonzero(np.ptp(rgb, axis=-1) > 0.3) > 200


def test_match_predictions_errors(tmp_path: Path, sample_hippo: Path) -> None:
    lab = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(MedsegError, match="does not exist"):
        match_predictions(tmp_path / "nothing", tmp_path / "gt")
    shutil.copy(lab, tmp_path / "pred" / "other.nii.gz")
    shutil.copy(lab, tmp_path / "gt" / lab.name)
    with pytest.raises(MedsegError, match="Nothing to evaluate: no prediction"):
        match_predictions(tmp_path / "pred", tmp_path / "gt")
    shutil.copy(lab, tmp_path / "pred" / lab.name)
    shutil.copy(lab, tmp_path / "pred" / lab.name.replace(".nii.gz", "_0000.nii.gz"))
    with pytest.raises(MedsegError, match="two files"):
        match_predictions(tmp_path / "pred", tmp_path / "gt")
    (tmp_path / "pred" / lab.name.replace(".nii.gz", "_0000.nii.gz")).unlink()
    (tmp_path / "pred" / "predictions.csv").write_text("case\n")  # non-image files are ignored
    pairs = match_predictions(tmp_path / "pred", tmp_path / "gt")
    assert pairs == [EvalPair(lab.name[: -len(".nii.gz")], tmp_path / "pred" / lab.name, tmp_path / "gt" / lab.name)]
    assert not math.isnan(evaluate(pairs, CLASSES, tmp_path / "out", overlays=0)["mean_dice"])
