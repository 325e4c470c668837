"""Multi-channel inputs on real BraTS files: pairing in the three layouts, per-channel checks and errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.normalization import NormalizationParams, normalize
from medseg.data.prepare import prepare_cases, prepare_training_data
from medseg.data.slicing import channels_to_slices, slices_to_volume
from medseg.errors import BadCaseError, ConfigError
from medseg.inference.batch import predict_folder
from medseg.inference.predictor import ModelSpec, Predictor
from medseg.io import save_mask
from medseg.io.channels import ChannelMismatchError, MissingChannelError, load_channels
from medseg.models.unet import UNet
from tests.conftest import SHARED_DATA

BRATS = SHARED_DATA / "BraTS2015_DeepMedic_examples"
CLASSES = ["background", "necrosis", "oedema", "non_enhancing", "enhancing"]
PATTERNS = ["flair*", "t1c*"]
CROP = (slice(80, 144), slice(80, 144), slice(70, 78))  # 64 x 64 x 8 around the tumours: small and fast


def _require_brats() -> Path:
    if not BRATS.exists():
        pytest.skip(f"needs real data at {BRATS} (../shared/data is not part of a fresh clone)")
    return BRATS


def _crop(src: Path, dst: Path, *, shift_mm: float = 0.0, add: float = 0.0) -> np.ndarray:
    img = nib.load(src)
    data = np.asarray(img.dataobj)[CROP] + add
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([s.start for s in CROP]) + img.affine[:3, 3]
    affine[0, 3] += shift_mm
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(img.get_data_dtype()), affine), dst)
    return data


@pytest.fixture
def folders_root(tmp_path: Path) -> Path:
    """Three BraTS case folders cropped small, files named as in the original."""
    root = tmp_path / "brats"
    for case in sorted(p for p in _require_brats().iterdir() if p.is_dir())[:3]:
        for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"):
            _crop(case / name, root / case.name / name)
        shutil.copy(case / "brainmask.nii.gz", root / case.name / "brainmask.nii.gz")
    return root


def _folders_cfg(root: Path) -> DataConfig:
    return DataConfig(
        root=root, layout="folders", channel_patterns=PATTERNS, label_pattern="otmulticlass*", classes=CLASSES
    )


def test_folders_layout_pairs_channels_in_pattern_order(folders_root: Path) -> None:
    spec = discover_cases(_folders_cfg(folders_root))
    assert spec.channels == ["flair", "t1c"]
    assert len(spec.cases) == 3
    for case in spec.cases:
        assert [p.name for p in case.channel_files] == ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]
        assert case.label is not None and case.label.name == "OTMultiClass.nii.gz"
        assert case.id == case.image.parent.name
    # Float labels with integral values are accepted; each channel normalised on its own; channel order kept.
    params = NormalizationParams("zscore", nonzero=True)
    prepared = prepare_cases(spec.cases[:1], params, axis=2, n_classes=5, channels=spec.channels)[0]
    assert prepared.n_input_channels == 2 and prepared.image.shape[1] == 2
    flair = np.asarray(nib.load(spec.cases[0].channel_files[0]).dataobj)
    t1c = np.asarray(nib.load(spec.cases[0].channel_files[1]).dataobj)
    # BraTS files are LPS: canonical order flips the first two axes.
    canon = [np.flip(np.flip(a, 0), 1) for a in (flair, t1c)]
    for c in range(2):
        expected = np.moveaxis(normalize(canon[c], params), 2, 0)
        np.testing.assert_allclose(prepared.image[:, c], expected, atol=1e-6)
    assert set(np.unique(prepared.label)) <= set(range(5))


def test_context_is_gathered_not_stored(folders_root: Path) -> None:
    """Prepared cases keep each slice once per channel; the network's 2.5D input is gathered from them and equals
    cutting the volumes with context (channel-major, edge slices replicated)."""
    spec = discover_cases(_folders_cfg(folders_root))
    params = NormalizationParams("zscore", nonzero=True)
    flat = prepare_cases(spec.cases[:1], params, axis=2, n_classes=5, channels=spec.channels)[0]
    prepared = prepare_cases(spec.cases[:1], params, axis=2, context=2, n_classes=5, channels=spec.channels)[0]
    assert prepared.image.shape == flat.image.shape and prepared.context == 2 and flat.context == 0
    np.testing.assert_array_equal(prepared.image, flat.image)
    volumes = np.stack([slices_to_volume(prepared.image[:, c], 2) for c in range(2)])
    expected = channels_to_slices(volumes, 2, context=2)
    assert prepared.network_channels == 10
    np.testing.assert_array_equal(prepared.network_input(), expected)
    # A batch's share (validation gathers batch by batch), the edges included.
    n = prepared.n_slices
    for start, stop in ((0, 3), (5, 9), (n - 2, n)):
        np.testing.assert_array_equal(prepared.network_input(start, stop), expected[start:stop])
    np.testing.assert_array_equal(flat.network_input(), flat.image)


def test_a_cut_batch_equals_its_items_stacked(folders_root: Path) -> None:
    """The training loader cuts each batch at once (``crop_batch``); with the same seed it gives the items
    ``crop`` gives one by one: two channels with 2.5D context, windows inside and across the slice edges."""
    from medseg.data.dataset import SliceDataset

    spec = discover_cases(_folders_cfg(folders_root))
    params = NormalizationParams("zscore", nonzero=True)
    prepared = prepare_cases(spec.cases[:2], params, axis=2, context=2, n_classes=5, channels=spec.channels)
    dataset = SliceDataset(prepared, crop_hw=(64, 48), foreground_fraction=0.5, pad_multiple=16)
    indices = np.random.default_rng(0).integers(0, len(dataset), 24).tolist()
    dataset.reseed(7)
    batch = dataset.crop_batch(indices)
    dataset.reseed(7)
    items = [dataset.crop(i) for i in indices]
    assert batch["image"].shape == (24, 10, 64, 48) and batch["label"].dtype == torch.int64
    torch.testing.assert_close(batch["image"], torch.stack([item["image"] for item in items]), rtol=0, atol=0)
    torch.testing.assert_close(batch["label"], torch.stack([item["label"] for item in items]), rtol=0, atol=0)
    assert int(batch["label"].max()) > 0 and float(batch["image"].abs().sum()) > 0


def test_nnunet_naming_pairs_0000_and_0001(folders_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "nnunet"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in sorted(folders_root.iterdir()):
        shutil.copy(case / "Flair_subtrMeanDivStd.nii.gz", root / "imagesTr" / f"{case.name}_0000.nii.gz")
        shutil.copy(case / "T1c_subtrMeanDivStd.nii.gz", root / "imagesTr" / f"{case.name}_0001.nii.gz")
        shutil.copy(case / "OTMultiClass.nii.gz", root / "labelsTr" / f"{case.name}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "FLAIR", "1": "T1c"},
                "labels": {name: i for i, name in enumerate(CLASSES)},
                "file_ending": ".nii.gz",
            }
        )
    )
    spec = discover_cases(DataConfig(root=root))
    assert spec.channels == ["FLAIR", "T1c"]
    for case in spec.cases:
        assert [p.name for p in case.channel_files] == [f"{case.id}_0000.nii.gz", f"{case.id}_0001.nii.gz"]
    # Batch prediction of imagesTr: one job per case (the _0001 files go with their _0000), masks named by case.
    torch.manual_seed(0)
    spec2 = ModelSpec(
        classes=tuple(CLASSES),
        mode="softmax",
        normalization=NormalizationParams("zscore"),
        slice_axis=2,
        context_slices=0,
        channels=("FLAIR", "T1c"),
    )
    predictor = Predictor(UNet(2, 5, base_features=4), spec2, device="cpu", precision="fp32")
    result = predict_folder(predictor, root / "imagesTr", tmp_path / "pred", progress=False)
    assert result.n_ok == 3 and result.n_failed == 0
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == [f"{c.id}.nii.gz" for c in spec.cases]
    # A missing _0001 file is a named bad case.
    (root / "imagesTr" / f"{spec.cases[0].id}_0001.nii.gz").unlink()
    with pytest.raises(MissingChannelError, match=r"_0001\.nii\.gz"):
        discover_cases(DataConfig(root=root))


def _msd_4d(folders_root: Path, root: Path) -> Path:
    """The cropped BraTS cases as an MSD task: one 4D NIfTI per case (FLAIR, T1c on the 4th axis)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case in sorted(folders_root.iterdir()):
        flair = nib.load(case / "Flair_subtrMeanDivStd.nii.gz")
        t1c = nib.load(case / "T1c_subtrMeanDivStd.nii.gz")
        four = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], axis=-1)
        nib.save(nib.Nifti1Image(four, flair.affine), root / "imagesTr" / f"{case.name}.nii.gz")
        shutil.copy(case / "OTMultiClass.nii.gz", root / "labelsTr" / f"{case.name}.nii.gz")
        training.append({"image": f"./imagesTr/{case.name}.nii.gz", "label": f"./labelsTr/{case.name}.nii.gz"})
    labels = {str(i): n for i, n in enumerate(CLASSES)}
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "FLAIR", "1": "T1c"}, "labels": labels, "training": training})
    )
    return root


