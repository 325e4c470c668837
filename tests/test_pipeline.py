"""``python -m pipelines.run`` end to end on the shipped sample data, as a user runs it (subprocesses).

One shortened quickstart run (a tiny model, a few epochs) is shared by the slow tests below: it is checked for
the whole output layout, masks on their scans' exact grids, and a Dice bound; its checkpoint then predicts a
DICOM series folder and a folder with a broken scan in it (exit status 1).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import load_config
from medseg.runner import (
    RunLayout,
    evaluation_pairs,
    order_stages,
    prepare_output,
    run_logging,
    validation_cases,
)
from tests.conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SAMPLE_DICOM = REPO / "sample_data" / "dicom"

#: The shortened quickstart (its tiny UNet for 2 of its 5 epochs): about a minute on 2 CPU cores. No time
#: budget, so the learning-rate schedule, and with it the Dice, do not depend on the machine's speed.
SHORT = [
    "training.epochs=2",
    "training.max_minutes=null",
    "evaluation.overlays=1",
]
#: Mean validation Dice the shortened run must beat: it reached 0.77-0.79 in three runs, the full quickstart
#: ~0.84; an empty or random mask scores ~0 on these small structures.
SHORT_RUN_MIN_DICE = 0.5


def run_cli(*args: str | Path, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # One intra-op thread: on a busy 2-core machine (CI, parallel jobs) torch's second thread makes every small
    # op wait for a descheduled peer, measured 10-20x slower; on an idle one a single thread costs little here.
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_grid_nifti(mask_path: Path, scan_path: Path) -> None:
    """The mask has the scan's shape, affine and qform/sform codes (what viewers use to place it)."""
    mask, scan = nib.load(str(mask_path)), nib.load(str(scan_path))
    assert mask.shape == scan.shape
    np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-5)
    assert int(mask.header["qform_code"]) == int(scan.header["qform_code"])
    assert int(mask.header["sform_code"]) == int(scan.header["sform_code"])
    np.testing.assert_allclose(mask.header.get_zooms()[:3], scan.header.get_zooms()[:3], atol=1e-6)
    assert np.issubdtype(mask.get_data_dtype(), np.integer)


# ------------------------------------------------------------------------------------ the shared training run


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], float]:
    out = tmp_path_factory.mktemp("quickstart")
    start = time.perf_counter()
    proc = run_cli(QUICKSTART, *(a for s in SHORT for a in ("--set", s)), "--set", f"output.dir={out}")
    return out, proc, time.perf_counter() - start


@pytest.mark.slow
def test_quickstart_writes_the_documented_layout(quickstart_run: tuple) -> None:
    out, proc, seconds = quickstart_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"shortened quickstart: {seconds:.0f} s")  # information only: no test decides on the time it took
    layout = RunLayout(out)
    for path in (
        layout.checkpoints / "best.pt",
        layout.checkpoints / "last.pt",
        layout.train / "metrics.csv",
        layout.train / "curves.png",
        layout.predictions_csv,
        layout.evaluation / "metrics.csv",
        layout.evaluation / "summary.json",
        layout.resolved_config,
        layout.log_file,
    ):
        assert path.is_file() and path.stat().st_size > 0, f"missing {path}"
    assert list(layout.evaluation.rglob("*.png")), "no overlay picture"
    assert not list(out.rglob(".*.tmp")) and not [p for p in out.rglob(".*") if p.is_file()], "temp files left"

    # The resolved config is the one that ran: overrides applied, and it loads back.
    resolved = load_config(layout.resolved_config)
    assert resolved.training.epochs == 2 and resolved.training.max_minutes is None and resolved.output.dir == out

    # Masks: one per validation case, named <case_id>.nii.gz, listed as ok in predictions.csv.
    cfg = load_config(QUICKSTART, [*SHORT, f"output.dir={out}"])
    val = validation_cases(cfg)
    assert len(val) == 3
    rows = {r["case"]: r for r in read_csv(layout.predictions_csv)}
    assert set(rows) == {c.id for c in val}
    for case in val:
        assert rows[case.id]["status"] == "ok", rows[case.id]
        assert Path(rows[case.id]["output"]) == layout.predictions / f"{case.id}.nii.gz"
        assert_same_grid_nifti(layout.predictions / f"{case.id}.nii.gz", case.image)

    # The log file has the stages; the console showed no traceback.
    log_text = layout.log_file.read_text()
    for stage in ("train", "predict", "evaluate"):
        assert f"stage {stage} done" in log_text
    assert "Traceback" not in proc.stderr
    # A fresh run had no masks to replace, so it does not say it replaced them.
    assert "are replaced" not in log_text


@pytest.mark.slow
def test_quickstart_evaluation_beats_the_dice_bound(quickstart_run: tuple) -> None:
    out, proc, _ = quickstart_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["n_evaluated"] == 3 and summary["n_failed"] == 0
    assert summary["mean_dice"] > SHORT_RUN_MIN_DICE, summary["mean_dice"]
    rows = read_csv(out / "evaluation" / "metrics.csv")
    assert {r["class"] for r in rows} == {"Anterior", "Posterior"}
    assert len(rows) == 3 * 2


