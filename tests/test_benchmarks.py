"""Smoke tests of the benchmark scripts: each runs end to end with the smallest settings, so they don't rot.

The numbers they produce at these settings mean nothing; the tests check that the scripts run as documented,
write the JSON that ``benchmarks/report.py`` renders, and that what they write is internally consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HANG_GUARD_S, REPO

# The smallest model and data that still exercise every code path.
TINY = ["--set", "model.base_features=4", "--set", "training.batch_size=4", "--set", "data.max_cases=4"]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def _run(args: list[str], timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return proc


def _split(root: Path, folds: int, fold: int) -> list[str]:
    from medseg.config import DataConfig
    from medseg.data.cases import discover_cases
    from medseg.data.splits import split_cases

    cases = discover_cases(DataConfig(root=root, max_cases=4)).cases
    return [c.id for c in split_cases(cases, 0.0, 0, folds=folds, fold=fold)[1]]


def _check_quality(result: dict, which: str, expected_val: list[str]) -> None:
    assert result["complete"] is True
    assert result["folds_done"] == [1]
    (fold,) = result["folds"]
    assert fold["val_cases"] == expected_val  # the same split by case as data.folds/data.fold
    ev = fold["evaluations"][which]
    assert sorted(ev["per_case"]) == sorted(expected_val)
    classes = result["classes"][1:]
    for case in ev["per_case"].values():
        assert set(case) == set(classes)
        assert all(0.0 <= case[c]["dice"] <= 1.0 for c in classes)
    # The fold mean is the mean over cases of each case's mean Dice over classes.
    case_means = [sum(v[c]["dice"] for c in classes) / len(classes) for v in ev["per_case"].values()]
    assert ev["mean_dice"] == pytest.approx(sum(case_means) / len(case_means))
    assert result["summary"][which]["mean_dice"]["mean"] == pytest.approx(ev["mean_dice"])


@pytest.mark.slow
def test_quality_medseg_runs_a_fold_and_scores_best_and_last(tmp_path: Path, sample_hippo: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["benchmarks/quality.py", "--config", QUICKSTART, "--data-root", str(sample_hippo), "--folds", "2"]
    args += ["--fold-subset", "1", "--minutes", "0.05", "--set", "training.epochs=1", *TINY]
    args += ["--tag", "smoke", "--out-dir", str(out), "--runs-dir", str(runs)]
    proc = _run(args)
    result = json.loads((out / "quality_smoke.json").read_text())
    expected = _split(sample_hippo, 2, 1)
    _check_quality(result, "best", expected)
    _check_quality(result, "last", expected)
    assert result["config"]["data"]["folds"] == 2 and result["config"]["training"]["max_minutes"] == 0.05
    assert result["overrides"] == ["training.epochs=1", *TINY[1::2]]
    # Masks were written by the predictor for every validation case; checkpoints removed by default.
    masks = sorted(p.name for p in (runs / "quality_smoke" / "fold1" / "eval_best" / "predictions").glob("*.nii.gz"))
    assert masks == [f"{c}.nii.gz" for c in sorted(expected)]
    assert not (runs / "quality_smoke" / "fold1" / "checkpoints").exists()
    assert "mean Dice" in proc.stdout


@pytest.mark.slow
def test_quality_monai_baseline_uses_the_same_folds(tmp_path: Path, sample_hippo: Path) -> None:
    out = tmp_path / "out"
    args = ["benchmarks/quality.py", "--config", QUICKSTART, "--data-root", str(sample_hippo), "--folds", "2"]
    args += ["--fold-subset", "1", "--minutes", "0.02", "--set", "data.max_cases=4", "--baseline", "monai"]
    args += ["--out-dir", str(out), "--runs-dir", str(tmp_path / "runs")]
    _run(args)
    result = json.loads((out / "quality_monai_0.02min.json").read_text())
    assert result["method"] == "monai" and result["primary_evaluation"] == "final"
    _check_quality(result, "final", _split(sample_hippo, 2, 1))
    train = result["folds"][0]["train"]
    assert train["steps"] >= 1 and train["slices_per_s"] > 0


def _speed_args(sample_hippo: Path, tmp_path: Path) -> list[str]:
    args = ["benchmarks/speed.py", "--config", QUICKSTART, "--data-root", str(sample_hippo), *TINY]
    args += ["--modes", "fp32", "--predict-modes", "fp32", "--measure-seconds", "0", "--rounds", "1", "--warmup", "0"]
    args += ["--min-steps", "1", "--max-steps", "1", "--scans", "2", "--bare-scans", "1", "--ckpt-cases", "3"]
    return [*args, "--out", str(tmp_path / "out" / "speed.json"), "--work-dir", str(tmp_path / "work")]


@pytest.mark.slow
def test_speed_measures_the_three_training_paths(tmp_path: Path, sample_hippo: Path) -> None:
    proc = _run([*_speed_args(sample_hippo, tmp_path), "--skip-predict"])
    result = json.loads((tmp_path / "out" / "speed.json").read_text())
    (train,) = result["train"]
    assert train["mode"] == "fp32" and train["precision"] == "float32" and train["channels_last"] is False
    for key in ("a_bare_step", "b_medseg_loop", "c_monai_loader"):
        assert train[key]["steps"] == 1 and train[key]["slices_per_s"] > 0
        assert 0.0 <= train[key]["data_wait_share"] < 1.0
    assert train["b_over_a"] == pytest.approx(
        train["b_medseg_loop"]["slices_per_s"] / train["a_bare_step"]["slices_per_s"]
    )
    assert train["peak_rss_train_mb"] > 50 and result["predict"] == []
    assert "Training (slices/s" in proc.stdout


@pytest.mark.slow
def test_speed_measures_batch_prediction_and_report_renders(tmp_path: Path, sample_hippo: Path) -> None:
    proc = _run([*_speed_args(sample_hippo, tmp_path), "--skip-train", "--predict-rounds", "3"])
    out = tmp_path / "out"
    result = json.loads((out / "speed.json").read_text())
    (pred,) = result["predict"]
    assert pred["scans_ok"] == 2 and pred["scans_failed"] == 0 and pred["bare_scans"] == 1
    assert pred["batch_over_bare"] > 0 and pred["peak_rss_predict_mb"] > 50
    # Three interleaved rounds, each its own ratio of per-scan times; the reported one is their median.
    assert len(pred["rounds"]) == 3
    for r in pred["rounds"]:
        assert r["batch_over_bare"] == pytest.approx((r["batch_seconds"] / 2) / (r["bare_seconds"] / 1))
    assert pred["batch_over_bare"] == pytest.approx(float(np.median([r["batch_over_bare"] for r in pred["rounds"]])))
    assert pred["rss_growth_10_to_end_mb"] is None  # 2 scans: nothing after the 10th to compare
    # Three passes over the folder, each with its peak; the verdict compares the later peaks with the first.
    peaks = pred["rss_peak_passes_mb"]
    assert len(peaks) == 3 and len(pred["rss_end_passes_mb"]) == 3 and min(peaks) > 50
    assert pred["rss_peak_growth_later_passes_mb"] == pytest.approx(max(peaks[1:]) - peaks[0])
    assert result["prediction_model"]["trained_here"] is True
    assert len(list((tmp_path / "work" / "predict_fp32").glob("*.nii.gz"))) == 2
    assert "Batch prediction" in proc.stdout

    sys.path.insert(0, str(REPO))
    from benchmarks import report

    md = tmp_path / "RESULTS.md"
    common = ["--out-dir", str(out), "--output", str(md), "--choices", str(tmp_path / "none")]
    assert report.main(common) == 0
    text = md.read_text()
    assert "## Prediction speed and memory" in text and "| fp32 | float32 | 2 |" in text
    assert report.main([*common, "--check"]) == 0


def _fake_quality(minutes: float, fold_means: list[float]) -> dict:
    # A minimal quality JSON for the renderer: two folds of two classes.
    folds = []
    for i, m in enumerate(fold_means):
        ev = {
            "per_case": {f"c{i}": {"A": {"dice": m, "hd95_mm": 1.0}, "B": {"dice": m, "hd95_mm": 2.0}}},
            "per_class": {n: {"dice_mean": m, "hd95_mm_mean": 1.0} for n in ("A", "B")},
            "mean_dice": m,
        }
        folds.append({"fold": i, "train": {"epochs": 3, "stop_reason": "max_minutes"}, "evaluations": {"best": ev}})
    sys.path.insert(0, str(REPO))
    from benchmarks.quality import summarize

    for f in folds:
        f["classes"] = ["bg", "A", "B"]
    return {
        "benchmark": "quality",
        "tag": f"medseg_{minutes:g}min",
        "method": "medseg",
        "minutes": minutes,
        "n_folds": len(folds),
        "folds_done": list(range(len(folds))),
        "complete": True,
        "classes": ["bg", "A", "B"],
        "primary_evaluation": "best",
        "folds": folds,
        "summary": summarize(folds),
        "machine": {"usable_cpus": 2, "load_avg_1_5_15": [0.1, 0.1, 0.1]},
    }


def test_train_memory_measures_this_tree_and_a_reference_commit(tmp_path: Path, sample_hippo: Path) -> None:
    out = tmp_path / "out"
    args = ["benchmarks/train_memory.py", "--config", QUICKSTART, "--data-root", str(sample_hippo), *TINY]
    args += ["--out-dir", str(out), "--work-dir", str(tmp_path / "work"), "--tag", "smoke"]
    has_git = (REPO / ".git").exists()
    proc = _run([*args, "--ref", "HEAD"] if has_git else args)
    result = json.loads((out / "train_memory_smoke.json").read_text())
    runs = list(result["runs"].values())
    assert len(runs) == (2 if has_git else 1)
    for run in runs:
        # Four cases of the 80/20 split: 3 train + 1 validation, every slice of each at the plan's spacing.
        assert run["cases"] == {"train": 3, "val": 1}
        assert run["peak_rss_mb"] >= run["rss_after_setup_mb"] > 0 and run["data_peak_mb"] > 0
        assert run["bytes_per_voxel"] == pytest.approx(run["data_peak_mb"] * 2**20 / run["dataset_voxels"])
    if has_git:
        assert runs[0]["dataset_voxels"] == runs[1]["dataset_voxels"]
        assert "data peak" in proc.stdout
    from benchmarks.report import render

    assert "`train_memory_smoke.json`" in render(out, None)


def test_report_states_whether_quality_targets_are_met(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.report import render

    (tmp_path / "quality_medseg_10min.json").write_text(json.dumps(_fake_quality(10, [0.88, 0.85])))
    (tmp_path / "quality_medseg_30min.json").write_text(json.dumps(_fake_quality(30, [0.87, 0.86])))
    text = render(tmp_path, None)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `medseg_")}
    assert "0.865 ± 0.021" in rows["`medseg_10min`"] and "| met |" in rows["`medseg_10min`"]
    assert "**missed** by 0.015" in rows["`medseg_30min`"]
    assert "No speed measurement yet" in text
    assert render(tmp_path, None) == text  # deterministic: --check is stable


def test_mixed_spacing_smoke_run_samples_the_ceiling_at_the_coarse_centres_too(
    tmp_path: Path, sample_hippo: Path
) -> None:
    """The smoke run of benchmarks/mixed_spacing.py writes both ceilings and the label-offset Dice per case."""
    out = tmp_path / "out"
    _run(
        [
            str(REPO / "benchmarks" / "mixed_spacing.py"),
            *("--data-root", str(sample_hippo), "--max-cases", "6", "--epochs", "1"),
            *("--set", "model.base_features=4", "--set", "data.val_fraction=0.34"),
            *("--out-dir", str(out), "--runs-dir", str(tmp_path / "runs")),
        ]
    )
    result = json.loads((out / "mixed_spacing_smoke.json").read_text())
    assert result["n_cases"] == 2 and len(result["per_case"]) == 2
    for row in result["per_case"].values():
        assert set(row) == {"ceiling", "plan", "no_plan", "ceiling_centres", "label_offset_dice"}
        # The same labels sampled at points <= 0.25 mm apart: close, but not identical at 1.5 mm.
        assert all(0.9 < d < 1.0 for d in row["label_offset_dice"])
    md = result["mean_dice"]
    assert result["gap_ceiling_centres_minus_plan"] == pytest.approx(md["ceiling_centres"] - md["plan"])
    assert result["label_resampling"] == "nearest"

    # The same model scored against labels resampled one-hot + linear: the plan's predictions are the same masks,
    # only the ground truth and the ceiling move.
    checkpoint = tmp_path / "runs" / "mixed_spacing_smoke" / "checkpoints" / "best.pt"
    _run(
        [
            str(REPO / "benchmarks" / "mixed_spacing.py"),
            *("--data-root", str(sample_hippo), "--max-cases", "6", "--checkpoint", str(checkpoint)),
            *("--labels", "linear", "--tag", "smoke_linear"),
            *("--out-dir", str(out), "--runs-dir", str(tmp_path / "runs")),
        ]
    )
    linear = json.loads((out / "mixed_spacing_smoke_linear.json").read_text())
    assert linear["label_resampling"] == "linear" and set(linear["per_case"]) == set(result["per_case"])
    for case, row in linear["per_case"].items():
        # the label-offset Dice compares the two samplings of the same labels, whichever is the ground truth
        assert row["label_offset_dice"] == pytest.approx(result["per_case"][case]["label_offset_dice"])


def test_at_coarse_centres_samples_maps_like_the_coarse_image(tmp_path: Path, sample_hippo: Path) -> None:
    """A linear ramp along an in-plane axis is sampled exactly (linear interpolation) at the coarse centres, which
    lie at 1.5 i + 0.25 in 1 mm voxel units; nearest-neighbour labels come from round(1.5 i + 0.25) instead."""
    sys.path.insert(0, str(REPO))
    from benchmarks.mixed_spacing import at_coarse_centres
    from medseg.io import load_volume

    like = load_volume(sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[0])
    n0 = like.shape[0]
    ramp = np.broadcast_to(np.arange(n0, dtype=np.float32)[:, None, None], like.shape)
    coarse = at_coarse_centres(ramp[None], like, tmp_path, [1.5, 1.5, 1.0])[0]
    m = round(n0 / 1.5)
    expected = n0 / m * (np.arange(m) + 0.5) - 0.5  # the pixel-area convention, the extent kept exactly
    np.testing.assert_allclose(coarse[1:-1, 0, 0], expected[1:-1], atol=1e-4)


def test_coarse_labels_linear_reads_the_labels_as_a_smooth_field_at_the_coarse_centres(
    tmp_path: Path, sample_hippo: Path
) -> None:
    """``linear`` puts labels on the coarse grid as medseg resamples training labels: the argmax of the one-hot
    maps interpolated linearly at the coarse centres (checked against scipy's ``map_coordinates``). Across a
    straight step both readings put the boundary midway between 1 mm voxels; across a diagonal, nearest neighbour
    keeps the 1 mm staircase and the two differ."""
    from scipy.ndimage import map_coordinates

    sys.path.insert(0, str(REPO))
    from benchmarks.mixed_spacing import coarse_labels
    from medseg.io import load_volume

    like = load_volume(sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[0])
    n0, n1 = like.shape[:2]
    spacing = [1.5, 1.5, 1.0]
    m0, m1 = round(n0 / 1.5), round(n1 / 1.5)
    c0 = n0 / m0 * (np.arange(m0) + 0.5) - 0.5  # coarse centres in 1 mm voxel units (pixel-area convention)
    c1 = n1 / m1 * (np.arange(m1) + 0.5) - 0.5
    for t in range(8, 14):
        step = np.broadcast_to((np.arange(n0) >= t)[:, None, None] * 2, like.shape)
        for how in ("linear", "nearest"):
            coarse = coarse_labels(step, like, tmp_path, spacing, 3, how)
            np.testing.assert_array_equal(coarse[:, 0, 0], np.where(c0 > t - 0.5, 2, 0))

    i, j = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    diagonal = np.broadcast_to(((i + 2 * j) >= n0)[..., None] * 2, like.shape).astype(np.int64)
    linear = coarse_labels(diagonal, like, tmp_path, spacing, 3, "linear")
    nearest = coarse_labels(diagonal, like, tmp_path, spacing, 3, "nearest")
    assert set(np.unique(linear)) == {0, 2}  # no class invented where 0 and 2 meet
    ci, cj = np.meshgrid(c0[1:-1], c1[1:-1], indexing="ij")  # inner centres: no extrapolation at the border
    fg = map_coordinates((diagonal[..., 0] == 2).astype(np.float64), [ci, cj], order=1)
    np.testing.assert_array_equal(linear[1:-1, 1:-1, 0] == 2, fg > 0.5 + 1e-6)
    assert (linear != nearest).any()


def test_mixed_spacing_folds_pool_their_cases_with_a_paired_standard_error(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.report import render

    def fake(cases: dict[str, tuple[float, float]]) -> dict[str, object]:
        per_case = {c: {"ceiling": [ce, ce], "plan": [pl, pl], "no_plan": [0.5, 0.5]} for c, (ce, pl) in cases.items()}
        ceiling = sum(ce for ce, _ in cases.values()) / len(cases)
        plan = sum(pl for _, pl in cases.values()) / len(cases)
        return {
            "coarse_spacing": [1.5, 1.5, 1.0],
            "n_cases": len(cases),
            "mean_dice": {"ceiling": ceiling, "plan": plan, "no_plan": 0.5},
            "gap_ceiling_minus_plan": ceiling - plan,
            "target_gap": 0.005,
            "per_case": per_case,
        }

    (tmp_path / "mixed_spacing_cv_fold0.json").write_text(json.dumps(fake({"a": (0.90, 0.89), "b": (0.80, 0.80)})))
    (tmp_path / "mixed_spacing_cv_fold1.json").write_text(json.dumps(fake({"c": (0.85, 0.85), "d": (0.86, 0.86)})))
    text = render(tmp_path, None)
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in text.splitlines()
        if line.startswith("|") and "mixed_spacing_cv" in line
    }
    # fold 0: gaps 0.01 and 0 -> mean 0.005, SE = std(ddof=1) / sqrt(2) = 0.00707 / 1.414 = 0.005
    assert rows["`mixed_spacing_cv_fold0.json`"][8].strip() == "0.0050 ± 0.0050"
    assert rows["`mixed_spacing_cv_fold0.json`"][3].strip() == "nearest"  # files from before --labels
    pooled = rows["**2 folds pooled** (`mixed_spacing_cv_fold*.json`)"]
    assert pooled[4].strip() == "4" and pooled[8].strip() == "0.0025 ± 0.0025" and pooled[9].strip() == "met"


def test_fold_subsets_merge_into_one_cross_validation(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.merge_folds import merge
    from benchmarks.quality import summarize

    whole = _fake_quality(10, [0.80, 0.84, 0.88])
    first, rest = json.loads(json.dumps(whole)), json.loads(json.dumps(whole))
    first["folds"], rest["folds"] = whole["folds"][:1], whole["folds"][1:]
    merged = merge([rest, first], "cv")
    assert [f["fold"] for f in merged["folds"]] == [0, 1, 2] and merged["fold_subset"] is None
    assert merged["summary"] == summarize(whole["folds"])  # the same summary as one run over all folds
    with pytest.raises(ValueError, match="appears twice"):
        merge([first, first], "cv")
    other = {**rest, "minutes": 30}
    with pytest.raises(ValueError, match="differ in minutes"):
        merge([first, other], "cv")


def test_gpu_check_runs_its_cpu_smoke_run(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py --smoke (what a machine without CUDA runs): every part's code path once on the CPU,
    the CUDA parts skipped with a line saying so, and the stored reference model reproduces its masks exactly."""
    out = tmp_path / "gpu_check.json"
    proc = _run([str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)])
    assert "skipping the CUDA measurements" in proc.stdout
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["ddp"] is None
    assert result["train"] and all(r["steps_per_s"] > 0 and r["smoke"] for r in result["train"])
    assert result["predict"] and all(r["volumes_per_s"] > 0 for r in result["predict"])
    assert {r["scan"] for r in result["agreement"]} == {"hippocampus_001", "hippocampus_003", "hippocrop_dicom"}
    assert all(r["equal_voxels"] == 1.0 for r in result["agreement"])  # CPU fp32: the stored masks exactly