def test_msd_4d_nifti_channels_on_the_fourth_axis(folders_root: Path, tmp_path: Path) -> None:
    root = _msd_4d(folders_root, tmp_path / "msd")
    spec = discover_cases(DataConfig(root=root))
    assert spec.channels == ["FLAIR", "T1c"] and all(c.channel_files == () for c in spec.cases)
    stack = load_channels([spec.cases[0].image], spec.channels)
    ref = np.asarray(nib.load(folders_root / spec.cases[0].id / "T1c_subtrMeanDivStd.nii.gz").dataobj)
    np.testing.assert_array_equal(stack.volumes[1].array, ref)
    data = prepare_training_data(
        spec.cases, [], 5, PreprocessingConfig(nonzero=True), classes=CLASSES, channels=spec.channels
    )
    assert data.plan is not None and data.plan.channels == ["FLAIR", "T1c"]
    assert all(p.image.shape[1] == 2 for p in data.train)
    assert len(data.plan.fingerprint["intensities"]) == 2  # type: ignore[index]
    with pytest.raises(MissingChannelError, match="holds 2 channel"):
        load_channels([spec.cases[0].image], ["a", "b", "c"])


def test_missing_channel_is_a_named_bad_case(folders_root: Path) -> None:
    victim = sorted(folders_root.iterdir())[1]
    (victim / "T1c_subtrMeanDivStd.nii.gz").unlink()
    with pytest.raises(MissingChannelError, match=rf"{victim.name}.*no file matches the channel pattern 't1c\*'"):
        discover_cases(_folders_cfg(folders_root))
    skipping = _folders_cfg(folders_root).model_copy(update={"skip_bad_cases": True})
    spec = discover_cases(skipping)
    assert [s.id for s in spec.skipped] == [victim.name] and len(spec.cases) == 2


