"""QC numbers and flags (``medseg.inference.qc``) on real scans and hand-made references; the report's pieces."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.config import QCConfig, load_config
from medseg.evaluation.html_report import RUN_RECORD, record_stage, render_report
from medseg.inference.qc import (
    MAX_SCORE,
    MIN_VOLUME_REFERENCE,
    assess,
    build_reference,
    geometry_features,
    intensity_features,
    label_volumes_ml,
    output_features,
)
from medseg.io import load_volume
from tests.conftest import SAMPLE_DATA, SHARED_DATA

CLASSES = ["background", "Anterior", "Posterior"]
SPLEEN_CT = SHARED_DATA / "MSD_Spleen_crop" / "spleen_2_img.nii.gz"


def _sample_cases() -> list[tuple[Path, Path]]:
    images = sorted((SAMPLE_DATA / "hippocampus" / "imagesTr").glob("*.nii.gz"))
    return [(p, SAMPLE_DATA / "hippocampus" / "labelsTr" / p.name) for p in images]


def _reference_from_labels(cases: list[tuple[Path, Path]]) -> dict:
    """A reference from real scans; the 'validation outputs' are the ground-truth labels with made-up confidences."""
    imgs, geom, vols, outs = [], [], [], []
    for i, (image, label) in enumerate(cases):
        v, lab = load_volume(image), load_volume(label)
        imgs.append(intensity_features(np.asarray(v.array)))
        geom.append(geometry_features(v.spacing, v.shape))
        vols.append(label_volumes_ml(np.asarray(lab.array), lab.voxel_volume, CLASSES))
        out = output_features(np.asarray(lab.array), None, lab.voxel_volume, CLASSES)
        out.update(mean_confidence=0.90 + 0.005 * (i % 3), mean_entropy=0.30 + 0.01 * (i % 3))
        outs.append(out)
    return build_reference(CLASSES, imgs, geom, vols, outs)


@pytest.fixture(scope="module")
def reference() -> dict:
    return _reference_from_labels(_sample_cases()[:10])


def _features(image: Path, labels: np.ndarray, confidence: float = 0.9, entropy: float = 0.3) -> dict[str, float]:
    v = load_volume(image)
    feats = intensity_features(np.asarray(v.array))
    feats.update(geometry_features(v.spacing, v.shape))
    feats.update(output_features(labels, None, v.voxel_volume, CLASSES))
    feats.update(mean_confidence=confidence, mean_entropy=entropy)
    return feats


def test_a_held_out_sample_scan_with_its_true_mask_is_not_flagged(reference: dict) -> None:
    for image, label in _sample_cases()[10:]:
        result = assess(_features(image, np.asarray(load_volume(label).array)), reference)
        assert result.flags == [], (image.name, result.flags)
        assert result.score is not None and 0 <= result.score < 1
        assert result.row()["qc_flags"] == "" and float(result.row()["qc_score"]) == result.score


def test_an_empty_mask_is_flagged_with_the_top_score(reference: dict) -> None:
    image, label = _sample_cases()[-1]
    empty = np.zeros(load_volume(label).shape, dtype=np.uint8)
    result = assess(_features(image, empty, confidence=float("nan"), entropy=float("nan")), reference)
    assert "empty mask (no foreground voxel)" in result.flags
    assert result.score == MAX_SCORE


def test_one_missing_class_and_a_shrunken_volume_are_flagged(reference: dict) -> None:
    image, label = _sample_cases()[-1]
    labels = np.asarray(load_volume(label).array).copy()
    no_posterior = np.where(labels == 2, 0, labels)
    result = assess(_features(image, no_posterior), reference)
    assert any(f.startswith("empty Posterior") for f in result.flags), result.flags

    # Anterior eroded to a few voxels: its volume is far below every training label's.
    tiny = labels.copy()
    tiny[tiny == 1] = 0
    idx = np.argwhere(labels == 1)[:20]
    tiny[tuple(idx.T)] = 1
    result = assess(_features(image, tiny), reference)
    assert any(f.startswith("Anterior volume") for f in result.flags), result.flags
    # A threshold from the config changes the decision: the same scan passes with a very lax volume_z.
    lax = assess(_features(image, tiny), reference, QCConfig(volume_z=1000.0))
    assert not any(f.startswith("Anterior volume") for f in lax.flags), lax.flags


def test_a_class_outside_most_training_scans_is_judged_on_the_scans_that_hold_it(reference: dict) -> None:
    """Multi-organ CT: a structure outside most scans' field of view is 0 mL in their labels. Its volume is
    compared with the labels that hold it, not with a median of 0 (which flagged every scan showing it)."""
    image, label = _sample_cases()[-1]
    labels = np.asarray(load_volume(label).array)
    true = reference["label_volume_ml"]["Posterior"]
    sparse = copy.deepcopy(reference)
    sparse["label_volume_ml"]["Posterior"] = [0.0] * 7 + true[:MIN_VOLUME_REFERENCE]
    result = assess(_features(image, labels), sparse)
    assert result.flags == [] and "volume_Posterior" in result.checks, result.flags
    # Still a check: a Posterior shrunk to a few voxels is flagged against the labels that hold it.
    tiny = np.where(labels == 2, 0, labels)
    idx = np.argwhere(labels == 2)[:20]
    tiny[tuple(idx.T)] = 2
    assert any(f.startswith("Posterior volume") for f in assess(_features(image, tiny), sparse).flags)
    # Fewer labels than MIN_VOLUME_REFERENCE hold it: no volume reference for it.
    sparse["label_volume_ml"]["Posterior"] = [0.0] * 9 + true[: MIN_VOLUME_REFERENCE - 1]
    assert "volume_Posterior" not in assess(_features(image, tiny), sparse).checks


def test_low_confidence_and_many_pieces_are_flagged(reference: dict) -> None:
    image, label = _sample_cases()[-1]
    labels = np.asarray(load_volume(label).array).copy()
    result = assess(_features(image, labels, confidence=0.6, entropy=0.7), reference)
    assert any(f.startswith("low confidence") for f in result.flags)
    assert any(f.startswith("high entropy") for f in result.flags)
    # Scatter isolated Anterior voxels on a lattice: many disconnected components.
    speckled = labels.copy()
    speckled[::4, ::4, ::4][speckled[::4, ::4, ::4] == 0] = 1
    result = assess(_features(image, speckled), reference)
    assert any(f.startswith("Anterior in") and "pieces" in f for f in result.flags), result.flags
    assert result.checks["components_Anterior"] >= 1


@pytest.mark.skipif(not SPLEEN_CT.is_file(), reason=f"needs the CT crop {SPLEEN_CT} (../shared/data)")
def test_a_ct_scan_is_flagged_by_the_input_checks(reference: dict) -> None:
    ct = load_volume(SPLEEN_CT)
    feats = intensity_features(np.asarray(ct.array))
    assert feats["neg_fraction"] > 0.3  # air and fat in HU; the MRI crops have no negative voxel
    result = assess(_features(SPLEEN_CT, np.zeros(ct.shape, dtype=np.uint8)), reference)
    assert any(f.startswith("intensities unlike the training scans") for f in result.flags), result.flags
    assert any(f.startswith("spacing outside the training range") for f in result.flags)
    assert any(f.startswith("shape outside the training range") for f in result.flags)


def test_intensity_features_equal_numpy_percentiles_of_the_z_scored_scan() -> None:
    """The sort-and-interpolate percentiles are np.percentile's (linear method) on real scans and odd inputs."""
    arrays = [np.asarray(load_volume(image).array) for image, _ in _sample_cases()[:5]]
    if SPLEEN_CT.is_file():
        arrays.append(np.asarray(load_volume(SPLEEN_CT).array))  # int16 HU with negatives
    rng = np.random.default_rng(0)
    arrays.append(np.concatenate([rng.normal(-3.0, 2.0, 1001), [np.nan, np.inf, -np.inf]]))
    arrays.append(np.array([7.0]))
    for array in arrays:
        sample = array.reshape(-1).astype(np.float64)
        sample = sample[np.isfinite(sample)]
        z = (sample - sample.mean()) / (sample.std() or 1.0)
        names = ["zp01", "zp25", "zp50", "zp75", "zp99"]
        expected = dict(zip(names, np.percentile(z, [1, 25, 50, 75, 99]).tolist(), strict=True))
        expected["neg_fraction"] = float((sample < 0).mean())
        got = intensity_features(array)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            # float32 order statistics: exact for integer scans, float32 rounding (~1e-7) for float64 ones
            assert got[name] == pytest.approx(value, abs=1e-6), (array.dtype, array.shape, name)
    assert all(np.isnan(v) for v in intensity_features(np.array([np.nan, np.inf])).values())