def test_target_status_reads_each_current_figure_from_its_named_result(tmp_path: Path) -> None:
    """Every target names result files that exist in benchmarks/out and gives a verdict from them; a missing file
    is said, not skipped."""
    sys.path.insert(0, str(REPO))
    from benchmarks.common import OUT_DIR
    from benchmarks.target_status import TARGETS, target_status_section

    rows = [line for line in "\n".join(target_status_section(OUT_DIR)).splitlines() if line.startswith("| 1")]
    assert len(rows) == len(TARGETS)
    assert not [r for r in rows if "result missing" in r or "another kind of run" in r]
    for target, row in zip(TARGETS, rows, strict=True):
        verdict = "| met |" in row or "| **missed** |" in row
        assert verdict or not target.files or "no target" in target.target, row
    (quality,) = (t for t in TARGETS if t.files and t.files[0].startswith("quality_hippo_10min_bf16_5fold"))
    result = json.loads((OUT_DIR / quality.files[0]).read_text())
    mean = result["summary"]["best"]["mean_dice"]["mean"]
    assert quality.measure([result]) == (
        f"{mean:.3f} ± {result['summary']['best']['mean_dice']['std']:.3f} (5/5 folds, 10 min each)",
        mean >= 0.885,
    )
    missing = "\n".join(target_status_section(tmp_path))
    assert missing.count("result missing") == sum(bool(t.files) for t in TARGETS)