def test_channel_on_another_grid_names_the_channel_and_the_shift(folders_root: Path) -> None:
    case = sorted(folders_root.iterdir())[0]
    orig = _require_brats() / case.name / "T1c_subtrMeanDivStd.nii.gz"
    _crop(orig, case / "T1c_subtrMeanDivStd.nii.gz", shift_mm=2.5)
    spec = discover_cases(_folders_cfg(folders_root))
    with pytest.raises(ChannelMismatchError, match=r"channel 't1c'.*up to 2\.5 mm"):
        load_channels(list(spec.cases[0].channel_files), spec.channels, case_id=case.name)
    with pytest.raises(BadCaseError, match=r"channel 't1c'"):
        prepare_cases(spec.cases[:1], NormalizationParams("zscore"), 2, n_classes=5, channels=spec.channels)


def test_non_integral_float_label_is_a_named_error(folders_root: Path) -> None:
    case = sorted(folders_root.iterdir())[0]
    _crop(_require_brats() / case.name / "OTMultiClass.nii.gz", case / "OTMultiClass.nii.gz", add=0.5)
    spec = discover_cases(_folders_cfg(folders_root))
    with pytest.raises(BadCaseError, match=r"OTMultiClass\.nii\.gz.*non-integer values"):
        prepare_cases(spec.cases[:1], NormalizationParams("zscore"), 2, n_classes=5, channels=spec.channels)