def test_without_a_reference_qc_is_empty_with_a_note() -> None:
    result = assess({"neg_fraction": 0.5}, None)
    assert result.flags is None and result.score is None
    assert "no QC reference" in result.note
    assert result.row() == {"qc_flags": "", "qc_score": ""}
    off = assess({"neg_fraction": 0.5}, {"classes": CLASSES}, QCConfig(enabled=False))
    assert off.flags is None and "disabled" in off.note


def test_the_reference_holds_only_plain_types(reference: dict, tmp_path: Path) -> None:
    import torch

    torch.save({"qc_reference": reference}, tmp_path / "r.pt")
    loaded = torch.load(tmp_path / "r.pt", weights_only=True)["qc_reference"]
    assert loaded == reference
    assert reference["n_train"] == 10 and len(reference["label_volume_ml"]["Anterior"]) == 10


def test_qc_thresholds_are_config_keys(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("inference:\n  qc:\n    volume_z: 5\n")
    cfg = load_config(cfg_file, ["inference.qc.intensity_z=8"])
    assert cfg.inference.qc.volume_z == 5 and cfg.inference.qc.intensity_z == 8
    assert cfg.inference.qc.enabled is True


def test_report_of_an_empty_folder_and_the_run_record(tmp_path: Path) -> None:
    page = render_report(tmp_path)
    assert page.startswith("<!DOCTYPE html>") and 'id="run"' in page and 'id="training"' not in page
    record_stage(tmp_path, "train", 12.345, command="python -m pipelines.run x.yaml")
    record_stage(tmp_path, "predict", 1.0)
    record = json.loads((tmp_path / RUN_RECORD).read_text())
    assert record["command"] == "python -m pipelines.run x.yaml"
    assert record["stages"]["train"]["seconds"] == 12.35 and "predict" in record["stages"]
    (tmp_path / "plan.json").write_text(json.dumps({"target_spacing": [1.0, 1.0, 1.0]}))
    page = render_report(tmp_path)
    assert "python -m pipelines.run x.yaml" in page and "target_spacing" in page and "12.35" in page


def test_confidence_maps_give_the_features_of_the_probabilities(rng: np.random.Generator) -> None:
    """Batch QC keeps float16 per-voxel maps instead of every class's probabilities: same numbers to 1e-3."""
    from medseg.inference.qc import ConfidenceMaps, voxel_confidence

    probs = rng.dirichlet([0.3, 0.3, 0.3], size=(20, 18, 7)).transpose(3, 0, 1, 2).astype(np.float32)
    probs[1:] *= 0.8  # sigmoid-like outputs that do not sum to 1: both paths normalise them
    labels = probs.argmax(axis=0).astype(np.uint8)
    maps = ConfidenceMaps.from_probs(probs)
    assert maps.confidence.dtype == np.float16 and maps.confidence.shape == labels.shape
    conf, entropy = voxel_confidence(probs)
    assert float(conf.min()) >= 1 / 3 - 1e-6 and float(conf.max()) <= 1 + 1e-6
    assert float(entropy.min()) >= 0 and float(entropy.max()) <= 1 + 1e-6
    exact = output_features(labels, probs, 1.0, CLASSES)
    approx = output_features(labels, None, 1.0, CLASSES, confidence=maps)
    assert set(exact) == set(approx)
    for key in ("mean_confidence", "mean_entropy"):
        assert approx[key] == pytest.approx(exact[key], abs=1e-3), key
    assert {k: v for k, v in approx.items() if "mean_" not in k} == {k: v for k, v in exact.items() if "mean_" not in k}
    # Filled slab by slab: the same maps as from the whole volume.
    slabwise = ConfidenceMaps.empty(labels.shape)
    for start in range(0, 7, 3):
        slabwise.fill((slice(None), slice(None), slice(start, start + 3)), probs[..., start : start + 3])
    np.testing.assert_array_equal(slabwise.confidence, maps.confidence)
    np.testing.assert_array_equal(slabwise.entropy, maps.entropy)


@pytest.mark.parametrize("scan", ["hippocampus/imagesTr/hippocampus_001.nii.gz", "dicom/HippoCrop_Study1"])
def test_predict_with_confidence_is_predict_plus_the_maps_of_its_probabilities(scan: str, tmp_path: Path) -> None:
    """The slab path's mask is predict()'s, and its maps (volume order, also for an LPS-stored DICOM series that
    is reoriented for the model) are those of predict_proba()."""
    from medseg.inference.predictor import Predictor
    from medseg.inference.qc import ConfidenceMaps
    from tests.test_inference import make_checkpoint

    predictor = Predictor.from_checkpoint(
        make_checkpoint(tmp_path / "m.pt", mode="softmax", context=1), device="cpu", precision="fp32", batch_size=5
    )
    volume = load_volume(SAMPLE_DATA / scan)
    mask, maps = predictor.predict_with_confidence(volume)
    np.testing.assert_array_equal(mask.array, predictor.predict(volume).array)
    whole = ConfidenceMaps.from_probs(predictor.predict_proba(volume))
    assert maps.confidence.shape == volume.shape
    # Computed over the foreground's box in each piece of slices (NaN elsewhere): there, those of the probabilities.
    computed = np.isfinite(maps.confidence)
    foreground = np.asarray(mask.array) > 0
    assert np.array_equal(computed, np.isfinite(maps.entropy)) and computed.any() == foreground.any()
    assert computed[foreground].all()
    np.testing.assert_allclose(maps.confidence[computed], whole.confidence[computed], atol=1e-3)
    np.testing.assert_allclose(maps.entropy[computed], whole.entropy[computed], atol=1e-3)


@pytest.mark.parametrize("axis", [0, 2])
def test_slab_maps_are_computed_over_the_foreground_box_of_each_piece(axis: int, rng: np.random.Generator) -> None:
    """fill_slices with the slices' labels: NaN outside the box of the piece's foreground, the maps of the
    probabilities inside it; the mask after removing a stray component and filling holes (per slice and in 3D)
    lies inside the boxes, so its mean confidence and entropy are those of the full maps."""
    import torch

    from medseg.inference.postprocess import fill_holes, keep_largest_component
    from medseg.inference.qc import ConfidenceMaps
    from medseg.inference.slabs import slab_index

    shape = (30, 26, 12)
    fg = np.zeros(shape, dtype=bool)
    fg[8:20, 6:18, 2:10] = True
    fg[12:15, 10:13, 4:7] = False  # a hole enclosed in 3D and in its slices
    fg[24:26, 20:22, 3:5] = True  # a stray component the largest-component step removes
    probs = np.empty((2, *shape), dtype=np.float32)
    probs[1] = np.where(fg, rng.uniform(0.55, 1.0, shape), rng.uniform(0.0, 0.45, shape))
    probs[0] = 1.0 - probs[1]
    labels = probs.argmax(axis=0).astype(np.uint8)
    maps = ConfidenceMaps.empty(shape)
    for start in range(0, shape[axis], 5):
        index = slab_index(axis, start, min(start + 5, shape[axis]))
        piece = torch.from_numpy(np.moveaxis(probs[(slice(None), *index)], axis + 1, 0).copy())
        maps.fill_slices(index, axis, piece, piece.argmax(dim=1))
    computed = np.isfinite(maps.confidence)
    assert 0.1 < computed.mean() < 0.6 and np.array_equal(computed, np.isfinite(maps.entropy))
    whole = ConfidenceMaps.from_probs(probs)
    np.testing.assert_array_equal(maps.confidence[computed], whole.confidence[computed])
    np.testing.assert_array_equal(maps.entropy[computed], whole.entropy[computed])
    for hole_axis in (axis, None):
        post = fill_holes(keep_largest_component(labels, [1]), [1], hole_axis)
        assert not np.array_equal(post, labels)
        assert computed[post > 0].all()
        fast = output_features(post, None, 1.0, ("background", "fg"), confidence=maps)
        full = output_features(post, None, 1.0, ("background", "fg"), confidence=whole)
        assert fast == full


def test_confidence_maps_cover_the_foreground_postprocessing_leaves() -> None:
    """The slab path computes the maps only inside each piece's foreground box. The postprocessed mask (largest
    component, then holes filled per slice; 3D hole filling checked too) stays inside those boxes, so QC's
    features are those of the full maps. The reference model's prediction with both steps switched on."""
    from medseg.config import PostprocessingConfig
    from medseg.inference.postprocess import fill_holes, keep_largest_component
    from medseg.inference.predictor import Predictor
    from medseg.inference.qc import ConfidenceMaps

    volume = load_volume(SAMPLE_DATA / "hippocampus" / "imagesTr" / "hippocampus_003.nii.gz")
    options = {"device": "cpu", "precision": "fp32", "batch_size": 8}
    reference = Path(__file__).parent / "data" / "reference_model.pt"
    raw = np.asarray(Predictor.from_checkpoint(reference, **options).predict(volume).array)
    predictor = Predictor.from_checkpoint(
        reference, **options, postprocessing=PostprocessingConfig(largest_component=True, fill_holes=True)
    )
    mask, maps = predictor.predict_with_confidence(volume)
    labels = np.asarray(mask.array)
    fg_classes = list(range(1, len(predictor.classes)))
    # Both steps change this mask: components are removed and holes filled.
    assert (raw[labels == 0] > 0).any() and (labels[raw == 0] > 0).any()
    computed = np.isfinite(maps.confidence)
    assert computed[labels > 0].all()
    holes_3d = fill_holes(keep_largest_component(raw, fg_classes), fg_classes, None)
    assert computed[holes_3d > 0].all()
    whole = ConfidenceMaps.from_probs(predictor.predict_proba(volume))
    fast = output_features(labels, None, volume.voxel_volume, predictor.classes, confidence=maps)
    full = output_features(labels, None, volume.voxel_volume, predictor.classes, confidence=whole)
    assert np.isfinite(fast["mean_confidence"]) and np.isfinite(fast["mean_entropy"])
    assert fast == pytest.approx(full, abs=1e-6)