def test_loss_mode_smoke_run_trains_both_modes_on_the_k_largest_structures(tmp_path: Path, totalseg_dir: Path) -> None:
    """benchmarks/loss_mode.py builds k-structure CT sets and trains each mode on them; report.py renders it."""
    sys.path.insert(0, str(REPO))
    import nibabel as nib

    from benchmarks.loss_mode import make_dataset
    from benchmarks.report import render

    names = make_dataset(totalseg_dir, tmp_path / "k3", 3)
    labels = [np.asarray(nib.load(p).dataobj) for p in sorted((tmp_path / "k3" / "labelsTr").glob("*.nii.gz"))]
    seg = np.asarray(nib.load(totalseg_dir / "example_seg.nii.gz").dataobj)
    sizes = np.bincount(seg.ravel())
    kept = [int(n.split("_")[1]) for n in names[1:]]
    assert len(labels) == 8 and set(np.unique(np.concatenate([lab.ravel() for lab in labels]))) == {0, 1, 2, 3}
    assert sorted(kept) == kept and min(sizes[kept]) >= np.sort(sizes[1:])[-5]  # among the largest of the scan
    out = tmp_path / "out"
    _run(
        [
            str(REPO / "benchmarks" / "loss_mode.py"),
            *("--data", str(totalseg_dir), "--classes", "3", "--epochs", "1", "--tag", "smoke"),
            *("--set", "model.base_features=4", "--out-dir", str(out), "--runs-dir", str(tmp_path / "runs")),
        ]
    )
    result = json.loads((out / "loss_mode_smoke.json").read_text())
    runs = [(r["classes"], r["mode"], r["epochs"], len(r["class_names"])) for r in result["runs"]]
    assert runs == [(3, "sigmoid", 1, 3), (3, "softmax", 1, 3)]
    assert all(0.0 <= r["eval_mean_dice"] <= 1.0 for r in result["runs"])
    assert "| 3 | " in render(out, choices=None)
