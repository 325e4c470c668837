"""A dataset folder read with the wrong layout: the error says what the folder holds and which layout reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medseg.config import DataConfig
from medseg.data.cases import discover_cases
from medseg.data.layout_hint import layout_hint
from medseg.errors import ConfigError

SAMPLE_DICOM = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the hint reads names only, never a scan's contents


def test_case_folders_point_to_the_folders_layout_with_the_file_names(tmp_path: Path) -> None:
    for case in ("pat1", "pat2"):
        for name in ("Flair.nii.gz", "T1c.nii.gz", "OT.nii.gz", "notes.txt"):
            _touch(tmp_path / case / name)
    hint = layout_hint(tmp_path)
    assert hint.startswith("it holds 2 folder(s) with scan files ('pat1' has Flair.nii.gz, OT.nii.gz, T1c.nii.gz)")
    assert "data.layout: folders" in hint and "data.channel_patterns" in hint and "data.label_pattern" in hint
    assert "notes.txt" not in hint


def test_patient_folders_of_several_cases_each_point_to_the_glob_layout(sample_hippo: Path, tmp_path: Path) -> None:
    """ACDC: each patient folder holds two frames beside their '_gt' labels, a 4D cine and Info.cfg. The hint's
    keys read it: following them word for word pairs every frame with its label."""
    image = sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[0]
    for patient in ("patient001", "patient002"):
        folder = tmp_path / patient
        folder.mkdir()
        for name in ("frame01", "frame01_gt", "frame12", "frame12_gt"):
            shutil.copy(image, folder / f"{patient}_{name}.nii.gz")
        (folder / "Info.cfg").write_text("ED: 1\n")
    hint = layout_hint(tmp_path)
    assert hint.startswith("it holds 2 folder(s) with several cases each, every image beside its label")
    assert (
        "data.layout: glob" in hint
        and "data.label_glob: '*/*_gt.nii.gz'" in hint
        and "data.layout: folders" not in hint
    )
    pattern = hint.split("data.case_pattern: '")[1].split("'")[0]
    spec = discover_cases(
        DataConfig(
            root=tmp_path,
            layout="glob",
            image_glob="*/*.nii.gz",
            label_glob="*/*_gt.nii.gz",
            case_pattern=pattern,
            classes=["background", "a", "b"],
        )
    )
    assert [(c.id, c.label.name if c.label else None) for c in spec.cases] == [
        (f"{p}_{f}", f"{p}_{f}_gt.nii.gz") for p in ("patient001", "patient002") for f in ("frame01", "frame12")
    ]


def test_a_structure_folder_in_the_case_folders_is_named_as_the_label(tmp_path: Path) -> None:
    for case in ("ct_1", "ct_2"):
        _touch(tmp_path / case / "ct.nii.gz")
        for structure in ("liver", "aorta", "spleen"):
            _touch(tmp_path / case / "segmentations" / f"{structure}.nii.gz")
    hint = layout_hint(tmp_path)
    assert "data.layout: folders" in hint
    assert "data.label_pattern (e.g. 'segmentations': its 3 mask files are matched to data.classes by name)" in hint


def test_loose_scans_point_to_the_glob_layout(tmp_path: Path) -> None:
    for i in range(8):
        _touch(tmp_path / f"case{i}_img.nrrd")
    _touch(tmp_path / "README.md")
    hint = layout_hint(tmp_path)
    assert hint.startswith("it holds 8 scan file(s) (case0_img.nrrd, ")
    assert "... (8 in all)" in hint and "data.layout: glob" in hint and "data.image_glob" in hint


def test_dicom_series_below_case_folders_point_to_the_dicom_layout(tmp_path: Path) -> None:
    # TCIA style: case / study / series / files.
    shutil.copytree(SAMPLE_DICOM, tmp_path / "case1" / "study" / "T1post")
    hint = layout_hint(tmp_path)
    assert hint.startswith("it holds 1 folder(s) with DICOM files (e.g. 'case1')")
    assert "data.layout: dicom" in hint


def test_a_folder_with_scan_files_beside_a_dicom_folder_names_both_readings(tmp_path: Path) -> None:
    """As in TotalSegmentator's examples: a DICOM series folder next to NIfTI images and masks."""
    shutil.copytree(SAMPLE_DICOM, tmp_path / "example_ct_dicom")
    for name in ("example_ct_sm.nii.gz", "example_seg.nii.gz"):
        _touch(tmp_path / name)
    hint = layout_hint(tmp_path)
    dicom, glob = hint.split("; ")
    assert dicom.startswith("it holds 1 folder(s) with DICOM files (e.g. 'example_ct_dicom')")
    assert glob.startswith("it also holds 2 scan file(s) (example_ct_sm.nii.gz, example_seg.nii.gz)")
    assert "data.layout: glob" in glob


def test_a_folder_without_scans_says_so(tmp_path: Path) -> None:
    _touch(tmp_path / "docs" / "protocol.pdf")
    assert "no scan files, case folders or DICOM series" in layout_hint(tmp_path)
    assert ".nii.gz" in layout_hint(tmp_path)  # the endings it looked for


def test_the_msd_and_glob_errors_carry_the_hint(tmp_path: Path) -> None:
    """A copy of an MSD config (``layout: msd``) or the glob defaults pointed at a folder of case folders."""
    _touch(tmp_path / "pat1" / "flair.nii.gz")
    _touch(tmp_path / "pat1" / "label.nii.gz")
    with pytest.raises(ConfigError, match=r"dataset\.json' does not exist \(data\.layout msd needs it\); it holds 1"):
        discover_cases(DataConfig(root=tmp_path, layout="msd"))
    with pytest.raises(ConfigError, match=r"matches no files under .*: it holds 1 folder\(s\) with scan files"):
        discover_cases(DataConfig(root=tmp_path, layout="auto", classes=["background", "tumour"]))


def test_the_dicom_layout_error_carries_the_hint(tmp_path: Path) -> None:
    _touch(tmp_path / "pat1" / "t1.nii.gz")
    with pytest.raises(ConfigError, match=r"no folders of DICOM files under .*: it holds 1 folder\(s\) with scan"):
        discover_cases(DataConfig(root=tmp_path, layout="dicom", classes=["background", "tumour"]))
