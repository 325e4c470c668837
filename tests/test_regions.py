"""Overlapping label regions (nnU-Net's region-based training, ``data.regions``) on real files: BraTS labels read
into painted classes that give every region back exactly, a sigmoid loss per region, painted predictions, and
metrics per region checked against numpy on the raw label values."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.config import DataConfig, config_from_dict
from medseg.data.cases import discover_cases
from medseg.data.label_reading import LabelReading
from medseg.data.regions import Regions, class_mask, regions_from_labels
from medseg.errors import ConfigError
from medseg.losses import SegLoss, soft_dice_per_class
from medseg.metrics import case_metrics
from medseg.models.head import logits_to_probs, probs_to_labels, resolve_mode

from .conftest import SHARED_DATA, nnunet_v2_copy, run_tiny

BRATS = SHARED_DATA / "BraTS2015_DeepMedic_examples"
# BraTS 2015 values: 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing tumour.
BRATS_REGIONS = {"whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing": [4]}
BRATS_ORDER = [2, 1, 4]
# The hippocampus sample as nested regions: the whole hippocampus (anterior + posterior) and the posterior part.
HIPPO_LABELS = {"background": 0, "hippocampus": [1, 2], "posterior": [2]}
HIPPO_ORDER = [1, 2]


def _brats_label() -> np.ndarray:
    if not BRATS.exists():
        pytest.skip(f"needs real data at {BRATS} (../shared/data is not part of a fresh clone)")
    path = sorted(BRATS.glob("*/OTMultiClass.nii.gz"))[0]
    return np.asarray(nib.load(path).dataobj)  # float32, values 0..4


def test_region_definitions_that_paint_back_are_accepted() -> None:
    brats = Regions.of(BRATS_REGIONS, BRATS_ORDER)
    assert brats.problem() is None
    assert brats.classes == ["background", "whole_tumor", "tumor_core", "enhancing"]
    assert brats.label_values == [0, 2, 1, 4]
    assert brats.painted_index() == {0: 0, 1: 2, 2: 1, 3: 2, 4: 3}
    # nnU-Net v2's own BraTS 2021 example (labels converted to 1 oedema, 2 non-enhancing, 3 enhancing).
    v2 = {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert Regions.of(v2, [1, 2, 3]).problem() is None
    # Regions that do not overlap are plain classes written with their values.
    assert Regions.of({"a": [1], "b": [2, 3]}, [1, 3]).problem() is None


@pytest.mark.parametrize(
    ("regions", "order", "message"),
    [
        (BRATS_REGIONS, [2, 1], r"gives 2 values for 3 regions"),
        (BRATS_REGIONS, [2, 1, 3], r"region 'enhancing' is written as 3, which is not one of its values \[4\]"),
        (BRATS_REGIONS, [4, 1, 4], r"region 'whole_tumor' is written as 4, which region 'enhancing'"),
        ({"a": [1, 2], "b": [2, 3]}, [1, 3], r"label value 2 belongs to regions \['a', 'b'\] but is painted as 3"),
        ({"a": [0, 1]}, [1], r"region 'a' must hold distinct label values in 1\.\.65535"),
        ({"background": [1]}, [1], r"must differ from each other and from 'background'"),
    ],
)
def test_region_definitions_that_cannot_paint_back_are_refused(
    regions: dict[str, list[int]], order: list[int], message: str
) -> None:
    assert Regions.of(regions, order).problem() is not None
    with pytest.raises(ValueError, match=message):
        DataConfig(regions=regions, regions_class_order=order)


def test_config_regions_replace_classes_and_exclude_ignore_label() -> None:
    with pytest.raises(ValueError, match=r"regions needs regions_class_order"):
        DataConfig(regions=BRATS_REGIONS)
    with pytest.raises(ValueError, match=r"regions_class_order needs regions"):
        DataConfig(regions_class_order=[1])
    with pytest.raises(ValueError, match=r"regions replace classes and label_values"):
        DataConfig(regions=BRATS_REGIONS, regions_class_order=BRATS_ORDER, classes=["background", "a", "b", "c"])
    with pytest.raises(ValueError, match=r"ignore_label together with regions is not supported"):
        DataConfig(regions=BRATS_REGIONS, regions_class_order=BRATS_ORDER, ignore_label=255)
    with pytest.raises(ConfigError, match=r"loss\.mode: softmax cannot train overlapping regions"):
        resolve_mode("softmax", 4, regions=True)
    assert resolve_mode("auto", 4, regions=True)[0] == "regions"


def test_dataset_json_regions_are_read_as_nnunet_v2_declares_them() -> None:
    found = regions_from_labels(HIPPO_LABELS, HIPPO_ORDER, "dataset.json")
    assert found == Regions(names=("hippocampus", "posterior"), members=((1, 2), (2,)), paint=(1, 2))
    assert regions_from_labels({"background": 0, "a": 1}, None, "dataset.json") is None
    with pytest.raises(ValueError, match=r"'dataset.json': labels \['hippocampus', 'posterior'\] are regions"):
        regions_from_labels(HIPPO_LABELS, None, "dataset.json")
    with pytest.raises(ValueError, match=r"an 'ignore' label together with regions is not supported"):
        regions_from_labels({**HIPPO_LABELS, "ignore": 3}, HIPPO_ORDER, "dataset.json")
    with pytest.raises(ValueError, match=r"regions_class_order must be a list of integers"):
        regions_from_labels(HIPPO_LABELS, "1,2", "dataset.json")


def test_painted_classes_give_every_region_back_exactly_on_brats_labels() -> None:
    raw = _brats_label()
    regions = Regions.of(BRATS_REGIONS, BRATS_ORDER)
    reading = LabelReading(regions=regions)
    assert reading.problem(raw, 4) is None
    painted = reading.indices(raw, 4)
    membership = regions.membership()
    for r, values in enumerate(BRATS_REGIONS.values(), start=1):
        np.testing.assert_array_equal(class_mask(painted, r, membership), np.isin(raw, values))
        assert np.isin(raw, values).any()  # every region is present in this case: the check is not vacuous
    # A value in no region is refused by name.
    stray = raw.copy()
    stray[0, 0, 0] = 5
    assert "label values [5] belong to no region" in (reading.problem(stray, 4) or "")
    # ... or read as background where data.unlisted_labels says so.
    lenient = LabelReading(regions=regions, unlisted_background=True)
    assert lenient.problem(stray, 4) is None
    assert lenient.indices(stray, 4)[0, 0, 0] == 0
    np.testing.assert_array_equal(lenient.indices(stray, 4)[1:], painted[1:])


def test_region_loss_is_the_sigmoid_loss_on_each_regions_own_target() -> None:
    raw = _brats_label()
    regions = Regions.of(BRATS_REGIONS, BRATS_ORDER)
    k = int(np.argmax(np.isin(raw, [4]).sum(axis=(0, 1))))  # the slice with the most enhancing tumour
    raw_slices = torch.from_numpy(np.stack([raw[..., k], raw[..., k + 2]])).long()
    target = torch.from_numpy(LabelReading(regions=regions).indices(raw_slices.numpy(), 4)).long()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, *target.shape[1:], generator=generator, requires_grad=True)
    weights = torch.tensor([0.3, 0.5, 1.1, 2.4])
    loss = SegLoss("regions", 4, weights, membership=regions.membership())(logits, target)
    # By hand: the region targets from the raw values, BCE and batch soft Dice per region, weighted means.
    region_target = torch.stack([torch.isin(raw_slices, torch.tensor(v)) for v in BRATS_REGIONS.values()], 1).float()
    bce = F.binary_cross_entropy_with_logits(logits, region_target, reduction="none").mean(dim=(0, 2, 3))
    dice = soft_dice_per_class(torch.sigmoid(logits), region_target)
    w = weights[1:]
    expected = (w * bce).sum() / w.sum() + (w * (1 - dice)).sum() / w.sum()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # Regions that do not overlap give the plain sigmoid loss.
    plain = torch.randint(0, 3, (2, 16, 16), generator=generator)
    logits2 = torch.randn(2, 2, 16, 16, generator=generator)
    identity = Regions.of({"a": [1], "b": [2]}, [1, 2]).membership()
    torch.testing.assert_close(
        SegLoss("regions", 3, membership=identity)(logits2, plain), SegLoss("sigmoid", 3)(logits2, plain)
    )
    with pytest.raises(ConfigError, match=r"regions mode needs the regions' membership"):
        SegLoss("regions", 4)


def test_region_probabilities_are_painted_in_order() -> None:
    # Three regions, four pixels: none fires; the outer one; the outer and the inner (skipping the middle); all.
    fg = torch.tensor([[0.2, 0.9, 0.9, 0.8], [0.1, 0.3, 0.4, 0.7], [0.0, 0.2, 0.6, 0.9]])
    probs = torch.cat([1 - fg.amax(0, keepdim=True), fg])
    assert probs_to_labels(probs, "regions", channel_dim=0).tolist() == [0, 1, 3, 3]
    assert probs_to_labels(probs.numpy(), "regions", channel_dim=0).tolist() == [0, 1, 3, 3]
    logits = torch.logit(fg.clamp(1e-4, 1 - 1e-4)).unsqueeze(0)
    torch.testing.assert_close(logits_to_probs(logits, "regions")[0], probs, atol=1e-4, rtol=0)


def test_metrics_score_each_region_as_its_own_mask() -> None:
    raw = _brats_label()
    regions = Regions.of(BRATS_REGIONS, BRATS_ORDER)
    reading = LabelReading(regions=regions)
    # A prediction that misses the enhancing rim's outer layer and calls part of the oedema necrosis.
    from scipy import ndimage

    pred_raw = raw.copy()
    pred_raw[(raw == 4) & ~ndimage.binary_erosion(raw == 4)] = 1
    pred_raw[(raw == 2) & (np.indices(raw.shape)[0] % 3 == 0)] = 1
    gt, pred = reading.indices(raw, 4), reading.indices(pred_raw, 4)
    rows = case_metrics(pred, gt, (1.0, 1.0, 1.0), regions.classes, membership=regions.membership())
    assert [r["class"] for r in rows] == list(BRATS_REGIONS)
    for row, values in zip(rows, BRATS_REGIONS.values(), strict=True):
        p, g = np.isin(pred_raw, values), np.isin(raw, values)
        assert row["dice"] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))
        assert row["vol_gt_ml"] == pytest.approx(g.sum() / 1000.0)
    assert rows[0]["dice"] == pytest.approx(1.0)  # the whole tumour is unchanged
    assert rows[1]["dice"] < 1.0 and rows[2]["dice"] < 1.0


def _nnunet_v2_regions(sample_hippo: Path, root: Path, n: int = 9) -> list[str]:
    """An nnU-Net v2 raw folder of ``n`` sample hippocampus cases whose dataset.json declares nested regions."""
    return nnunet_v2_copy(sample_hippo, root, HIPPO_LABELS, n=n, regions_class_order=HIPPO_ORDER)


def test_dataset_json_regions_are_discovered_and_clash_with_label_values(sample_hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root, n=3)
    spec = discover_cases(DataConfig(root=root))
    assert spec.classes == ["background", "hippocampus", "posterior"]
    assert spec.label_values is None  # painted as 1 and 2: class k written as k
    assert spec.regions == Regions(names=("hippocampus", "posterior"), members=((1, 2), (2,)), paint=(1, 2))
    # Stored values for classes the regions replace are refused (data.classes instead replaces the regions).
    with pytest.raises(ConfigError, match=r"declares regions \['hippocampus', 'posterior'\], written with its "):
        discover_cases(DataConfig(root=root, label_values=[0, 1, 2]))
    # data.classes that repeat the regions' names (as a copied config may) keep the regions.
    same = discover_cases(DataConfig(root=root, classes=["background", "Hippocampus", "posterior"]))
    assert same.regions == spec.regions and same.classes == spec.classes


def test_region_set_trains_predicts_and_evaluates_per_region(sample_hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root)
    result = run_tiny(tmp_path / "run", epochs=2, root=str(root))
    assert result is not None
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["mode"] == "regions" and ckpt["classes"] == ["background", "hippocampus", "posterior"]
    assert ckpt["regions"] == {"names": ["hippocampus", "posterior"], "members": [[1, 2], [2]], "paint": [1, 2]}
    assert ckpt["model"]["out_channels"] == 2
    lines = (run / "evaluation" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert rows and {r["class"] for r in rows} == {"hippocampus", "posterior"}
    masks = sorted((run / "predictions").glob("*.nii.gz"))
    assert masks
    table = (run / "predictions" / "predictions.csv").read_text().splitlines()
    predicted = {r["case"]: r for r in (dict(zip(table[0].split(","), t.split(","), strict=True)) for t in table[1:])}
    for mask in masks:
        pred = np.asarray(nib.load(mask).dataobj)
        assert set(np.unique(pred).tolist()) <= {0, 1, 2}
        cid = mask.name[: -len(".nii.gz")]
        gt = np.asarray(nib.load(sample_hippo / "labelsTr" / mask.name).dataobj)
        voxel_ml = float(np.prod(nib.load(mask).header.get_zooms()[:3])) / 1000.0
        for name, values in (("hippocampus", [1, 2]), ("posterior", [2])):
            p, g = np.isin(pred, values), np.isin(gt, values)
            (row,) = [r for r in rows if r["case"] == cid and r["class"] == name]
            assert float(row["dice"]) == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), abs=1e-6)
            # Volumes are each region's: the whole hippocampus, not its painted anterior part.
            assert int(predicted[cid][f"voxels_{name}"]) == int(p.sum())
            assert float(row["vol_gt_ml"]) == pytest.approx(g.sum() * voxel_ml)
    # The plan's statistics and the QC reference count each region's voxels too.
    plan = json.loads((run / "plan.json").read_text())
    assert plan["labels"]["regions"] == {"hippocampus": [1, 2], "posterior": [2]}
    assert plan["labels"]["regions_class_order"] == [1, 2] and plan["labels"]["loss_mode"] == "regions"
    assert "each region's own voxels" in plan["reasons"]["class_weights"]
    fingerprint = plan["fingerprint"]
    frequencies = fingerprint["class_frequencies"]
    assert frequencies["hippocampus"] > frequencies["posterior"] > 0
    assert frequencies["background"] + frequencies["hippocampus"] == pytest.approx(1.0)  # they split the voxels
    report = (run / "report.html").read_text()
    assert "hippocampus = {1, 2} written as 1; posterior = {2} written as 2" in report
    # The report's run state is the run's (last.pt), not that of the best epoch, which may be an earlier one.
    from medseg.evaluation.html_report import render_report

    earlier = {**ckpt, "epoch": 1, "stop_reason": ""}
    torch.save(earlier, run / "checkpoints" / "best.pt")
    rendered = render_report(run)
    assert "<b>2</b>epochs run" in rendered and "<b>epochs</b>stopped by" in rendered
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    volumes = ckpt["qc_reference"]["label_volume_ml"]
    assert all(h > p for h, p in zip(volumes["hippocampus"], volumes["posterior"], strict=True))


def test_region_models_refuse_outputs_that_name_segments(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.inference import Predictor
    from medseg.inference.batch import predict_folder
    from medseg.runner import evaluation_pairs

    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root, n=4)
    run_tiny(tmp_path / "run", epochs=1, root=str(root))
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    predictor = Predictor.from_checkpoint(best, device="cpu")
    with pytest.raises(ConfigError, match=r"output_format seg.nrrd: the model predicts overlapping regions"):
        predict_folder(predictor, root / "imagesTr", tmp_path / "seg", output_format="seg.nrrd")
    # Evaluation from the checkpoint alone (evaluation.ground_truth) reads the regions the model was trained on.
    cfg = config_from_dict(
        {"output": {"dir": str(tmp_path / "run")}, "evaluation": {"ground_truth": str(root / "labelsTr")}},
        base_dir=tmp_path,
    )
    _, classes, reading = evaluation_pairs(cfg)
    assert classes == ["background", "hippocampus", "posterior"] and reading.regions is not None


def test_resume_refuses_other_regions(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.errors import CheckpointError

    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root, n=4)
    run_tiny(tmp_path / "run", epochs=1, root=str(root))
    # The same names and written values, other members: the checkpoint's regions are not these.
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "hippocampus": [1], "posterior": [2]}
    (root / "dataset.json").write_text(json.dumps(dataset))
    from medseg.runner import run_stages

    cfg = config_from_dict(
        {
            "data": {"root": str(root), "val_fraction": 0.34},
            "model": {"base_features": 4},
            "training": {"epochs": 2, "resume": True, "device": "cpu", "precision": "fp32", "num_workers": 0},
            "output": {"dir": str(tmp_path / "run")},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(CheckpointError, match=r"Cannot resume from .*: the regions \{'names'"):
        run_stages(cfg, ["train"])


def test_config_replaces_the_regions_a_dataset_json_declares(
    sample_hippo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root, n=3)
    # Plain classes from the same files ...
    spec = discover_cases(DataConfig(root=root, classes=["background", "Anterior", "Posterior"]))
    assert spec.regions is None and spec.classes == ["background", "Anterior", "Posterior"]
    assert spec.label_values is None
    assert "data.classes replaces the regions" in caplog.text
    # ... or other regions, even where dataset.json's could not be read (no regions_class_order).
    dataset = json.loads((root / "dataset.json").read_text())
    del dataset["regions_class_order"]
    (root / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ConfigError, match=r"'regions_class_order' is missing"):
        discover_cases(DataConfig(root=root))
    own = DataConfig(root=root, regions={"whole": [1, 2], "front": [1]}, regions_class_order=[2, 1])
    spec = discover_cases(own)
    assert spec.classes == ["background", "whole", "front"] and spec.label_values == [0, 2, 1]


def test_region_outputs_that_would_fail_after_training_are_refused_before(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.runner import check_setup

    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root, n=3)

    def cfg(**inference: object) -> object:
        return config_from_dict(
            {"data": {"root": str(root)}, "inference": inference, "output": {"dir": str(tmp_path / "run")}},
            base_dir=tmp_path,
        )

    with pytest.raises(ConfigError, match=r"output_format seg.nrrd: the model predicts overlapping regions"):
        check_setup(cfg(output_format="seg.nrrd"), ["train", "predict"])  # type: ignore[arg-type]
    for allowed in ("nrrd", "rtstruct"):  # SEG segments and RTSTRUCT ROIs hold each region's whole mask
        check_setup(cfg(output_format=allowed), ["train", "predict"])  # type: ignore[arg-type]


def test_summary_stage_builds_the_region_loss(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.runner import run_stages

    root = tmp_path / "Dataset002_Regions"
    _nnunet_v2_regions(sample_hippo, root, n=3)
    cfg = config_from_dict(
        {"data": {"root": str(root)}, "model": {"base_features": 4}, "output": {"dir": str(tmp_path / "run")}},
        base_dir=tmp_path,
    )
    report = run_stages(cfg, ["summary"]).summary
    assert report is not None and report.spec.out_channels == 2  # one output per region
    assert report.path is not None and report.path.is_file()


def test_qc_confidence_of_a_region_model_reads_each_region_on_its_own() -> None:
    from medseg.inference.qc import voxel_confidence

    # An enhancing voxel every nested region claims, an oedema voxel only the whole tumour claims, an unsure one.
    fg = np.array([[0.99, 0.99, 0.5], [0.99, 0.01, 0.5], [0.99, 0.01, 0.5]], dtype=np.float32)
    probs = np.concatenate([1 - fg.max(axis=0, keepdims=True), fg])
    confidence, entropy = voxel_confidence(probs, regions=True)
    np.testing.assert_allclose(confidence, [0.99, 0.99, 0.5], atol=1e-6)
    assert entropy[0] == pytest.approx(entropy[1]) and entropy[0] < 0.1 and entropy[2] == pytest.approx(1.0)
    # Normalised across channels, as for classes, the sure enhancing voxel would read as a third confident.
    assert voxel_confidence(probs)[0][0] < 0.34


def test_postprocessing_acts_on_each_regions_mask() -> None:
    from medseg.inference.postprocess import apply_postprocessing, decide_postprocessing, fill_holes

    raw = _brats_label()
    regions = Regions.of(BRATS_REGIONS, BRATS_ORDER)
    membership = regions.membership()
    gt = LabelReading(regions=regions).indices(raw, 4)
    tumour = np.argwhere(gt > 0)
    far = tuple(int(v) for v in np.where(tumour.mean(axis=0) < np.array(gt.shape) / 2, np.array(gt.shape) - 12, 4))
    # An enhancing island far from the tumour: outside the largest component of every region.
    island = gt.copy()
    island[far[0] : far[0] + 3, far[1] : far[1] + 3, far[2] : far[2] + 3] = 3
    assert not gt[far[0] : far[0] + 3, far[1] : far[1] + 3, far[2] : far[2] + 3].any()
    box = (slice(far[0], far[0] + 3), slice(far[1], far[1] + 3), slice(far[2], far[2] + 3))
    for region in (3, 1):  # the enhancing region's step, and the whole tumour's, whatever the island is painted as
        cleaned = apply_postprocessing(island, largest_component=[region], membership=membership)
        assert not cleaned[box].any()  # the island became background (nnU-Net's semantics)
        # Elsewhere the step does what it does to the ground truth alone (the tumour's own small pieces go too).
        expected = apply_postprocessing(gt, largest_component=[region], membership=membership)
        outside = np.ones(gt.shape, dtype=bool)
        outside[box] = False
        np.testing.assert_array_equal(cleaned[outside], expected[outside])
    # A hole punched into the tumour core on one slice is filled as the core.
    k = int(np.argmax((gt == 2).sum(axis=(0, 1))))
    holed = gt.copy()
    core = np.argwhere(gt[..., k] == 2)
    i, j = (int(v) for v in core[len(core) // 2])
    inner = ndimage_interior(gt[..., k] == 2)
    assert inner[i, j], "the chosen voxel lies inside the core"
    holed[i, j, k] = 0
    filled = fill_holes(holed, [2], axis=2, membership=membership)
    assert filled[i, j, k] == 2
    # The hole lies in the whole tumour too: filling both regions gives it to the innermost, in any order asked.
    for order in ([1, 2], [2, 1]):
        assert fill_holes(holed, order, axis=2, membership=membership)[i, j, k] == 2
    np.testing.assert_array_equal(
        np.delete(filled.reshape(-1), np.ravel_multi_index((i, j, k), gt.shape)),
        np.delete(gt.reshape(-1), np.ravel_multi_index((i, j, k), gt.shape)),
    )
    # Decided on validation volumes by the mean Dice over all regions: the first region's step removes the island.
    plan = decide_postprocessing([island], [gt], 4, axis=2, membership=membership)
    assert plan == {"largest_component": [1], "fill_holes": []}


def ndimage_interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask whose 4 neighbours are in it too."""
    from scipy import ndimage

    return ndimage.binary_erosion(mask)