@pytest.mark.slow
def test_evaluate_stage_alone_rescores_the_predictions(quickstart_run: tuple) -> None:
    out, proc, _ = quickstart_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((out / "evaluation" / "summary.json").read_text())["mean_dice"]
    again = run_cli(QUICKSTART, "--stage", "evaluate", "--output", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "evaluation" / "summary.json").read_text())["mean_dice"] == pytest.approx(before)
    # evaluation.both_empty reaches the report; both hippocampus parts are in every case, so nothing is left out.
    skip = run_cli(QUICKSTART, "--stage", "evaluate", "--output", out, "--set", "evaluation.both_empty=skip")
    assert skip.returncode == 0, skip.stderr[-3000:]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["both_empty"] == "skip" and summary["mean_dice"] == pytest.approx(before)
    assert run_cli(QUICKSTART, "--stage", "evaluate", "--output", out).returncode == 0  # as the fixture left it


@pytest.mark.slow
def test_batch_predict_of_a_dicom_folder(quickstart_run: tuple, tmp_path: Path) -> None:
    out, proc, _ = quickstart_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    import medseg

    target = tmp_path / "dicom_run"
    res = run_cli(
        QUICKSTART,
        "--stage",
        "predict",
        "--checkpoint",
        out / "checkpoints" / "best.pt",
        "--input",
        SAMPLE_DICOM,
        "--output",
        target,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    series = SAMPLE_DICOM / "HippoCrop_Study1"
    mask_path = target / "predictions" / "HippoCrop_Study1.nii.gz"
    assert mask_path.is_file()
    scan, mask = medseg.load_volume(series), medseg.load_volume(mask_path)
    assert mask.shape == scan.shape
    np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-4)
    assert set(np.unique(mask.array)) <= {0, 1, 2}
    assert not list(series.glob("*.nii*")), "nothing is written into an input folder"


