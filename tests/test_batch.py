"""Batch prediction over a folder of real scans with broken ones mixed in: isolation, resume, read-only inputs."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import ConfigError
from medseg.inference.batch import (
    discover,
    merge_tables,
    predict_folder,
    probability_paths,
    shard_jobs,
    unique_case_ids,
)
from medseg.inference.predictor import Predictor
from medseg.io import load_volume
from tests.test_inference import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")
    return Predictor.from_checkpoint(path, device="cpu", precision="fp32")


@pytest.fixture
def scan_folder(tmp_path: Path, sample_hippo: Path) -> Path:
    """Real scans (2 NIfTI, 1 DICOM series) plus a corrupt NIfTI, a text file named .nii.gz, an empty series
    folder and a series folder whose only .dcm file is not DICOM."""
    root = tmp_path / "scans"
    (root / "mri").mkdir(parents=True)
    for case in ("hippocampus_001", "hippocampus_003"):
        shutil.copy(sample_hippo / "imagesTr" / f"{case}.nii.gz", root / "mri" / f"{case}.nii.gz")
    shutil.copytree(sample_hippo.parent / "dicom" / "HippoCrop_Study1", root / "dicom" / "Study1" / "13_HCropVolume")
    data = (sample_hippo / "imagesTr" / "hippocampus_004.nii.gz").read_bytes()
    (root / "mri" / "corrupt.nii.gz").write_bytes(data[: len(data) // 2])
    (root / "mri" / "notes.nii.gz").write_text("this is a text file, not an image\n")
    (root / "dicom" / "Study2" / "14_HCropVolume").mkdir(parents=True)
    (root / "dicom" / "Study3" / "11_HCropVolume").mkdir(parents=True)
    (root / "dicom" / "Study3" / "11_HCropVolume" / "1.dcm").write_text("export failed\n")
    (root / "README.txt").write_text("not a scan, ignored\n")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


GOOD = ("hippocampus_001", "hippocampus_003", "13_HCropVolume")
BAD = ("corrupt", "notes", "14_HCropVolume", "11_HCropVolume")


def test_batch_run_isolates_failures_and_resumes(predictor: Predictor, scan_folder: Path, tmp_path: Path) -> None:
    before = _snapshot(scan_folder)
    out = tmp_path / "out"
    result = predict_folder(predictor, scan_folder, out, progress=False)

    assert (result.n_ok, result.n_skipped, result.n_failed) == (3, 0, 4)
    assert result.exit_code == 1
    rows = _rows(out / "predictions.csv")
    assert set(rows) == set(GOOD) | set(BAD)
    for case in GOOD:
        row = rows[case]
        assert row["status"] == "ok" and row["error"] == "" and float(row["seconds"]) >= 0
        mask_path = Path(row["output"])
        assert mask_path == out / f"{case}.nii.gz" and mask_path.is_file()
        scan = load_volume(row["input"])
        mask = load_volume(mask_path)
        assert mask.same_grid(scan), f"{case}: mask not on the scan's grid"
        labels = np.asarray(nib.load(mask_path).dataobj)
        assert labels.dtype == np.uint8
        for k, name in enumerate(predictor.classes[1:], start=1):
            voxels = int((labels == k).sum())
            assert int(row[f"voxels_{name}"]) == voxels
            assert float(row[f"volume_ml_{name}"]) == pytest.approx(voxels * np.prod(scan.spacing) / 1000, abs=1e-3)
    reasons = {case: rows[case]["error"] for case in BAD}
    assert all(rows[c]["status"] == "failed" for c in BAD)
    assert "corrupt.nii.gz" in reasons["corrupt"] and "notes.nii.gz" in reasons["notes"]
    assert "14_HCropVolume" in reasons["14_HCropVolume"] and "no readable scan" in reasons["14_HCropVolume"]
    assert "11_HCropVolume" in reasons["11_HCropVolume"]
    assert not any((out / f"{c}.nii.gz").exists() for c in BAD)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{c}.nii.gz" for c in GOOD), "predictions.csv"])

    stamps = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in GOOD}
    again = predict_folder(predictor, scan_folder, out, progress=False)
    assert (again.n_ok, again.n_skipped, again.n_failed) == (0, 3, 4)
    rows2 = _rows(out / "predictions.csv")
    for case in GOOD:
        assert rows2[case]["status"] == "skipped"
        assert (out / f"{case}.nii.gz").stat().st_mtime_ns == stamps[case], "a finished mask was rewritten"
        # The table of a resumed run still reports the volumes measured in the first run.
        assert rows2[case]["voxels_anterior"] == rows[case]["voxels_anterior"]
    assert _snapshot(scan_folder) == before, "inputs must never be written"


def test_overwrite_recomputes(predictor: Predictor, sample_hippo: Path, tmp_path: Path) -> None:
    scan = sample_hippo / "imagesTr" / "hippocampus_004.nii.gz"
    out = tmp_path / "out"
    assert predict_folder(predictor, [scan], out, progress=False).n_ok == 1
    res = predict_folder(predictor, [scan], out, overwrite=True, progress=False)
    assert (res.n_ok, res.n_skipped) == (1, 0)


def test_probability_maps(predictor: Predictor, sample_hippo: Path, tmp_path: Path) -> None:
    scan = sample_hippo / "imagesTr" / "hippocampus_004.nii.gz"
    out = tmp_path / "out"
    res = predict_folder(predictor, scan, out, save_probabilities=True, output_format="nrrd", progress=False)
    assert res.n_ok == 1
    mask_path = out / "hippocampus_004.nrrd"
    paths = probability_paths(mask_path, "hippocampus_004", predictor.classes, "nrrd")
    assert [p.name for p in paths] == ["hippocampus_004_prob_anterior.nrrd", "hippocampus_004_prob_posterior.nrrd"]
    volume = load_volume(scan)
    probs = predictor.predict_proba(volume)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
    for k, path in enumerate(paths, start=1):
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkFloat32
        assert load_volume(path).same_grid(volume)
        np.testing.assert_allclose(load_volume(path).array, probs[k], atol=1e-6)
        # Sigmoid mode: label k exactly where class k is the most probable foreground and above 0.5.
        arr = sitk.GetArrayFromImage(image)
        assert ((arr > 0.5) >= (mask == k)).all()
    # Deleting one probability map makes the case unfinished: it is redone without touching the mask.
    paths[0].unlink()
    res = predict_folder(predictor, scan, out, save_probabilities=True, output_format="nrrd", progress=False)
    assert res.n_ok == 1 and paths[0].is_file()


def test_unique_names_for_colliding_cases(tmp_path: Path) -> None:
    a = tmp_path / "siteA" / "T1post"
    b = tmp_path / "siteB" / "T1post"
    c = tmp_path / "siteA" / "case1.nii.gz"
    d = tmp_path / "siteA" / "case1.nrrd"
    e = tmp_path / "siteA" / "CASE1.mha"
    ids = unique_case_ids([a, b, c, d, e, tmp_path / "other.nii.gz"])
    assert ids[:2] == ["siteA_T1post", "siteB_T1post"]
    assert len({i.lower() for i in ids}) == 6 and ids[5] == "other"
    assert ids[2:5] == ["case1_nii_gz", "case1_nrrd", "CASE1_mha"]  # one folder: the endings, not the path
    # Two endings in one folder and the same name in another: the endings, then that folder's name.
    f, g, h = tmp_path / "x" / "a.nii.gz", tmp_path / "x" / "a.nrrd", tmp_path / "y" / "a.nii.gz"
    assert unique_case_ids([f, g, h]) == ["a_nii_gz", "a_nrrd", "a"]
    assert unique_case_ids([tmp_path / "x" / "a.nii.gz", tmp_path / "x" / "A.nii.gz"]) == ["a", "A_2"]


def test_output_inside_input_is_refused(predictor: Predictor, scan_folder: Path) -> None:
    with pytest.raises(ConfigError, match="inside the input folder"):
        predict_folder(predictor, scan_folder, scan_folder / "masks", progress=False)
    with pytest.raises(ConfigError, match="does not exist"):
        predict_folder(predictor, scan_folder / "nope", scan_folder.parent / "out", progress=False)


def test_sharded_runs_cover_every_scan_once(predictor: Predictor, scan_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs = discover(scan_folder, out, "nii.gz")
    shards = [shard_jobs(jobs, r, 2) for r in range(2)]
    assert sorted(j.case_id for s in shards for j in s) == sorted(j.case_id for j in jobs)
    parts = []
    for rank in range(2):
        res = predict_folder(
            predictor, scan_folder, out, shard=(rank, 2), csv_name=f"predictions.rank{rank}.csv", progress=False
        )
        parts.append(res.csv_path)
    merged = _rows(merge_tables(parts, out / "predictions.csv"))
    assert set(merged) == set(GOOD) | set(BAD)
    assert sum(r["status"] == "ok" for r in merged.values()) == 3


def test_memory_does_not_grow_with_the_number_of_scans(
    predictor: Predictor, sample_hippo: Path, tmp_path: Path
) -> None:
    # Peak traced (numpy + Python) memory of a 10-scan run is that of a 4-scan run: nothing accumulates per case
    # except its table row.
    import tracemalloc

    scans = []
    for i in range(10):
        dst = tmp_path / "scans" / f"site{i}" / "hippocampus_001.nii.gz"
        dst.parent.mkdir(parents=True)
        shutil.copy(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz", dst)
        scans.append(dst)
    predict_folder(predictor, scans[:1], tmp_path / "warm-up", progress=False)  # lazy imports, caches
    peaks = []
    for n in (4, 10):
        tracemalloc.start()
        res = predict_folder(predictor, scans[:n], tmp_path / f"out{n}", progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert res.n_ok == n
    # Allow half a case's probability map (float32 per class) of jitter; keeping the 6 extra cases' maps would
    # be 6 of them.
    one_case = load_volume(scans[0]).array.size * predictor.n_classes * 4
    assert peaks[1] - peaks[0] < 0.5 * one_case, (peaks, one_case)


def test_batch_masks_equal_predictor_and_a_failed_write_is_isolated(
    predictor: Predictor, sample_hippo: Path, tmp_path: Path
) -> None:
    """Each mask is what ``Predictor.predict`` gives for its scan, rows keep the input order, and a case whose
    write fails is recorded alone while the others complete."""
    names = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_007"]
    scans = [sample_hippo / "imagesTr" / f"{n}.nii.gz" for n in names]
    out = tmp_path / "out"
    (out / "hippocampus_004.nii.gz").mkdir(parents=True)  # a folder where the mask should go: the write fails
    result = predict_folder(predictor, scans, out, overwrite=True, progress=False)

    assert [r["case"] for r in result.rows] == names
    assert [r["status"] for r in result.rows] == ["ok", "ok", "failed", "ok"]
    assert "hippocampus_004" in result.rows[2]["error"] and result.rows[2]["seconds"] != ""
    assert (result.n_ok, result.n_failed) == (3, 1)
    for name, scan in zip(names, scans, strict=True):
        if name == "hippocampus_004":
            assert (out / f"{name}.nii.gz").is_dir()
            continue
        expected = predictor.predict(load_volume(scan)).array
        written = np.asarray(nib.load(out / f"{name}.nii.gz").dataobj)
        assert np.array_equal(written, expected), name
    assert [r["case"] for r in csv.DictReader((out / "predictions.csv").open())] == names


def test_table_rows_are_appended_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first case the table grows by one appended row per case (no rewrite of the rows before), and a
    write that fails part-way leaves the table as it was: whole rows only, as after a kill."""
    import errno
    import os

    from medseg.inference import batch

    columns = batch.column_names(["background", "fg"])
    path = tmp_path / "predictions.csv"
    rows = [{c: f"{c}-{i}" for c in columns} for i in range(3)]
    batch._write_csv(path, rows[:1], columns)
    for row in rows[1:]:
        batch._append_csv_row(path, row, columns)
    assert path.read_text() == batch._csv_text(rows, columns)
    with path.open(newline="") as f:
        assert list(csv.DictReader(f)) == rows
    before = path.read_bytes()
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(batch.os, "write", half_write)
    with pytest.raises(OSError, match="No space left"):
        batch._append_csv_row(path, {c: "x" * 50 for c in columns}, columns)
    assert path.read_bytes() == before


