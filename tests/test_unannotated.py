"""Sparse annotation (``data.ignore_label``, nnU-Net v2's ``ignore`` label) on real hippocampus files: unannotated
voxels are read as their own index, left out of the loss, the sampled slices, the class statistics, validation
and evaluation, and never predicted."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import DataConfig
from medseg.data.cases import classes_from_labels, discover_cases, ignore_from_labels
from medseg.data.class_weights import summed_class_voxel_counts
from medseg.data.dataset import SliceDataset
from medseg.data.label_reading import LabelReading
from medseg.data.normalization import NormalizationParams
from medseg.data.prepare import prepare_cases
from medseg.data.resample import plan_grid, resample_label
from medseg.data.sampling import foreground_sampler
from medseg.errors import ConfigError
from medseg.losses import SegLoss
from medseg.metrics import case_metrics, dice

from .conftest import nnunet_v2_copy, run_tiny

IGNORE = 3
EVERY = 4  # every 4th slice along the last axis is annotated, as a researcher drawing every 4th slice would


def _sparse(label: np.ndarray) -> np.ndarray:
    out = np.full_like(label, IGNORE)
    out[..., ::EVERY] = label[..., ::EVERY]
    return out


def _nnunet_v2_sparse(sample_hippo: Path, root: Path, n: int = 9) -> list[str]:
    """An nnU-Net v2 raw folder of ``n`` sample cases whose labels annotate every 4th slice (``ignore`` = 3)."""
    labels = {"background": 0, "Anterior": 1, "Posterior": 2, "ignore": IGNORE}
    return nnunet_v2_copy(sample_hippo, root, labels, n=n, label=_sparse)


def test_dataset_json_ignore_label_is_no_class() -> None:
    labels = {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}
    assert classes_from_labels(labels, Path("dataset.json")) == (["background", "liver", "tumour"], None)
    assert ignore_from_labels(labels) == 3
    assert ignore_from_labels({"0": "background", "1": "a", "255": "ignore"}) == 255
    assert ignore_from_labels({"background": 0, "a": 1}) is None


def test_ignore_label_that_is_a_class_value_is_refused(sample_hippo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ignore_label 255 is the stored value of a class \(\[0, 255\]\)"):
        DataConfig(root=sample_hippo, classes=["background", "a"], label_values=[0, 255], ignore_label=255)
    # Otherwise the clash shows once the stored values are known (dataset.json, or 0..n-1).
    with pytest.raises(ConfigError, match=r"data\.ignore_label 1 is the stored value of class 'Anterior'"):
        discover_cases(DataConfig(root=sample_hippo, ignore_label=1))
    with pytest.raises(ConfigError, match=r"data\.ignore_label 2 is the stored value of class 'b'"):
        discover_cases(DataConfig(root=sample_hippo, classes=["background", "a", "b"], ignore_label=2))


def test_sparse_labels_are_read_with_their_own_index(sample_hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Sparse"
    ids = _nnunet_v2_sparse(sample_hippo, root, n=3)
    spec = discover_cases(DataConfig(root=root))
    assert spec.classes == ["background", "Anterior", "Posterior"]
    assert spec.ignore_label == IGNORE
    reading = LabelReading.of(DataConfig(root=root), spec.label_values, spec.ignore_label)
    prepared = prepare_cases(spec.cases, NormalizationParams(scheme="zscore"), axis=2, n_classes=3, labels=reading)
    for case, cid in zip(prepared, ids, strict=True):
        full = np.asarray(nib.load(sample_hippo / "labelsTr" / f"{cid}.nii.gz").dataobj)
        volume = case.label_volume
        assert volume is not None and case.unannotated == 3
        # The sample crops are stored in closest-RAS order already: voxel for voxel, the file's sparse label.
        np.testing.assert_array_equal(volume, _sparse(full))
        expected = np.zeros(full.shape[2], dtype=bool)
        expected[::EVERY] = True
        np.testing.assert_array_equal(case.annotated, expected)
        has_class = (full > 0).reshape(-1, full.shape[2]).any(axis=0)
        np.testing.assert_array_equal(case.foreground, has_class & expected)
    # Class statistics count annotated voxels only, and the plan's fingerprint says so.
    counts = summed_class_voxel_counts([p.label for p in prepared if p.label is not None], 3, unannotated=True)
    annotated_total = sum(int((p.label != 3).sum()) for p in prepared if p.label is not None)
    assert counts.sum() == annotated_total


def test_training_draws_only_annotated_slices(sample_hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "sparse"
    _nnunet_v2_sparse(sample_hippo, root, n=3)
    spec = discover_cases(DataConfig(root=root))
    reading = LabelReading.of(DataConfig(root=root), None, spec.ignore_label)
    prepared = prepare_cases(spec.cases, NormalizationParams(scheme="zscore"), axis=2, n_classes=3, labels=reading)
    dataset = SliceDataset(prepared, None, crop_hw=(32, 32), foreground_fraction=0.5, seed=0)
    sampler = foreground_sampler(dataset, 0.5, None, seed=0)
    assert dataset.annotated.sum() == sum(int(p.annotated.sum()) for p in prepared) < len(dataset)
    assert len(sampler) == int(dataset.annotated.sum())  # an epoch: one draw per annotated slice
    drawn = np.concatenate([sampler.indices(epoch) for epoch in range(3)])
    assert dataset.annotated[drawn].all()
    # Foreground-centred windows centre on a class voxel, never on an unannotated one.
    dataset.foreground_fraction = 1.0
    for index in np.flatnonzero(dataset.foreground)[:20]:
        item = dataset.crop(int(index))
        assert ((item["label"] == 1) | (item["label"] == 2)).any()


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_loss_equals_the_loss_over_annotated_pixels_alone(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3 if mode == "softmax" else 2, 24, 20, generator=gen)
    target = torch.randint(0, 3, (3, 24, 20), generator=gen)
    target[:, :, ::3] = 3  # unannotated columns
    target[1] = 3  # and one slice with nothing annotated
    weights = torch.tensor([0.4, 1.3, 2.0])
    loss = SegLoss(mode, 3, weights, unannotated=True)
    valid = target < 3
    # Reference: the plain loss over the annotated pixels gathered into one 1-D "image".
    reference = SegLoss(mode, 3, weights)(logits.movedim(1, -1)[valid].T[None], target[valid][None])
    logits.requires_grad_(True)
    value = loss(logits, target)
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
    value.backward()
    assert logits.grad is not None
    assert (logits.grad.movedim(1, -1)[~valid] == 0).all()  # unannotated pixels teach nothing
    assert logits.grad.movedim(1, -1)[valid].abs().sum() > 0


def test_label_resampling_keeps_the_unannotated_region(sample_hippo: Path) -> None:
    label = np.asarray(nib.load(next((sample_hippo / "labelsTr").glob("*.nii.gz"))).dataobj).astype(np.uint8)
    sparse = _sparse(label)
    grid = plan_grid(sparse.shape, (1.0, 1.0, 1.0), (0.5, 0.5, 1.0), 2)  # twice as fine in-plane
    fine = resample_label(sparse, grid, 4)
    assert fine.shape == (2 * sparse.shape[0], 2 * sparse.shape[1], sparse.shape[2])
    np.testing.assert_array_equal(fine[..., 1::EVERY], 3)  # unannotated slices stay so
    assert set(np.unique(fine[..., ::EVERY])) <= {0, 1, 2}  # annotated ones hold classes only


def test_metrics_of_a_partly_annotated_case_use_its_annotated_voxels(sample_hippo: Path) -> None:
    path = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]
    gt_full = np.asarray(nib.load(path).dataobj).astype(np.int64)
    pred = np.roll(gt_full, 1, axis=0)  # a prediction one voxel off
    gt = _sparse(gt_full)
    rows = case_metrics(pred, gt, (1.0, 1.0, 1.0), ["background", "Anterior", "Posterior"], unannotated=True)
    keep = gt != IGNORE
    for row, c in zip(rows, (1, 2), strict=True):
        assert row["dice"] == pytest.approx(dice(pred[keep] == c, gt_full[keep] == c))
        assert row["dice"] != pytest.approx(dice(pred == c, gt_full == c))  # not the whole-volume Dice
        assert np.isnan(row["hd95_mm"]) and np.isnan(row["assd_mm"]) and np.isnan(row["vol_gt_ml"])
        assert row["vol_pred_ml"] == pytest.approx(float((pred == c).sum()) / 1000.0)
        assert row["flag"] == "partly_annotated"
    # A complete ground truth is scored as before.
    whole = case_metrics(pred, gt_full, (1.0, 1.0, 1.0), ["background", "Anterior", "Posterior"])
    assert all(np.isfinite(r["hd95_mm"]) and r["flag"] == "" for r in whole)


def test_sparse_nnunet_set_trains_predicts_and_evaluates(sample_hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Sparse"
    _nnunet_v2_sparse(sample_hippo, root)
    result = run_tiny(tmp_path / "run", epochs=2, root=str(root))
    assert result is not None
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["classes"] == ["background", "Anterior", "Posterior"] and ckpt["ignore_label"] == IGNORE
    # QC has no volume reference from labels that hold only part of each structure.
    assert not any(ckpt["qc_reference"].get("label_volume_ml", {}).get(name) for name in ("Anterior", "Posterior"))
    fingerprint = json.loads((run / "plan.json").read_text())["fingerprint"]
    assert 0.2 < fingerprint["annotated_share"] < 0.3 and "annotated voxels only" in fingerprint["note"]
    rows = (run / "evaluation" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) > 1
    for line in rows[1:]:
        row = dict(zip(header, line.split(","), strict=True))
        assert row["error"] == "" and row["flag"].endswith("partly_annotated")  # after any empty flag
        assert row["hd95_mm"] in ("", "nan") and row["vol_gt_ml"] in ("", "nan")
    for mask in (run / "predictions").glob("*.nii.gz"):
        assert np.asarray(nib.load(mask).dataobj).max() < IGNORE  # never predicted


def test_overlays_show_a_sparse_ground_truth_on_an_annotated_slice(sample_hippo: Path) -> None:
    from medseg.evaluation.overlays import pick_slice

    gt_full = np.asarray(nib.load(sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]).dataobj)
    gt = _sparse(gt_full)
    index = pick_slice(gt, np.zeros_like(gt), 2, n_classes=3)
    assert index % EVERY == 0  # an annotated slice, the one with the most hippocampus among them
    annotated_counts = [(gt_full[..., k] > 0).sum() if k % EVERY == 0 else -1 for k in range(gt.shape[2])]
    assert index == int(np.argmax(annotated_counts))


def test_a_ground_truth_with_nothing_annotated_is_not_scored(sample_hippo: Path) -> None:
    gt_full = np.asarray(nib.load(sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]).dataobj).astype(np.int64)
    classes = ["background", "Anterior", "Posterior"]
    nothing = np.full_like(gt_full, IGNORE)
    for pred in (np.zeros_like(gt_full), gt_full):  # empty or not, a prediction cannot be scored against nothing
        rows = case_metrics(pred, nothing, (1.0, 1.0, 1.0), classes, unannotated=True)
        assert all(np.isnan(r["dice"]) and np.isnan(r["iou"]) and r["flag"] == "unannotated" for r in rows)
    # A partly annotated case whose annotated slices hold no structure: empty there, and partly annotated.
    empty_slices = gt_full.copy()
    empty_slices[gt_full > 0] = IGNORE
    rows = case_metrics(np.zeros_like(gt_full), empty_slices, (1.0, 1.0, 1.0), classes, unannotated=True)
    assert all(r["flag"] == "both_empty;partly_annotated" and r["dice"] == 1.0 for r in rows)


def test_label_value_errors_name_the_ignore_label(caplog: pytest.LogCaptureFixture) -> None:
    from medseg.data.checks import label_problem

    problem = LabelReading(ignore=5).problem(np.array([[0, 1], [3, 5]]), 3)
    assert problem == (
        "label values [3] are neither the classes' stored values [0, 1, 2] nor the value of unannotated voxels, "
        "5 (data.ignore_label)"
    )
    assert LabelReading(ignore=5).problem(np.array([[0, 2], [1, 5]]), 3) is None
    # An undeclared value above the classes hints at the key for unannotated voxels.
    assert "say so with data.ignore_label: 255" in str(label_problem(np.array([0, 1, 2, 255]), 3))
    with caplog.at_level("WARNING"):
        assert ignore_from_labels({"background": 0, "a": 1, "Ignore": 2}) is None
    assert "'Ignore' is trained as a class: only 'ignore' (lower case" in caplog.text


def test_labels_that_annotate_nothing_are_refused_or_left_out(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.data.foreground import check_foreground
    from medseg.errors import EmptyLabelsError

    root = tmp_path / "sparse"
    _nnunet_v2_sparse(sample_hippo, root, n=3)
    first = sorted((root / "labelsTr").iterdir())[0]
    blank = np.full(nib.load(first).shape, IGNORE, np.uint8)
    nib.save(nib.Nifti1Image(blank, nib.load(first).affine), first)
    spec = discover_cases(DataConfig(root=root))
    reading = LabelReading.of(DataConfig(root=root), None, spec.ignore_label)
    prepared = prepare_cases(spec.cases, NormalizationParams(scheme="zscore"), axis=2, n_classes=3, labels=reading)
    assert not prepared[0].annotated.any() and prepared[1].annotated.any()
    check_foreground(prepared[1:], prepared[:1])  # one blank validation case: a warning, no error
    with pytest.raises(EmptyLabelsError, match="No training label annotates any voxel"):
        check_foreground(prepared[:1], prepared[1:])


def test_sampler_shards_draw_only_annotated_slices() -> None:
    from medseg.data.sampling import ForegroundSampler

    annotated = np.zeros(40, dtype=bool)
    annotated[::4] = True
    foreground = annotated & (np.arange(40) % 8 == 0)
    shards = [
        ForegroundSampler(foreground, 0.5, None, seed=3, rank=r, world_size=2, eligible=annotated) for r in (0, 1)
    ]
    drawn = [np.asarray(list(iter(s))) for s in shards]
    assert all(len(d) == 5 for d in drawn)  # one epoch: 10 annotated slices over 2 ranks
    assert all(annotated[d].all() for d in drawn)
    assert set(np.concatenate(drawn)) <= set(np.flatnonzero(annotated))


def test_postprocessing_is_decided_on_annotated_voxels(sample_hippo: Path) -> None:
    from medseg.inference.postprocess import decide_postprocessing

    gt_full = np.asarray(nib.load(sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[0]).dataobj).astype(np.int64)
    pred = gt_full.copy()
    # A stray blob of class 1 on unannotated slices only: removing it changes no annotated voxel.
    pred[:3, :3, 1:3] = 1
    gt = _sparse(gt_full)
    plan = decide_postprocessing([pred], [gt], 3, axis=2, unannotated=True)
    assert 1 not in plan["largest_component"]  # no Dice gain where nothing is annotated
    plan_full = decide_postprocessing([pred], [gt_full], 3, axis=2)
    assert 1 in plan_full["largest_component"]  # on complete labels the blob costs Dice, and is removed