@pytest.mark.slow
def test_a_broken_scan_fails_alone_with_exit_status_1(quickstart_run: tuple, tmp_path: Path) -> None:
    out, proc, _ = quickstart_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    scans = tmp_path / "scans"
    scans.mkdir()
    good = sorted((REPO / "sample_data" / "hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copy(good, scans / good.name)
    (scans / "broken.nii.gz").write_bytes(good.read_bytes()[:300])  # a truncated download
    res = run_cli(
        QUICKSTART,
        "--stage",
        "predict",
        "--checkpoint",
        out / "checkpoints" / "best.pt",
        "--input",
        scans,
        "--output",
        tmp_path / "run",
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    rows = {r["case"]: r for r in read_csv(tmp_path / "run" / "predictions" / "predictions.csv")}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert rows[good.name.removesuffix(".nii.gz")]["status"] == "ok"
    assert_same_grid_nifti(tmp_path / "run" / "predictions" / good.name, good)


# ------------------------------------------------------------------------------------ fast: the composition


def test_stages_run_in_pipeline_order() -> None:
    assert order_stages(["evaluate", "train", "evaluate"]) == ["train", "evaluate"]


def test_validation_cases_match_the_split_of_the_data(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.data.cases import discover_cases
    from medseg.data.splits import split_cases

    cfg = load_config(QUICKSTART, [f"output.dir={tmp_path}"])
    spec = discover_cases(cfg.data)
    _, expected = split_cases(spec.cases, cfg.data.val_fraction, cfg.data.seed)
    assert [c.id for c in validation_cases(cfg)] == [c.id for c in expected]
    # Deterministic: the predict stage recomputes the same cases the train stage validated on.
    assert validation_cases(cfg) == validation_cases(cfg)


def test_evaluation_uses_only_the_masks_listed_in_predictions_csv(sample_hippo: Path, tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, [f"output.dir={tmp_path}"])
    layout = prepare_output(cfg, ["evaluate"])
    layout.predictions.mkdir()
    labels = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))
    listed, stale = labels[0], labels[1]
    for label in (listed, stale):  # ground-truth files stand in for predicted masks
        shutil.copy(label, layout.predictions / label.name)
    cid = listed.name.removesuffix(".nii.gz")
    layout.predictions_csv.write_text(
        "case,input,output,status,error,seconds\n"
        f"{cid},{sample_hippo / 'imagesTr' / listed.name},{layout.predictions / listed.name},ok,,0.1\n"
    )
    pairs, classes, reading = evaluation_pairs(cfg)
    assert classes == ["background", "Anterior", "Posterior"]
    assert reading.values is None  # stored as 0, 1, 2
    assert reading.ignore is None
    assert reading.regions is None
    assert [(p.case_id, p.gt, p.image) for p in pairs] == [(cid, listed, sample_hippo / "imagesTr" / listed.name)]


def test_run_logging_writes_the_log_file_and_cleans_up(tmp_path: Path) -> None:
    logger = logging.getLogger("medseg.some_module")
    handlers_before = list(logging.getLogger("medseg").handlers)
    with run_logging(tmp_path / "medseg.log"):
        logger.info("hello from a stage")
        logger.error("printed elsewhere", extra={"file_only": True})
    assert "hello from a stage" in (tmp_path / "medseg.log").read_text()
    assert "printed elsewhere" in (tmp_path / "medseg.log").read_text()
    assert logging.getLogger("medseg").handlers == handlers_before


def test_a_copied_run_folder_evaluates_its_own_masks(sample_hippo: Path, tmp_path: Path) -> None:
    """predictions.csv records absolute mask paths; a copy of a run folder (or a moved one) must score the masks
    in its own predictions/, not the original's."""
    from medseg.config import config_from_dict
    from medseg.runner import run_stages
    from tests.conftest import run_tiny

    first = run_tiny(tmp_path / "run", root=str(sample_hippo))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    rows = list(csv.DictReader((copy / "predictions" / "predictions.csv").open()))
    victim = rows[0]["case"]
    # The copy's mask of one case becomes its ground truth: only the copy's own masks score Dice 1 there.
    shutil.copy(sample_hippo / "labelsTr" / f"{victim}.nii.gz", copy / "predictions" / f"{victim}.nii.gz")
    cfg = config_from_dict(
        {
            "data": {"root": str(sample_hippo), "val_fraction": 0.34, "seed": 0},
            "evaluation": {"overlays": 0},
            "output": {"dir": str(copy)},
        },
        base_dir=Path.cwd(),
    )
    summary = run_stages(cfg, ["evaluate"]).evaluate
    scored = [r for r in csv.DictReader((copy / "evaluation" / "metrics.csv").open()) if r["case"] == victim]
    assert summary["n_evaluated"] == first.evaluate["n_evaluated"]
    assert [float(r["dice"]) for r in scored] == [1.0, 1.0]
    before = csv.DictReader((tmp_path / "run" / "evaluation" / "metrics.csv").open())
    original = [r for r in before if r["case"] == victim]
    assert min(float(r["dice"]) for r in original) < 1.0  # a one-epoch model's mask
    # Moved away from where predictions.csv says its masks are: still scored.
    shutil.rmtree(tmp_path / "run")
    assert run_stages(cfg, ["evaluate"]).evaluate["n_evaluated"] == first.evaluate["n_evaluated"]


def test_a_case_folder_without_its_label_is_named_with_what_it_holds(sample_hippo: Path, tmp_path: Path) -> None:
    """KiTS-style folders (case_00000/imaging.nii.gz + segmentation.nii.gz), one segmentation missing: the message
    names the case folder and its files, not "rename the files" as for a flat label folder."""
    from medseg.config import config_from_dict
    from medseg.errors import ConfigError
    from medseg.runner import discover_labelled_cases

    images = sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[:3]
    for n, image in enumerate(images):
        case = tmp_path / "kits" / f"case_{n:05d}"
        case.mkdir(parents=True)
        shutil.copy(image, case / "imaging.nii.gz")
        if n != 1:
            shutil.copy(sample_hippo / "labelsTr" / image.name, case / "segmentation.nii.gz")
    data = {
        "root": str(tmp_path / "kits"),
        "layout": "folders",
        "channel_patterns": ["imaging*"],
        "label_pattern": "segmentation*",
        "classes": ["background", "a", "b"],
    }
    cfg = config_from_dict({"data": data}, base_dir=Path.cwd())
    with pytest.raises(ConfigError, match=r"1 of 3 case folders .* 'case_00001' holds imaging\.nii\.gz\): fix data"):
        discover_labelled_cases(cfg)


def test_nothing_to_evaluate_says_what_pairs_and_the_other_way(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.config import config_from_dict
    from medseg.errors import MedsegError
    from medseg.runner import run_stages
    from tests.conftest import run_tiny

    run_tiny(tmp_path / "run", root=str(sample_hippo))
    nested = tmp_path / "truth" / "case_folders"  # ground truth one level down: not searched recursively
    nested.mkdir(parents=True)
    for label in sorted((sample_hippo / "labelsTr").glob("*.nii.gz")):
        shutil.copy(label, nested / label.name)
    cfg = config_from_dict(
        {
            "data": {"root": str(sample_hippo), "val_fraction": 0.34, "seed": 0},
            "evaluation": {"overlays": 0, "ground_truth": str(tmp_path / "truth")},
            "output": {"dir": str(tmp_path / "run")},
        },
        base_dir=Path.cwd(),
    )
    with pytest.raises(MedsegError, match=r"Nothing to evaluate: no prediction in .*case ids hippocampus_") as err:
        run_stages(cfg, ["evaluate"])
    assert "(case ids found: case_folders)" in str(err.value)  # the sub-folder, read as a structure folder
    assert "a flat folder of masks named <case id> plus a scan ending, not searched recursively" in str(err.value)
    assert "evaluate against a labelled test set with data.root" in str(err.value)
