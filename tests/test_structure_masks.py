"""Structure folders: one binary mask file per structure, named after it (TotalSegmentator's ``segmentations/``),
read as one label map: files matched to classes by name, on the image's grid, binary, in training and
evaluation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import DataConfig
from medseg.data.cases import Case, discover_cases
from medseg.data.label_reading import LabelReading
from medseg.data.prepare import _CaseReader
from medseg.errors import BadCaseError, ConfigError, GeometryMismatchError, MedsegError, SegmentNameError
from medseg.evaluation import evaluate, match_predictions
from medseg.io import load_volume
from medseg.io.segmentation import label_kind, load_label
from tests.conftest import run_tiny

#: TotalSegmentator v2 numbering of the structures written as files below.
STRUCTURES = {"spleen": 1, "kidney_right": 2, "liver": 5, "aorta": 52}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on a shared 2-core machine


def _totalseg_case(totalseg_dir: Path, root: Path) -> tuple[Path, Path, np.ndarray]:
    """A case folder as TotalSegmentator leaves one: the CT and ``segmentations/<structure>.nii.gz`` (binary)."""
    case = root / "ct_1"
    (case / "segmentations").mkdir(parents=True)
    shutil.copy(totalseg_dir / "example_ct_sm.nii.gz", case / "ct.nii.gz")
    seg = nib.load(totalseg_dir / "example_seg.nii.gz")
    stored = np.asarray(seg.dataobj)
    for name, value in STRUCTURES.items():
        mask = (stored == value).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, seg.affine, seg.header), case / "segmentations" / f"{name}.nii.gz")
    return case / "ct.nii.gz", case / "segmentations", stored


def test_a_structure_folder_reads_as_one_label_map(totalseg_dir: Path, tmp_path: Path) -> None:
    image, folder, stored = _totalseg_case(totalseg_dir, tmp_path)
    assert label_kind(folder) == "structures" and label_kind(image) == "map"
    classes = ["background", "liver", "Aorta"]  # matched by name, case-insensitively, in class order
    label = load_label(folder, image, classes, ignore_unlisted=True)
    np.testing.assert_array_equal(label.array, np.select([stored == 5, stored == 52], [1, 2], 0))
    assert np.allclose(label.affine, load_volume(image).affine)
    # The other structures are refused unless unlisted labels are background; a class without a file always.
    with pytest.raises(SegmentNameError, match=r"'kidney_right', 'spleen' match\(es\) none .* data.unlisted_labels"):
        load_label(folder, image, classes)
    with pytest.raises(SegmentNameError, match=r"no structure file\(s\) for class\(es\) \['pancreas'\]"):
        load_label(folder, image, [*classes, "pancreas"], ignore_unlisted=True)


def test_a_structure_file_must_be_binary_and_on_the_grid(totalseg_dir: Path, tmp_path: Path) -> None:
    image, folder, stored = _totalseg_case(totalseg_dir, tmp_path)
    ref = nib.load(folder / "liver.nii.gz")
    nib.save(
        nib.Nifti1Image(np.where(stored == 5, 2, stored == 52).astype(np.uint8), ref.affine), folder / "liver.nii.gz"
    )
    with pytest.raises(MedsegError, match=r"liver.nii.gz' is not a binary mask: it holds the values \[1, 2\]"):
        load_label(folder, image, ["background", "liver"], ignore_unlisted=True)
    shifted = ref.affine.copy()
    shifted[:3, 3] += 1.5  # half a voxel (3 mm voxels)
    nib.save(nib.Nifti1Image((stored == 5).astype(np.uint8), shifted), folder / "liver.nii.gz")
    # Files of one folder share one grid: a file off it is refused naming both files.
    with pytest.raises(GeometryMismatchError, match=r"liver.nii.gz' .* is not on the grid of '.*aorta.nii.gz'"):
        load_label(folder, image, ["background", "liver", "aorta"], ignore_unlisted=True)
    # The folder's grid off its image's is refused as any label off its image's grid (medseg.data.checks).
    case = Case("ct_1", image, folder)
    reader = _CaseReader(load_volume, 2, classes=["background", "liver"], labels=LabelReading(unlisted_background=True))
    with pytest.raises(BadCaseError, match=r"label '.*segmentations'\): image geometry differs: grid corners"):
        reader.read(case)


def test_overlapping_structures_keep_the_higher_class(
    totalseg_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image, folder, stored = _totalseg_case(totalseg_dir, tmp_path)
    ref = nib.load(folder / "liver.nii.gz")
    nib.save(
        nib.Nifti1Image(((stored == 5) | (stored == 52)).astype(np.uint8), ref.affine, ref.header),
        folder / "liver.nii.gz",
    )
    with caplog.at_level(logging.WARNING):
        label = load_label(folder, image, ["background", "liver", "aorta"], ignore_unlisted=True)
    assert f"{int((stored == 52).sum())} voxel(s) belong to several structures" in caplog.text
    np.testing.assert_array_equal(label.array, np.select([stored == 52, stored == 5], [2, 1], 0))


def test_folders_layout_trains_from_and_evaluates_against_structure_folders(totalseg_dir: Path, tmp_path: Path) -> None:
    image, folder, stored = _totalseg_case(totalseg_dir, tmp_path / "set")
    classes = ["background", "liver", "aorta"]
    data = DataConfig(
        root=tmp_path / "set",
        layout="folders",
        channel_patterns=["ct*"],
        label_pattern="segmentations",
        classes=classes,
        unlisted_labels="background",
    )
    (case,) = discover_cases(data).cases
    assert case.label == folder and case.image == image
    reading = LabelReading.of(data, None)
    _, label, _ = _CaseReader(load_volume, 3, classes=classes, labels=reading).read(case)
    np.testing.assert_array_equal(label, np.select([stored == 5, stored == 52], [1, 2], 0))  # RAS: no reorientation
    # Evaluation against the structure folder: a mask of the liver and aorta (TotalSegmentator's values mapped).
    pred = tmp_path / "pred" / "ct_1.nii.gz"
    pred.parent.mkdir()
    ref = nib.load(image)
    nib.save(nib.Nifti1Image(np.select([stored == 5, stored == 52], [1, 2], 0).astype(np.uint8), ref.affine), pred)
    summary = evaluate([("ct_1", pred, folder, image)], classes, tmp_path / "eval", overlays=0, labels=reading)
    assert summary["n_evaluated"] == 1 and summary["mean_dice"] == pytest.approx(1.0)
    # A ground-truth folder of structure folders, one per case (TotalSegmentator's output folders renamed).
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    shutil.copytree(folder, gt_dir / "ct_1")
    (pair,) = match_predictions(pred.parent, gt_dir)
    assert pair.gt == gt_dir / "ct_1"
    again = evaluate([pair._replace(image=image)], classes, tmp_path / "eval2", overlays=0, labels=reading)
    assert again["mean_dice"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- a run, end to end


def _as_folders(sample_hippo: Path, root: Path, n: int) -> None:
    """The first ``n`` sample cases as case folders: ``image.nii.gz`` and ``segmentations/{Anterior,Posterior}``."""
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]
    for cid in ids:
        case = root / cid
        (case / "segmentations").mkdir(parents=True)
        shutil.copy(sample_hippo / "imagesTr" / f"{cid}.nii.gz", case / "image.nii.gz")
        label = nib.load(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
        classes = np.rint(label.get_fdata()).astype(np.uint8)
        for k, name in ((1, "Anterior"), (2, "Posterior")):
            mask = (classes == k).astype(np.uint8)
            nib.save(nib.Nifti1Image(mask, label.affine, label.header), case / "segmentations" / f"{name}.nii.gz")


@pytest.mark.slow
def test_a_run_on_structure_folders_trains_as_on_label_maps(sample_hippo: Path, tmp_path: Path) -> None:
    _as_folders(sample_hippo, tmp_path / "folders", 3)
    maps = run_tiny(
        tmp_path / "run_msd",
        epochs=3,
        root=str(sample_hippo),
        max_cases=3,
        classes=["background", "Anterior", "Posterior"],
    )
    folders = run_tiny(
        tmp_path / "run_folders",
        epochs=3,
        root=str(tmp_path / "folders"),
        layout="folders",
        channel_patterns=["image*"],
        label_pattern="segmentations",
        classes=["background", "Anterior", "Posterior"],
    )
    a = torch.load(tmp_path / "run_msd" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "run_folders" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key  # the same labels, so the same training, bit for bit
    scored = [run.evaluate for run in (maps, folders)]  # type: ignore[attr-defined]
    assert scored[0]["n_evaluated"] == scored[1]["n_evaluated"] == 1
    assert scored[1]["classes"] == scored[0]["classes"]  # the structure folders scored as the label maps

    # Without data.classes the structure folders name the classes (file-name order: Anterior, Posterior), and the
    # run is the same, bit for bit. Its evaluation draws overlays on the case's image (ct file), not on the case
    # folder that prediction was given.
    unnamed = {"layout": "folders", "channel_patterns": ["image*"], "label_pattern": "segmentations"}
    named = run_tiny(tmp_path / "run_unnamed", epochs=3, root=str(tmp_path / "folders"), **unnamed)
    c = torch.load(tmp_path / "run_unnamed" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    for key, value in a.items():
        assert torch.equal(value, c[key]), key
    assert named.evaluate["classes"] == scored[0]["classes"]
    from medseg.config import config_from_dict
    from medseg.runner import evaluation_pairs

    data = {"root": str(tmp_path / "folders"), **unnamed}
    cfg = config_from_dict({"data": data, "output": {"dir": str(tmp_path / "run_unnamed")}}, base_dir=tmp_path)
    (pair,), classes, _ = evaluation_pairs(cfg)
    assert classes == ["background", "Anterior", "Posterior"]
    assert pair.image == tmp_path / "folders" / pair.case_id / "image.nii.gz"


def test_structure_folders_that_name_different_structures_need_data_classes(sample_hippo: Path, tmp_path: Path) -> None:
    _as_folders(sample_hippo, tmp_path, 3)
    data = DataConfig(root=tmp_path, layout="folders", channel_patterns=["image*"], label_pattern="segmentations")
    assert discover_cases(data).classes == ["background", "Anterior", "Posterior"]
    second, third = sorted(p for p in tmp_path.iterdir())[1:]
    (second / "segmentations" / "Posterior.nii.gz").unlink()
    shutil.copy(third / "segmentations" / "Posterior.nii.gz", third / "segmentations" / "tail.nii.gz")
    with pytest.raises(
        ConfigError,
        match=rf"case '{second.name}' lacks Posterior against case '.*'\. Of the 3 labelled cases, all name "
        r"Anterior; some name Posterior \(2\)",
    ):
        discover_cases(data)
    (second / "segmentations" / "Posterior.nii.gz").write_bytes(
        (third / "segmentations" / "Posterior.nii.gz").read_bytes()
    )
    with pytest.raises(ConfigError, match=rf"case '{third.name}' adds tail against"):
        discover_cases(data)
    # data.classes, as always, decides; the extra file is then refused or left out as for any structure folder
    assert discover_cases(data.model_copy(update={"classes": ["background", "Anterior"]})).classes == [
        "background",
        "Anterior",
    ]
