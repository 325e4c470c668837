"""Case discovery on real layouts: MSD dataset.json, nnU-Net v1/v2 naming, glob pairing, DICOM study folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import DataConfig
from medseg.data.cases import case_id_for_file, classes_from_labels, discover_cases
from medseg.data.normalization import NormalizationParams
from medseg.data.prepare import prepare_cases
from medseg.errors import ConfigError
from medseg.io import load_volume, save_mask
from medseg.io.orientation import to_canonical


def _sample_ids(sample_hippo: Path, n: int) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]


def test_msd_hippocampus_finds_all_91_cases(hippo_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=hippo_dir))
    listed = json.loads((hippo_dir / "dataset.json").read_text())["training"]
    assert len(spec.cases) == 91 == len(listed)
    assert spec.classes == ["background", "Anterior", "Posterior"]
    assert spec.skipped == []
    assert [c.id for c in spec.cases] == sorted(Path(e["image"]).name[: -len(".nii.gz")] for e in listed)
    for case in spec.cases:
        assert case.image == hippo_dir / "imagesTr" / f"{case.id}.nii.gz"
        assert case.label == hippo_dir / "labelsTr" / f"{case.id}.nii.gz"


def test_msd_max_cases_takes_first_ids(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=3))
    assert [c.id for c in spec.cases] == _sample_ids(sample_hippo, 3)


def test_nnunet_v2_layout_with_channel_suffix(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _sample_ids(sample_hippo, 4)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for cid in ids:
        (tmp_path / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (tmp_path / "labelsTr" / f"{cid}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                "numTraining": len(ids),
                "file_ending": ".nii.gz",
            }
        )
    )
    spec = discover_cases(DataConfig(root=tmp_path))
    assert [c.id for c in spec.cases] == ids
    assert spec.classes == ["background", "Anterior", "Posterior"]
    assert all(c.image.name == f"{c.id}_0000.nii.gz" and c.label.name == f"{c.id}.nii.gz" for c in spec.cases)


def test_nnunet_v1_training_list_resolves_channel_suffix(sample_hippo: Path, tmp_path: Path) -> None:
    # nnU-Net v1 keeps MSD's training list (no suffix) while the files carry _0000.
    ids = _sample_ids(sample_hippo, 2)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for cid in ids:
        (tmp_path / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (tmp_path / "labelsTr" / f"{cid}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    training = [{"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"} for cid in ids]
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "bg", "1": "a", "2": "p"}, "training": training})
    )
    spec = discover_cases(DataConfig(root=tmp_path, layout="msd"))
    assert [c.id for c in spec.cases] == ids
    assert all(c.image.name.endswith("_0000.nii.gz") for c in spec.cases)


def test_label_dict_styles_and_gaps(tmp_path: Path) -> None:
    src = tmp_path / "dataset.json"
    assert classes_from_labels({"1": "a", "0": "bg"}, src) == ["bg", "a"]
    assert classes_from_labels({"bg": 0, "b": 2, "a": 1}, src) == ["bg", "a", "b"]
    with pytest.raises(ConfigError, match="without gaps"):
        classes_from_labels({"0": "bg", "2": "b"}, src)
    with pytest.raises(ConfigError, match="region"):
        classes_from_labels({"background": 0, "whole": [1, 2]}, src)


def test_case_id_strips_ending_and_channel() -> None:
    assert case_id_for_file(Path("x/hippocampus_001_0000.nii.gz")) == "hippocampus_001"
    assert case_id_for_file(Path("scan.nrrd")) == "scan"
    assert case_id_for_file(Path("a_12.mha")) == "a_12"


def test_glob_layout_pairs_by_case_pattern(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _sample_ids(sample_hippo, 3)
    (tmp_path / "scans").mkdir()
    (tmp_path / "masks").mkdir()
    for cid in ids:
        (tmp_path / "scans" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (tmp_path / "masks" / f"{cid}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    (tmp_path / "masks" / "orphan.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{ids[0]}.nii.gz")
    cfg = DataConfig(
        root=tmp_path, layout="glob", image_glob="scans/*.nii.gz", label_glob="masks/*.nii.gz", classes=["bg", "a", "p"]
    )
    spec = discover_cases(cfg)
    assert [c.id for c in spec.cases] == ids
    for case in spec.cases:
        assert case.label == tmp_path / "masks" / f"{case.id}.nii.gz"
    # Without classes the glob layout cannot know the label names.
    with pytest.raises(ConfigError, match=r"data\.classes"):
        discover_cases(cfg.model_copy(update={"classes": None}))
    with pytest.raises(ConfigError, match="image_glob"):
        discover_cases(cfg.model_copy(update={"image_glob": "nothing/*.nii.gz"}))


def test_missing_root_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.root"):
        discover_cases(DataConfig())
    with pytest.raises(ConfigError, match="not a folder"):
        discover_cases(DataConfig(root=tmp_path / "absent"))


def test_dicom_layout_pgbm_studies(pgbm_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=pgbm_dir, layout="dicom", classes=["background", "tumour"]))
    assert len(spec.cases) == 5
    for case in spec.cases:
        assert "T1post" in case.image.name and "MaskTumor" in case.label.name
        assert case.image.parent == case.label.parent
        assert case.id.startswith(case.image.parent.parent.name)
        assert " " not in case.id
    explicit = discover_cases(
        DataConfig(root=pgbm_dir, layout="dicom", classes=["bg", "t"], dicom_image_pattern="*t1POST*")
    )
    assert explicit.cases == spec.cases


def test_dicom_series_with_nifti_mask(tmp_path: Path) -> None:
    series = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"
    if not series.is_dir():
        pytest.skip("sample_data/dicom/HippoCrop_Study1 is absent")
    case_dir = tmp_path / "study_a"
    case_dir.mkdir()
    (case_dir / "t1_series").symlink_to(series, target_is_directory=True)
    image = load_volume(series)
    mask = (image.array > np.percentile(image.array, 90)).astype(np.uint8)
    save_mask(mask, like=image, path=case_dir / "seg_mask.nii.gz")

    spec = discover_cases(DataConfig(root=tmp_path, layout="dicom", classes=["bg", "fg"]))
    assert len(spec.cases) == 1
    case = spec.cases[0]
    assert case.id == "study_a" and case.image.name == "t1_series" and case.label.name == "seg_mask.nii.gz"
    # The NIfTI mask lies on the DICOM series' grid: the pair passes the checks and the labels survive slicing.
    prepared = prepare_cases(spec.cases, NormalizationParams("zscore"), axis=2, n_classes=2)
    assert int(prepared[0].label.sum()) == int(mask.sum())
    # Training data is kept in closest-RAS voxel order (the DICOM is LPS-stored: i and j flip).
    reorientation = to_canonical(image)[1]
    assert reorientation.flip[:2] == (True, True)
    np.testing.assert_array_equal(prepared[0].label_volume, reorientation.apply(mask))
    assert nib.load(case.label).shape == image.shape