def test_dicom_outputs_hold_each_regions_whole_mask(tmp_path: Path) -> None:
    import highdicom as hd

    from medseg.inference.dicom_output import write_dicom_mask
    from medseg.io import load_segmentation, load_volume
    from medseg.io.dicom_seg import DicomWriteOptions
    from medseg.io.dicom_source import source_series

    from .conftest import SAMPLE_DATA

    image = load_volume(SAMPLE_DATA / "dicom" / "HippoCrop_Study1")
    regions = Regions.of({"hippocampus": [1, 2], "posterior": [2]}, [1, 2])
    membership = regions.membership()
    painted = np.zeros(image.shape, np.uint8)
    painted[5:30, 5:45, 8:12] = 1  # the whole hippocampus only
    painted[10:20, 12:30, 9:11] = 2  # the posterior part, inside it
    whole, posterior = painted > 0, painted == 2
    options = DicomWriteOptions()
    seg_path = write_dicom_mask(
        "dicom-seg",
        painted,
        image,
        tmp_path / "s.dcm",
        regions.classes,
        probabilities=None,
        options=options,
        overwrite=False,
        membership=membership,
    )
    seg = hd.seg.segread(seg_path)
    src = source_series(image)
    for number, expected in ((1, whole), (2, posterior)):
        got = seg.get_pixels_by_source_instance(source_sop_instance_uids=src.sop_uids, segment_numbers=[number])
        frames = np.stack([src.frame(expected, n) for n in range(len(src.datasets))])
        np.testing.assert_array_equal(got[..., 0].astype(bool), frames)  # segment 1 holds segment 2's voxels too
    rt_path = write_dicom_mask(
        "rtstruct",
        painted,
        image,
        tmp_path / "rt.dcm",
        regions.classes,
        probabilities=None,
        options=options,
        overwrite=False,
        membership=membership,
    )
    for name, expected in (("hippocampus", whole), ("posterior", posterior)):
        roi = load_segmentation(rt_path, image, ["background", name], ignore_unlisted=True).array
        np.testing.assert_array_equal(roi > 0, expected)


