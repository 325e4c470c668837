"""Normalisation on real intensities: MSD Hippocampus (0-200 and 1e5-scale volumes), a CT volume in HU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.normalization import (
    NonFiniteIntensityError,
    NormalizationParams,
    fit_normalization,
    normalize,
    resolve_scheme,
)
from medseg.data.prepare import prepare_training_data
from medseg.errors import CheckpointError, MedsegError
from medseg.io import load_volume
from medseg.volume import Volume
from tests.conftest import msd_ct_case

LARGE_SCALE = [
    "hippocampus_044",
    "hippocampus_135",
    "hippocampus_136",
    "hippocampus_138",
    "hippocampus_145",
    "hippocampus_146",
]


def test_zscore_every_hippocampus_volume(hippo_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=hippo_dir))
    maxima: dict[str, float] = {}

    def reader(path: Path, *, label: bool = False) -> Volume:
        volume = load_volume(path, label=label)
        if "imagesTr" in str(path):
            maxima[path.name[: -len(".nii.gz")]] = float(volume.array.max())
        return volume

    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(normalization="zscore"), reader=reader)
    assert len(data.train) == 91
    for prepared in data.train:
        vol = prepared.volume.astype(np.float64)
        assert prepared.image.dtype == np.float32
        assert abs(vol.mean()) < 1e-4, prepared.id
        assert abs(vol.std() - 1.0) < 1e-4, prepared.id
    # The 1e5-scale volumes really are in the set and come out like the others.
    assert all(maxima[cid] > 1e5 for cid in LARGE_SCALE)
    assert np.median(list(maxima.values())) < 1e4


def test_zscore_matches_float64_reference_at_1e6_scale(rng: np.random.Generator) -> None:
    raw = (1e6 + 500.0 * rng.standard_normal((20, 30, 40))).astype(np.float32)
    ref = (raw.astype(np.float64) - raw.astype(np.float64).mean()) / raw.astype(np.float64).std()
    out = normalize(raw, NormalizationParams("zscore"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_zscore_nonzero_keeps_background_zero(rng: np.random.Generator) -> None:
    raw = np.zeros((10, 10, 10), dtype=np.float32)
    raw[2:8, 2:8, 2:8] = 100 + 10 * rng.standard_normal((6, 6, 6))
    out = normalize(raw, fit_normalization("zscore", [], nonzero=True))
    inside = out[raw != 0]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-5
    assert np.all(out[raw == 0] == 0)


def test_percentile_maps_to_unit_range(rng: np.random.Generator) -> None:
    raw = rng.gamma(2.0, 50.0, size=(20, 20, 20))
    out = normalize(raw, NormalizationParams("percentile"))
    lo, hi = np.percentile(raw, [1, 99])
    assert out.min() == 0.0 and out.max() == 1.0
    inside = (raw > lo) & (raw < hi)
    np.testing.assert_allclose(out[inside], (raw[inside] - lo) / (hi - lo), rtol=1e-5)


def test_ct_fit_on_real_ct(totalseg_dir: Path) -> None:
    image = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    label = load_volume(totalseg_dir / "example_seg.nii.gz")
    params = fit_normalization("ct", [image.array], [label.array])
    fg = image.array[label.array > 0].astype(np.float64)
    assert fg.size > 100_000  # more than the per-case subsample: the fit works on a seeded sample
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert params.clip_low == pytest.approx(lo, abs=10) and params.clip_high == pytest.approx(hi, abs=10)
    clipped = np.clip(fg, params.clip_low, params.clip_high)
    assert params.mean == pytest.approx(clipped.mean(), abs=3) and params.std == pytest.approx(clipped.std(), rel=0.01)
    assert fit_normalization("ct", [image.array], [label.array]) == params  # seeded
    assert -1100 < lo < 0 < hi < 3100  # HU of soft tissue and bone, not of air or metal artefacts

    out = normalize(image.array, params)
    fg_out = out[label.array > 0].astype(np.float64)
    assert abs(fg_out.mean()) < 0.01 and abs(fg_out.std() - 1) < 0.01
    assert out.min() == pytest.approx((params.clip_low - params.mean) / params.std, rel=1e-5)

    # Stored in the checkpoint as JSON and restored: the same numbers come out.
    restored = NormalizationParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert restored == params
    np.testing.assert_array_equal(normalize(image.array, restored), out)


def test_ct_is_fitted_on_training_cases_only(totalseg_dir: Path, tmp_path: Path) -> None:
    # Validation cases are normalised with the training statistics, never refitted.
    msd_ct_case(totalseg_dir, tmp_path)
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    spec = discover_cases(DataConfig(root=tmp_path, modality="ct"))
    data = prepare_training_data(
        spec.cases, spec.cases, len(spec.classes), PreprocessingConfig(), modality="ct", reader=load_volume
    )
    assert data.params.scheme == "ct"
    np.testing.assert_array_equal(data.train[0].image, data.val[0].image)
    expected = normalize(load_volume(ct).array, data.params)
    np.testing.assert_array_equal(data.train[0].volume, expected)


def test_non_finite_input_is_rejected() -> None:
    arr = np.ones((4, 4, 4), dtype=np.float32)
    arr[0, 0, 0] = np.inf
    for scheme in ("zscore", "percentile"):
        with pytest.raises(NonFiniteIntensityError, match=r"scan\.nii\.gz.*NaN or infinite"):
            normalize(arr, NormalizationParams(scheme), source="scan.nii.gz")
    with pytest.raises(MedsegError):
        fit_normalization("ct", [arr], [np.ones_like(arr)])


def test_params_validation_and_auto_scheme() -> None:
    assert resolve_scheme("auto", "ct") == "ct" and resolve_scheme("auto", "mri") == "zscore"
    with pytest.raises(ValueError, match="clip_low"):
        NormalizationParams("ct")
    with pytest.raises(CheckpointError, match="unknown keys"):
        NormalizationParams.from_dict({"scheme": "zscore", "gain": 2})
    with pytest.raises(CheckpointError):
        NormalizationParams.from_dict({"scheme": "minmax"})
    constant = normalize(np.full((3, 3, 3), 7.0), NormalizationParams("zscore"))
    assert np.all(constant == 0)


def test_params_print_only_what_their_scheme_uses() -> None:
    ct = NormalizationParams("ct", clip_low=-37.0, clip_high=117.0, mean=39.63, std=29.56)
    assert str(ct) == "ct: clip [-37, 117], then (x - 39.63) / 29.56, fitted on the training foreground"
    assert str(NormalizationParams("zscore", nonzero=True)) == "zscore: per volume, over non-zero voxels"
    assert "percentile" not in str(ct) and "99" not in str(NormalizationParams("zscore"))
