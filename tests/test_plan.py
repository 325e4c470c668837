"""The plan on real data: slice axis, target spacing, patch and batch decided from the training cases, with reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import Case, discover_cases
from medseg.data.fingerprint import FingerprintAccumulator
from medseg.data.plan import MAX_PATCH_PIXELS, STEP_PIXELS, Plan, auto_target_spacing, make_plan, write_plan
from medseg.data.prepare import prepare_training_data
from medseg.errors import CheckpointError, ConfigError
from tests.conftest import SHARED_DATA

LA2018 = SHARED_DATA / "LA2018_UAMT"
SPLEEN = SHARED_DATA / "MSD_Spleen_crop"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs real data at {path} (../shared/data is not part of a fresh clone)")
    return path


def _plan_for(root: Path, n: int, **pre: object) -> tuple[Plan, list]:
    spec = discover_cases(DataConfig(root=root))
    data = prepare_training_data(
        spec.cases[:n], [], len(spec.classes), PreprocessingConfig(**pre), classes=spec.classes
    )
    assert data.plan is not None
    return data.plan, data.train


def test_la2018_plan_isotropic_and_patch_within_budget() -> None:
    plan, train = _plan_for(_require(LA2018), 8)
    assert plan.slice_axis == 2 and "ties go to the last axis" in plan.reasons["slice_axis"]
    assert plan.target_spacing == pytest.approx((0.625, 0.625, 0.625), abs=1e-6)
    assert "0 of 8 training cases differ" in plan.reasons["target_spacing"]
    # LA2018 slices (~190 x 143) exceed the per-patch budget: the patch shrinks, the batch fills the step.
    h, w = plan.patch_size
    assert h * w <= MAX_PATCH_PIXELS and h % 16 == 0 and w % 16 == 0
    assert "shrunk to the pixel budget" in plan.reasons["patch_size"]
    assert "a coarser preprocessing.target_spacing lets it see more" in plan.reasons["patch_size"]
    assert plan.batch_size * h * w <= STEP_PIXELS
    # Not resampled: the prepared volumes keep the files' shapes.
    assert all(p.shape == nib.load(p.case.image).shape for p in train)
    fp = plan.fingerprint
    assert fp is not None and fp["n_cases"] == 8
    fg_share = 1.0 - fp["class_frequencies"]["background"]
    assert 0.03 < fg_share < 0.10  # PROVENANCE.md: foreground 3.5-9 % of voxels
    assert len(fp["cases"]) == 8 and all(len(c["class_voxels"]) == 2 for c in fp["cases"])


def test_hippocampus_plan_matches_todays_settings(hippo_dir: Path) -> None:
    # The auto plan must reproduce the settings of the 0.889 CV runs: patch 48 x 64 (padded largest slice), batch 32.
    plan, _ = _plan_for(hippo_dir, 91)
    assert plan.patch_size == (48, 64)
    assert plan.batch_size == 32
    assert plan.slice_axis == 2
    assert plan.target_spacing == pytest.approx((1.0, 1.0, 1.0))
    vols = plan.fingerprint["class_volumes_ml"]  # type: ignore[index]
    assert set(vols) == {"Anterior", "Posterior"} and all(0.3 < v["median"] < 3.0 for v in vols.values())


def test_spleen_ct_plan_is_anisotropic_with_ct_percentiles() -> None:
    root = _require(SPLEEN)
    case = Case("spleen_2", root / "spleen_2_img.nii.gz", root / "spleen_2_label.nii.gz")
    data = prepare_training_data([case], [], 2, PreprocessingConfig(), modality="ct", classes=["background", "spleen"])
    plan = data.plan
    assert plan is not None
    assert plan.slice_axis == 2
    assert plan.target_spacing is not None and plan.target_spacing[2] == pytest.approx(5.0)
    assert plan.target_spacing[0] == pytest.approx(0.7949, abs=1e-3)
    assert "nnU-Net's rule" in plan.reasons["target_spacing"]
    assert plan.normalization[0]["scheme"] == "ct" and "CT" in plan.reasons["normalization"]
    hu = plan.fingerprint["intensities"][0]["percentiles"]  # type: ignore[index]
    assert -200 < hu["0.5"] < hu["50"] < hu["99.5"] < 400  # spleen foreground HU, not air


def test_ct_intensities_without_a_recorded_modality_get_a_hint_not_a_decision(totalseg_dir: Path) -> None:
    """NIfTI records no modality, so auto decides not-CT; where every training scan reaches air in Hounsfield units
    (TotalSegmentator's CT, -1100) the plan says so and names data.modality: ct. Its MR example (min -47), the
    hippocampus MRI (min 0) and an explicit normalisation get no hint; with data.modality: ct there is nothing
    to hint."""
    from medseg.data.modality import HOUNSFIELD_AIR_AT_MOST, hounsfield_hint

    def plan_of(image: str, label: str, n_classes: int, preprocessing: PreprocessingConfig, **kw: Any) -> Plan:
        case = Case(image, totalseg_dir / f"{image}.nii.gz", totalseg_dir / f"{label}.nii.gz")
        data = prepare_training_data([case], [], n_classes, preprocessing, **kw)
        assert data.plan is not None
        return data.plan

    ct = plan_of("example_ct_sm", "example_seg", 118, preprocessing=PreprocessingConfig())
    assert ct.normalization[0]["scheme"] == "zscore"  # the decision stays what the files record
    assert "look like CT in Hounsfield units (every training scan reaches -1100 or lower" in ct.reasons["normalization"]
    assert "set data.modality: ct" in ct.reasons["normalization"]
    assert ct.fingerprint["cases"][0]["scan_min"] == [-1100.0]  # type: ignore[index]
    mr = plan_of("example_mr_sm", "example_seg_mr", 50, preprocessing=PreprocessingConfig())
    assert "Hounsfield" not in mr.reasons["normalization"]
    explicit = plan_of("example_ct_sm", "example_seg", 118, preprocessing=PreprocessingConfig(normalization="zscore"))
    assert "Hounsfield" not in explicit.reasons["normalization"]
    as_ct = plan_of("example_ct_sm", "example_seg", 118, preprocessing=PreprocessingConfig(), modality="ct")
    assert as_ct.normalization[0]["scheme"] == "ct" and "Hounsfield" not in as_ct.reasons["normalization"]
    # one scan that does not reach air is enough to say nothing
    assert hounsfield_hint([-1024.0, -3024.0]) is not None
    assert hounsfield_hint([-1024.0, HOUNSFIELD_AIR_AT_MOST + 1]) is None and hounsfield_hint([]) is None


def test_hippocampus_mri_gets_no_hounsfield_hint(sample_hippo: Path) -> None:
    plan, _ = _plan_for(sample_hippo, 4)
    assert "Hounsfield" not in plan.reasons["normalization"]
    assert all(c["scan_min"][0] >= 0 for c in plan.fingerprint["cases"])  # type: ignore[index]


def test_auto_target_spacing_takes_low_percentile_on_coarse_axis_only_with_few_voxels() -> None:
    spacings = np.array([[0.8, 0.8, s] for s in (2.5, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)])
    few = np.array([[512, 512, 40]] * 10)
    target, reason = auto_target_spacing(spacings, few)
    assert target[2] == pytest.approx(np.percentile(spacings[:, 2], 10)) and "10th percentile" in reason
    many = np.array([[512, 512, 400]] * 10)  # coarse but not few voxels: the median stays
    target, reason = auto_target_spacing(spacings, many)
    assert target[2] == pytest.approx(5.0) and reason == "median spacing of the training cases"


def test_overrides_win_and_are_explained(sample_hippo: Path) -> None:
    plan, train = _plan_for(sample_hippo, 3, target_spacing=[2.0, 2.0, 1.0], patch_size=[32, 32])
    assert plan.target_spacing == (2.0, 2.0, 1.0) and "set in the config" in plan.reasons["target_spacing"]
    assert plan.patch_size == (32, 32) and "set in the config" in plan.reasons["patch_size"]
    # In-plane axes (0, 1) halved, slice axis 2 untouched; spacing updated for the metrics.
    for p in train:
        assert p.spacing == pytest.approx((2.0, 2.0, 1.0), rel=0.1)
        assert p.label is not None and set(np.unique(p.label)) <= {0, 1, 2}
    with pytest.raises(ConfigError, match=r"multiples of preprocessing\.pad_multiple"):
        _plan_for(sample_hippo, 3, patch_size=[30, 32])


def test_plan_json_round_trip(tmp_path: Path) -> None:
    acc = FingerprintAccumulator(["background", "fg"])
    acc.add("a", np.arange(1000.0).reshape(10, 10, 10), (np.arange(1000).reshape(10, 10, 10) > 500), (1.0, 1.0, 2.0))
    plan = make_plan(acc.result(), batch_size=7)
    assert plan.batch_size == 7 and plan.slice_axis == 2
    path = write_plan(plan, tmp_path / "run" / "plan.json")
    again = Plan.from_dict(json.loads(path.read_text()))
    assert again.to_dict() == plan.to_dict()
    assert plan.fingerprint["class_frequencies"]["fg"] == pytest.approx(499 / 1000)  # type: ignore[index]
    with pytest.raises(CheckpointError, match="bad 'plan' entry"):
        Plan.from_dict({"slice_axis": 2})


def test_slice_dataset_crops_planned_patches_around_foreground(sample_hippo: Path) -> None:
    from medseg.data.dataset import SliceDataset

    spec = discover_cases(DataConfig(root=sample_hippo))
    data = prepare_training_data(spec.cases[:3], [], 3, PreprocessingConfig(), classes=spec.classes)
    whole = SliceDataset(data.train)
    assert whole.crop_hw == whole.patch_hw  # no crop: items are whole padded slices, as before
    ds = SliceDataset(data.train, crop_hw=(16, 16), foreground_fraction=1.0, seed=0)
    assert ds.patch_hw == (16, 16) and ds.stored_hw == whole.patch_hw
    fg = np.flatnonzero(ds.foreground)
    for i in fg[:20]:
        item = ds[int(i)]
        assert tuple(item["image"].shape[-2:]) == (16, 16)
        assert int(item["label"].max()) > 0  # centred on a labelled pixel
    # Deterministic for a seed.
    a = SliceDataset(data.train, crop_hw=(16, 16), foreground_fraction=0.0, seed=3)
    b = SliceDataset(data.train, crop_hw=(16, 16), foreground_fraction=0.0, seed=3)
    assert all(torch_equal(a[i]["image"], b[i]["image"]) for i in range(10))


def torch_equal(x: object, y: object) -> bool:
    import torch

    return bool(torch.equal(x, y))  # type: ignore[arg-type]


def test_copy_of_hippocampus_config_plans_for_another_dataset() -> None:
    # A new user's copy of configs/hippocampus.yaml with only data.root changed: the plan adapts to the data.
    from medseg.config import load_config

    root = _require(LA2018)
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "hippocampus.yaml", [f"data.root={root}"])
    assert cfg.training.batch_size == "auto" and cfg.preprocessing.patch_size == "auto"
    spec = discover_cases(cfg.data)
    data = prepare_training_data(
        spec.cases[:6], [], len(spec.classes), cfg.preprocessing, batch_size=cfg.training.batch_size
    )
    assert data.plan is not None
    assert data.plan.patch_size != (48, 64) and data.plan.batch_size < 32  # not the hippocampus settings
    assert data.plan.patch_size[0] * data.plan.patch_size[1] * data.plan.batch_size <= STEP_PIXELS