def test_a_region_models_seg_is_read_back_as_painted_classes_and_evaluated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medseg.evaluation import EvalPair, evaluate
    from medseg.inference.dicom_output import write_dicom_mask
    from medseg.io import load_volume, save_mask
    from medseg.io.dicom_seg import DicomWriteOptions

    from .conftest import SAMPLE_DATA

    series = SAMPLE_DATA / "dicom" / "HippoCrop_Study1"
    image = load_volume(series)
    regions = Regions.of({"hippocampus": [1, 2], "posterior": [2]}, [1, 2])
    painted = np.zeros(image.shape, np.uint8)
    painted[5:30, 5:45, 8:12] = 1
    painted[10:20, 12:30, 9:11] = 2
    seg = write_dicom_mask(
        "dicom-seg",
        painted,
        image,
        tmp_path / "case.dcm",
        regions.classes,
        probabilities=None,
        options=DicomWriteOptions(),
        overwrite=False,
        membership=regions.membership(),
    )
    truth = save_mask(painted, like=image, path=tmp_path / "truth" / "case.nii.gz")
    summary = evaluate(
        [EvalPair("case", seg, truth, series)],
        regions.classes,
        tmp_path / "eval",
        overlays=0,
        labels=LabelReading(regions=regions),
    )
    assert summary["n_evaluated"] == 1 and summary["mean_dice"] == pytest.approx(1.0)
    assert "belong to several" not in caplog.text  # the segments overlap by design: no overlap warning