def test_batch_prediction_of_case_folders_skips_a_folder_lacking_a_channel(folders_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(
        classes=tuple(CLASSES),
        mode="softmax",
        normalization=NormalizationParams("zscore", nonzero=True),
        slice_axis=2,
        context_slices=0,
        channels=("flair", "t1c"),
        channel_patterns=tuple(PATTERNS),
    )
    predictor = Predictor(UNet(2, 5, base_features=4), spec, device="cpu", precision="fp32")
    victim = sorted(folders_root.iterdir())[2]
    (victim / "Flair_subtrMeanDivStd.nii.gz").unlink()
    result = predict_folder(predictor, folders_root, tmp_path / "out", progress=False)
    assert result.n_ok == 2 and result.n_failed == 1
    failed = [r for r in result.rows if r.get("status") == "failed"]
    assert failed[0]["case"] == victim.name and "flair*" in failed[0]["error"]
    for case in sorted(folders_root.iterdir())[:2]:
        mask = nib.load(tmp_path / "out" / f"{case.name}.nii.gz")
        ref = nib.load(case / "Flair_subtrMeanDivStd.nii.gz")
        assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine)
    # A single-channel scan given to a two-channel model: a named error.
    with pytest.raises(ConfigError, match="needs 2 channels"):
        predictor.predict(load_channels([victim / "T1c_subtrMeanDivStd.nii.gz"], ["t1c"]).reference)


