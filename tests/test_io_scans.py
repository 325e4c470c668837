"""find_scans / case_id_from_path / is_supported_file on a tree built from sample_data copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medseg.errors import UnreadableScanError
from medseg.io import case_id_from_path, find_scans, is_supported_file, load_volume

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
IMAGE = SAMPLE / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
DICOM = SAMPLE / "dicom" / "HippoCrop_Study1"


@pytest.mark.parametrize(
    ("name", "case_id"),
    [
        ("hippocampus_001.nii.gz", "hippocampus_001"),
        ("liver_7_0000.nii.gz", "liver_7"),
        ("CASE.NII.GZ", "CASE"),
        ("scan.nii", "scan"),
        ("scan.v2.nrrd", "scan.v2"),
        ("x_0000.nhdr", "x"),
        ("patient_2019.mha", "patient_2019"),
        ("visit_2019.nii.gz", "visit_2019"),
        ("visit_2019_0000.nii.gz", "visit_2019"),
        ("case_0001.nii.gz", "case_0001"),
        ("img.mhd", "img"),
        ("_0000.nii.gz", "_0000"),
        ("13_HCropVolume", "13_HCropVolume"),
    ],
)
def test_case_id_from_path(name: str, case_id: str) -> None:
    assert case_id_from_path(Path("/data") / name) == case_id


def test_case_id_of_a_dicom_file_is_its_folder() -> None:
    assert case_id_from_path(DICOM / "1.dcm") == "HippoCrop_Study1"
    assert case_id_from_path(DICOM) == "HippoCrop_Study1"


def test_one_table_of_scan_endings() -> None:
    """The endings scan discovery accepts are exactly those the readers dispatch on."""
    from medseg.io.itk import ITK_SUFFIXES
    from medseg.io.nifti import NIFTI_SUFFIXES
    from medseg.io.scans import SUPPORTED_SUFFIXES

    assert sorted(SUPPORTED_SUFFIXES) == sorted(NIFTI_SUFFIXES + ITK_SUFFIXES)
    assert ".nii.gz" in SUPPORTED_SUFFIXES[: SUPPORTED_SUFFIXES.index(".nii")], "longest ending first"


def test_is_supported_file() -> None:
    for name in ("a.nii.gz", "a.nii", "a.NRRD", "a.nhdr", "a.mha", "a.mhd"):
        assert is_supported_file(name), name
    for name in ("a.gz", "a.png", "a.dcm", "a.raw", "a.nii.gz.txt", "README.md"):
        assert not is_supported_file(name), name


def test_find_scans(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b" / "deeper").mkdir(parents=True)
    shutil.copy(IMAGE, root / "a.nii.gz")
    shutil.copy(IMAGE, root / "b" / "deeper" / "c_0000.nii.gz")
    shutil.copytree(DICOM, root / "b" / "series")
    no_ext = root / "noext"
    no_ext.mkdir()
    # DICOM files without an extension are found by their DICM marker.
    for f in list(DICOM.iterdir())[:3]:
        shutil.copy(f, no_ext / f.stem)
    (root / "notes.txt").write_text("not a scan")
    (root / ".a.tmp123.nii.gz").write_bytes(b"")  # an unfinished atomic write
    (root / ".hidden").mkdir()
    shutil.copy(IMAGE, root / ".hidden" / "x.nii.gz")
    (root / "empty").mkdir()
    scans = find_scans(root)
    assert scans == sorted(
        [root / "a.nii.gz", root / "b" / "deeper" / "c_0000.nii.gz", root / "b" / "series", root / "noext"]
    )
    assert [case_id_from_path(p) for p in scans] == ["a", "c", "series", "noext"]
    assert load_volume(scans[2]).shape == (35, 51, 32)
    assert find_scans(root / "a.nii.gz") == [root / "a.nii.gz"]


def test_find_scans_errors(tmp_path: Path) -> None:
    with pytest.raises(UnreadableScanError, match="no such"):
        find_scans(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UnreadableScanError, match="not a folder"):
        find_scans(tmp_path / "x.txt")
