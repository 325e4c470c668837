"""data.modality: auto reads the modality the data records (dataset.json channel names, the DICOM Modality tag),
so a copy of an MRI config pointed at a CT dataset normalises it as CT; a set modality always wins; DICOM cases
that disagree are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.modality import (
    RecordedModality,
    dataset_modality,
    from_channel_names,
    from_dicom_modalities,
    resolve_modality,
)
from medseg.data.prepare import prepare_training_data
from medseg.errors import ConfigError
from medseg.io import load_volume, save_mask
from tests.conftest import msd_ct_case

SAMPLE_DICOM = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"


def test_channel_names() -> None:
    assert from_channel_names(["CT"]) == RecordedModality("ct", "dataset.json names its channel 'CT'")
    assert from_channel_names(["ct "]).modality == "ct"
    mri = from_channel_names(["MRI"])
    assert mri.modality == "mri" and mri.source == "dataset.json names its channel 'MRI'"
    # Several channels are z-scored each (the CT scheme is fitted on one channel), even with a CT among them.
    assert from_channel_names(["CT", "PET"]).modality == "mri"
    assert from_channel_names([]).modality is None


def test_dicom_modalities() -> None:
    assert from_dicom_modalities({"a": "CT", "b": "ct"}).modality == "ct"
    mr = from_dicom_modalities({"a": "MR"})
    assert mr.modality == "mri" and "'MR'" in mr.source
    assert from_dicom_modalities({"a": ""}).modality is None
    with pytest.raises(ConfigError, match=r"different modalities \(CT in 'b'; MR in 'a'\).*data\.modality"):
        from_dicom_modalities({"a": "MR", "b": "CT"})
    with pytest.raises(ConfigError, match=r"\(none\) in 'a'"):
        from_dicom_modalities({"a": "", "b": "CT"})


def test_resolve() -> None:
    ct = RecordedModality("ct", "dataset.json names its channel 'CT'")
    assert resolve_modality("auto", ct) == ("ct", ct.source)
    assert resolve_modality("mri", ct) == ("mri", "set in the config (data.modality)")  # the config wins
    modality, reason = resolve_modality("auto", None)
    assert modality == "mri" and "record no modality" in reason and "data.modality" in reason
    assert resolve_modality("auto", RecordedModality(None, "dataset.json names no channel"))[0] == "mri"


def test_msd_hippocampus_records_mri(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo))
    assert spec.recorded_modality == RecordedModality("mri", "dataset.json names its channel 'MRI'")


def test_msd_ct_dataset_gets_ct_normalisation_under_auto(totalseg_dir: Path, tmp_path: Path) -> None:
    """A CT dataset in MSD layout (dataset.json modality CT) with the hippocampus config's defaults."""
    msd_ct_case(totalseg_dir, tmp_path, modality={"0": "CT"})
    cfg = DataConfig(root=tmp_path)
    assert cfg.modality == "auto"
    spec = discover_cases(cfg)
    modality, reason = resolve_modality(cfg.modality, spec.recorded_modality)
    assert modality == "ct"
    data = prepare_training_data(
        spec.cases,
        [],
        len(spec.classes),
        PreprocessingConfig(),
        modality=modality,
        modality_reason=reason,
        reader=load_volume,
        classes=spec.classes,
    )
    assert data.params.scheme == "ct" and data.params.clip_low is not None and data.params.clip_low < -100
    assert data.plan is not None
    assert data.plan.reasons["normalization"].startswith("CT (dataset.json names its channel 'CT'): ")
    # The same data under an explicit mri: per-volume z-score, and the plan says it was set.
    assert resolve_modality("mri", spec.recorded_modality) == ("mri", "set in the config (data.modality)")


def _dicom_case(root: Path, name: str, series: Path) -> None:
    case = root / name
    case.mkdir(parents=True)
    (case / "scan_series").symlink_to(series, target_is_directory=True)
    image = load_volume(series)
    mask = (image.array > np.percentile(image.array, 95)).astype(np.uint8)
    save_mask(mask, like=image, path=case / "seg_mask.nii.gz")


def test_dicom_layout_reads_the_modality_tag(
    totalseg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not SAMPLE_DICOM.is_dir():
        pytest.skip("sample_data/dicom/HippoCrop_Study1 is absent")
    ct_root, mr_root, mixed = tmp_path / "ct", tmp_path / "mr", tmp_path / "mixed"
    _dicom_case(ct_root, "ct_case", totalseg_dir / "example_ct_dicom")
    _dicom_case(mr_root, "mr_case", SAMPLE_DICOM)
    classes = ["background", "fg"]
    ct = discover_cases(DataConfig(root=ct_root, layout="dicom", classes=classes))
    assert ct.layout == "dicom" and ct.recorded_modality is None  # discovery reads no Modality tag
    assert dataset_modality("auto", ct) == ("ct", "the DICOM image series' Modality is 'CT'")
    mr = discover_cases(DataConfig(root=mr_root, layout="dicom", classes=classes))
    assert dataset_modality("auto", mr)[0] == "mri"
    mixed.mkdir()
    for name, src in (("ct_case", ct_root), ("mr_case", mr_root)):
        (mixed / name).symlink_to(src / name, target_is_directory=True)
    mixed_spec = discover_cases(DataConfig(root=mixed, layout="dicom", classes=classes))
    assert len(mixed_spec.cases) == 2
    with pytest.raises(ConfigError, match=r"CT in 'ct_case'; MR in 'mr_case'"):
        dataset_modality("auto", mixed_spec)
    # A set modality reads no header and is what the run uses.
    from medseg.io import dicom

    def no_read(folder: Path) -> str:
        raise AssertionError(f"read the Modality of {folder}")

    monkeypatch.setattr(dicom, "series_modality", no_read)
    assert dataset_modality("ct", mixed_spec) == ("ct", "set in the config (data.modality)")
