"""report.html and QC on a shortened quickstart run (subprocesses, as a user runs ``pipelines.run``).

One tiny quickstart run (2 epochs, no time budget) is shared by the tests: its report is opened in headless
Chromium (skipped with a reason where Chromium is not installed), and its checkpoint predicts a CT crop (must be
flagged), an ordinary held-out hippocampus scan (must not be), an empty mask (flagged), and, with its QC reference
removed, scans whose QC columns stay empty with a note.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medseg.runner import RunLayout
from tests.conftest import HIPPO, SAMPLE_DATA, SHARED_DATA
from tests.test_pipeline import QUICKSTART, SHORT, read_csv, run_cli

SPLEEN_CT = SHARED_DATA / "MSD_Spleen_crop" / "spleen_2_img.nii.gz"
#: A Task04 case that is not in sample_data (so the quickstart model never saw it); its qc_score was 0.2 (far
#: below the flagging level of 1) with this shortened run's model.
HELD_OUT = HIPPO / "imagesTr" / "hippocampus_008.nii.gz"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qc_quickstart")
    proc = run_cli(QUICKSTART, *(a for s in SHORT for a in ("--set", s)), "--set", f"output.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (apt-get install -y chromium; .ci/run installs it)")


def test_the_run_writes_a_self_contained_report(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for section in ("run", "training", "prediction", "evaluation"):
        assert f'id="{section}"' in page, section
    # Self-contained: no remote script, style, font or picture; every picture embedded.
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    # The run section: command, versions, one time per stage.
    assert "python -m pipelines.run" in page and "torch" in page
    for stage in ("train", "predict", "evaluate"):
        assert f"<td>{stage}</td>" in page
    # The prediction table carries the QC columns of predictions.csv for each validation case.
    rows = read_csv(RunLayout(run_dir).predictions_csv)
    assert {"qc_flags", "qc_score"} <= set(rows[0])
    assert all(r["qc_score"] != "" for r in rows)
    for r in rows:
        assert r["case"] in page
    assert "Best and worst cases" in page and "Postprocessing decided" in page
    assert not list(run_dir.glob(".report*")), "temp file of the atomic write left behind"


def test_the_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    url = (run_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run(
        [*common, "--window-size=1000,1600", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert shot.is_file(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # the page logs nothing: any console line is an error or a warning

    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    inked = (pixels < 200).mean()  # share of non-background pixels: text, tables, plots
    assert inked > 0.02 and pixels.std() > 10, (inked, pixels.std())

    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert 'data-report-js="ok"' in dom.stdout  # the sorting script ran to its end without an error
    assert not [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(not (SPLEEN_CT.is_file() and HELD_OUT.is_file()), reason="needs ../shared/data (CT crop, Task04)")
def test_a_ct_crop_is_flagged_and_an_ordinary_held_out_scan_is_not(run_dir: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SPLEEN_CT, scans / SPLEEN_CT.name)
    shutil.copy(HELD_OUT, scans / HELD_OUT.name)
    out = tmp_path / "out"
    ckpt = RunLayout(run_dir).best_checkpoint
    proc = run_cli(
        QUICKSTART, "--stage", "predict", "--checkpoint", ckpt, "--input", scans, "--output", out, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["case"]: r for r in read_csv(out / "predictions" / "predictions.csv")}
    ct, mri = rows["spleen_2_img"], rows["hippocampus_008"]
    assert "intensities unlike the training scans" in ct["qc_flags"]
    assert "spacing outside the training range" in ct["qc_flags"]
    assert float(ct["qc_score"]) >= 1
    assert mri["qc_flags"] == "" and 0 <= float(mri["qc_score"]) < 1, mri
    page = (out / "report.html").read_text(encoding="utf-8")
    # Flagged scans come first in the report's table.
    assert page.index("spleen_2_img") < page.index("hippocampus_008")


def test_an_empty_prediction_is_flagged(run_dir: Path) -> None:
    from medseg.inference import Predictor
    from medseg.io import load_volume

    predictor = Predictor.from_checkpoint(RunLayout(run_dir).best_checkpoint, device="cpu")
    volume = load_volume(SAMPLE_DATA / "hippocampus" / "imagesTr" / "hippocampus_089.nii.gz")
    mask, probs, qc = predictor.predict_with_qc(volume)
    assert qc.score is not None and qc.flags is not None
    empty = predictor.assess_quality(volume, np.zeros_like(np.asarray(mask.array)), probs)
    assert "empty mask (no foreground voxel)" in (empty.flags or [])
    assert empty.score == 100.0


def test_batch_qc_without_the_probabilities_scores_as_qc_with_them(run_dir: Path) -> None:
    """The batch's QC (slab-by-slab labels and float16 confidence maps, no class probabilities kept) gives the
    flags of QC on the whole probability volume and its score to 1e-2."""
    from medseg.inference import Predictor
    from medseg.io import load_volume

    predictor = Predictor.from_checkpoint(RunLayout(run_dir).best_checkpoint, device="cpu")
    for name in ("hippocampus_089", "hippocampus_001"):
        volume = load_volume(SAMPLE_DATA / "hippocampus" / "imagesTr" / f"{name}.nii.gz")
        mask, _, with_probs = predictor.predict_with_qc(volume)
        slab_mask, maps = predictor.predict_with_confidence(volume)
        np.testing.assert_array_equal(slab_mask.array, mask.array)
        with_maps = predictor.assess_quality(volume, np.asarray(slab_mask.array), None, confidence=maps)
        assert with_maps.flags == with_probs.flags
        assert with_maps.score == pytest.approx(with_probs.score, abs=1e-2)
        for key in ("mean_confidence", "mean_entropy"):
            assert with_maps.features[key] == pytest.approx(with_probs.features[key], abs=1e-3)


def test_a_checkpoint_without_a_qc_reference_predicts_with_empty_qc_and_a_note(run_dir: Path, tmp_path: Path) -> None:
    import torch

    ckpt = torch.load(RunLayout(run_dir).best_checkpoint, weights_only=True)
    assert ckpt["qc_reference"]["n_train"] == 11
    del ckpt["qc_reference"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    scan = SAMPLE_DATA / "hippocampus" / "imagesTr" / "hippocampus_089.nii.gz"
    out = tmp_path / "out"
    proc = run_cli(QUICKSTART, "--stage", "predict", "--checkpoint", old, "--input", scan, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = read_csv(out / "predictions" / "predictions.csv")
    assert row["status"] == "ok" and row["qc_flags"] == "" and row["qc_score"] == ""
    assert "no QC reference" in proc.stderr
    assert "No QC for these scans" in (out / "report.html").read_text(encoding="utf-8")


def test_a_long_batch_rewrites_its_table_and_report_as_it_goes(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.evaluation.html_report import ReportUpdater
    from medseg.inference import Predictor, batch

    predictor = Predictor.from_checkpoint(RunLayout(run_dir).best_checkpoint, device="cpu")
    scans = sorted((SAMPLE_DATA / "hippocampus" / "imagesTr").glob("*.nii.gz"))[:3]
    out = tmp_path / "run"
    update = ReportUpdater(out, min_seconds=0.0)
    seen: list[tuple[int, bool]] = []

    def on_flush() -> None:
        update()
        table = read_csv(out / "predictions" / "predictions.csv")
        page = (out / "report.html").read_text(encoding="utf-8")
        seen.append((len(table), all(r["case"] in page for r in table)))

    batch.predict_folder(predictor, scans, out / "predictions", progress=False, on_flush=on_flush)
    assert [n for n, _ in seen] == [1, 2, 3]  # the table (and the report) grew one scan at a time
    assert all(in_page for _, in_page in seen)