def test_a_batch_rewrites_the_table_only_for_its_first_row(
    predictor: Predictor, sample_hippo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.inference import batch

    rewrites: list[int] = []
    real = batch._write_csv
    monkeypatch.setattr(
        batch, "_write_csv", lambda path, rows, columns: (rewrites.append(len(rows)), real(path, rows, columns))
    )
    scans = sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[:4]
    result = predict_folder(predictor, scans, tmp_path / "out", progress=False)
    assert result.n_ok == 4
    assert rewrites == [1, 4]  # the first case's table, then the final table; cases 2-4 were appended
    with (tmp_path / "out" / "predictions.csv").open(newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"] * 4


def test_slicer_segmentation_output(predictor: Predictor, sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.io.slicer_seg import load_slicer_segmentation

    scan = sample_hippo / "imagesTr" / "hippocampus_004.nii.gz"
    out = tmp_path / "out"
    res = predict_folder(predictor, scan, out, save_probabilities=True, output_format="seg.nrrd", progress=False)
    assert res.n_ok == 1
    assert sorted(p.name for p in out.iterdir() if p.name != "predictions.csv") == [
        "hippocampus_004.seg.nrrd",  # the case id without its .seg.nrrd ending, as for any scan ending
        "hippocampus_004_prob_anterior.nrrd",
        "hippocampus_004_prob_posterior.nrrd",
    ]
    volume = load_volume(scan)
    written = load_slicer_segmentation(out / "hippocampus_004.seg.nrrd", predictor.classes)
    assert written.same_grid(volume, atol=1e-5)
    np.testing.assert_array_equal(written.array, predictor.predict(volume).array)