def _run_all_stages(config: str, root: Path, tmp_path: Path) -> tuple[Any, list[dict[str, str]]]:
    """``configs/<config>`` shortened on the cropped cases (2 training, 1 validation) through train, predict and
    evaluate; checks the QC reference was measured, the validation case predicted (with a QC score) and scored.

    Returns:
        The run's result and its ``predictions.csv`` rows.
    """
    from medseg.config import load_config
    from medseg.models.checkpoint import load_checkpoint
    from medseg.runner import RunLayout, run_stages

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(
        repo / "configs" / config,
        [
            f"data.root={root}",
            "data.val_fraction=0.34",
            "model.base_features=4",
            "training.epochs=1",
            "training.max_minutes=null",
            "training.device=cpu",
            "inference.device=cpu",
            "evaluation.overlays=0",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    result = run_stages(cfg, ["train", "predict", "evaluate"])
    layout = RunLayout(cfg.output.dir)
    reference = load_checkpoint(layout.best_checkpoint)["qc_reference"]
    assert reference["n_train"] == 2 and reference["n_val"] == 1
    (val,) = result.train.val_cases
    rows = list(csv.DictReader(layout.predictions_csv.open()))
    assert [(r["case"], r["status"]) for r in rows] == [(val.id, "ok")] and rows[0]["qc_score"] != ""
    assert result.evaluate is not None and result.evaluate["n_evaluated"] == 1
    return result, rows


def test_two_channel_run_trains_with_a_qc_reference_predicts_and_evaluates(
    folders_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """configs/brats_folders.yaml shortened on the cropped cases: the QC reference is measured with the
    checkpoint's own two-channel predictor, the validation case's mask is named after its folder and scored."""
    from medseg.config import load_config
    from medseg.runner import run_stages

    result, _ = _run_all_stages("brats_folders.yaml", folders_root, tmp_path)
    # Scored against a flat ground-truth folder (evaluation.ground_truth), the overlay is drawn on the case's
    # first channel: the prediction's input is its case folder, which is no scan.
    (val,) = result.train.val_cases
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(folders_root / val.id / "OTMultiClass.nii.gz", truth / f"{val.id}.nii.gz")
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(
        repo / "configs" / "brats_folders.yaml",
        [f"data.root={folders_root}", f"evaluation.ground_truth={truth}", f"output.dir={tmp_path / 'run'}"],
    )
    with caplog.at_level("WARNING"):
        summary = run_stages(cfg, ["evaluate"]).evaluate
    assert summary is not None and summary["n_evaluated"] == 1 and summary["overlays"]
    assert "drawn on the labels" not in caplog.text


def test_msd_4d_task_runs_end_to_end_from_a_copy_of_the_hippocampus_config(folders_root: Path, tmp_path: Path) -> None:
    """A new user's copy of configs/hippocampus.yaml pointed at an MSD task whose images are 4D (channels on the
    4th axis, as in MSD BrainTumour and Prostate). The trainer's QC recording reader once took no ``channel`` and
    stopped such a run with a TypeError before its first epoch."""
    result, rows = _run_all_stages("hippocampus.yaml", _msd_4d(folders_root, tmp_path / "msd"), tmp_path)
    (val,) = result.train.val_cases
    assert nib.load(rows[0]["output"]).shape == nib.load(val.image).shape[:3]


def test_qc_recording_reader_measures_the_first_channel_of_a_4d_file(folders_root: Path, tmp_path: Path) -> None:
    """At prediction QC measures a case's first channel (its reference), so the training reference must too."""
    from medseg.inference.qc import intensity_features
    from medseg.io import load_volume
    from medseg.training.qc_reference import RecordingReader

    root = _msd_4d(folders_root, tmp_path / "msd")
    path = sorted((root / "imagesTr").iterdir())[0]
    recorder = RecordingReader(load_volume, CLASSES)
    stack = load_channels([path], ["FLAIR", "T1c"], recorder)
    flair = intensity_features(np.asarray(stack.volumes[0].array))
    t1c = intensity_features(np.asarray(stack.volumes[1].array))
    assert flair != t1c
    recorded = {k: v for k, v in recorder.images[path].items() if k in flair}
    assert recorded == flair


def test_simpleitk_vector_nifti_holds_its_channels_on_the_fifth_axis(folders_root: Path, tmp_path: Path) -> None:
    # SimpleITK writes a vector image (sitk.Compose) as NIfTI shape (X, Y, Z, 1, C): one time point, C components.
    case = sorted(folders_root.iterdir())[0]
    flair, t1c = (sitk.ReadImage(str(case / n)) for n in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"))
    vector = tmp_path / "case_vector.nii.gz"
    sitk.WriteImage(sitk.Compose(flair, t1c), str(vector))
    assert nib.load(vector).shape[3:] == (1, 2)
    stack = load_channels([vector], ["FLAIR", "T1c"])
    for i, name in enumerate(("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")):
        np.testing.assert_array_equal(stack.volumes[i].array, np.asarray(nib.load(case / name).dataobj))
    assert np.allclose(stack.reference.affine, nib.load(case / "Flair_subtrMeanDivStd.nii.gz").affine, atol=1e-4)
    # A mask written "like" the case (a research script's save_mask(..., like=case)) lies on its first channel.
    out = save_mask(np.zeros(stack.shape, np.uint8), like=stack, path=tmp_path / "mask.nii.gz")
    assert sitk.ReadImage(str(out)).GetSize() == flair.GetSize()
    np.testing.assert_allclose(nib.load(out).affine, stack.reference.affine, atol=1e-5)
