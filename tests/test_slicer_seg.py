"""3D Slicer segmentations (``.seg.nrrd``, two files written by Slicer, from slicerio: tests/data/slicer/README.md)
read by segment name: one layer or several (overlapping segments), any label value, cut to the segments' extent."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.data.cases import Case
from medseg.data.label_reading import LabelReading
from medseg.data.prepare import _CaseReader
from medseg.errors import SegmentNameError
from medseg.evaluation import evaluate
from medseg.io import load_volume
from medseg.io.segmentation import label_kind, load_label
from medseg.io.slicer_seg import is_slicer_segmentation, load_slicer_segmentation

SLICER = Path(__file__).parent / "data" / "slicer"
ONE_LAYER = SLICER / "Segmentation.seg.nrrd"  # segments 1..7; right lung = 5, left lung = 6
TWO_LAYERS = SLICER / "SegmentationOverlapping.seg.nrrd"  # the same on layer 0, "overlapping sphere" = 1 on layer 1
LUNGS = ["background", "Right Lung", "left lung"]  # matched case-insensitively


def _values(path: Path) -> np.ndarray:
    """The file's layer 0 as a plain label map (what a reader blind to the header sees), in medseg's voxel order."""
    return np.asarray(load_volume(path, channel=0 if path == TWO_LAYERS else None).array)


def _copy(path: Path, out: Path, replace: dict[bytes, bytes]) -> Path:
    """``path`` with header text replaced (the NRRD header is plain text before the gzip-encoded data)."""
    data = path.read_bytes()
    head, sep, body = data.partition(b"\n\n")
    for old, new in replace.items():
        assert old in head
        head = head.replace(old, new)
    out.write_bytes(head + sep + body)
    return out


def _image_like(path: Path, out: Path) -> Path:
    """A CT-like image on the segmentation's grid (the grid is all that the label reading needs)."""
    seg = sitk.ReadImage(str(path))
    image = sitk.Image(seg.GetSize(), sitk.sitkInt16)
    image.CopyInformation(seg if seg.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(seg, 0))
    sitk.WriteImage(image, str(out))
    return out


def test_segments_are_read_by_name_not_by_value() -> None:
    assert is_slicer_segmentation(ONE_LAYER) and label_kind(ONE_LAYER) == "slicer"
    raw = _values(ONE_LAYER)
    label = load_slicer_segmentation(ONE_LAYER, LUNGS, ignore_unlisted=True)
    np.testing.assert_array_equal(label.array, np.select([raw == 5, raw == 6], [1, 2], 0))
    np.testing.assert_allclose(label.affine, load_volume(ONE_LAYER).affine)
    with pytest.raises(SegmentNameError, match=r"'ribs', .* match\(es\) none of the classes"):
        load_slicer_segmentation(ONE_LAYER, LUNGS)
    with pytest.raises(SegmentNameError, match=r"no segment\(s\) for class\(es\) \['liver'\]"):
        load_slicer_segmentation(ONE_LAYER, [*LUNGS, "liver"], ignore_unlisted=True)


def test_another_case_with_other_label_values_reads_the_same(tmp_path: Path) -> None:
    # Slicer numbers segments in the order they were drawn: here the left lung was drawn first (value 5).
    swapped = _copy(
        ONE_LAYER,
        tmp_path / "swapped.seg.nrrd",
        {
            b"Segment4_Name:=right lung": b"Segment4_Name:=left lung",
            b"Segment5_Name:=left lung": b"Segment5_Name:=right lung",
        },
    )
    raw = _values(swapped)
    label = load_slicer_segmentation(swapped, LUNGS, ignore_unlisted=True)
    np.testing.assert_array_equal(label.array, np.select([raw == 6, raw == 5], [1, 2], 0))


def test_without_data_classes_the_segment_names_are_the_classes(tmp_path: Path) -> None:
    """Two cases whose segments were drawn in different orders: the classes are the names sorted, the same for
    both, and each case reads its lungs by name; a case that names other segments stops with the difference."""
    from medseg.config import DataConfig
    from medseg.data.cases import discover_cases
    from medseg.errors import ConfigError

    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    _image_like(ONE_LAYER, tmp_path / "images" / "a.nrrd")
    _image_like(ONE_LAYER, tmp_path / "images" / "b.nrrd")
    (tmp_path / "labels" / "a.seg.nrrd").write_bytes(ONE_LAYER.read_bytes())
    swap = {
        b"Segment4_Name:=right lung": b"Segment4_Name:=left lung",
        b"Segment5_Name:=left lung": b"Segment5_Name:=right lung",
    }
    _copy(ONE_LAYER, tmp_path / "labels" / "b.seg.nrrd", swap)
    data = DataConfig(root=tmp_path, layout="glob", image_glob="images/*.nrrd", label_glob="labels/*.seg.nrrd")
    spec = discover_cases(data)
    names = ["cervical vertebral column", "left lung", "lumbar vertebral column", "ribs", "right lung"]
    assert spec.classes == ["background", *names, "thoracic vertebral column", "tissue"]
    raw = {c: _values(tmp_path / "labels" / f"{c}.seg.nrrd") for c in "ab"}
    for case in spec.cases:
        label = _CaseReader(load_volume, len(spec.classes), classes=spec.classes).read(case)[1]
        left, right = (5, 6) if case.id == "b" else (6, 5)  # b's lungs swapped their label values
        assert label is not None
        np.testing.assert_array_equal(label == 2, raw[case.id] == left)  # left lung: class 2 in both cases
        np.testing.assert_array_equal(label == 5, raw[case.id] == right)
    _copy(ONE_LAYER, tmp_path / "labels" / "b.seg.nrrd", {b"Segment6_Name:=tissue": b"Segment6_Name:=fat"})
    with pytest.raises(ConfigError, match=r"case 'b' lacks tissue; adds fat against case 'a'"):
        discover_cases(data)


def test_overlapping_segments_on_two_layers(caplog: pytest.LogCaptureFixture) -> None:
    raw0 = _values(TWO_LAYERS)
    raw1 = np.asarray(load_volume(TWO_LAYERS, channel=1).array)
    classes = ["background", "left lung", "overlapping sphere"]
    with caplog.at_level(logging.WARNING):
        label = load_slicer_segmentation(TWO_LAYERS, classes, ignore_unlisted=True)
    overlap = int(np.count_nonzero((raw0 == 6) & (raw1 == 1)))
    assert overlap > 0 and f"{overlap} voxel(s) belong to several segments" in caplog.text
    np.testing.assert_array_equal(label.array, np.select([raw1 == 1, raw0 == 6], [2, 1], 0))  # higher class wins


def test_training_and_evaluation_read_a_cut_segmentation(tmp_path: Path) -> None:
    image = _image_like(ONE_LAYER, tmp_path / "ct.nrrd")
    reading = LabelReading(unlisted_background=True)
    full = _CaseReader(load_volume, 3, classes=LUNGS, labels=reading).read(Case("c", image, ONE_LAYER))[1]
    # Cut to the lungs' extent, as Slicer can save it (its header entries kept): placed by its position,
    # without data.place_cut_labels, because a Slicer file is a segmentation of its reference image by design.
    seg = sitk.ReadImage(str(ONE_LAYER))
    cut = sitk.RegionOfInterest(seg, [100, 90, 30], [10, 20, 2])
    for key in seg.GetMetaDataKeys():
        cut.SetMetaData(key, seg.GetMetaData(key))
    sitk.WriteImage(cut, str(tmp_path / "cut.seg.nrrd"), useCompression=True)
    assert is_slicer_segmentation(tmp_path / "cut.seg.nrrd")
    placed = _CaseReader(load_volume, 3, classes=LUNGS, labels=reading).read(
        Case("c", image, tmp_path / "cut.seg.nrrd")
    )[1]
    assert full is not None and placed is not None
    raw = _values(ONE_LAYER)
    inside = np.zeros(raw.shape, bool)
    inside[10:110, 20:110, 2:32] = True
    np.testing.assert_array_equal(placed, np.where(inside, full, 0))
    # Evaluation against the cut file as ground truth: a prediction of exactly its lungs scores 1.
    pred = tmp_path / "pred" / "c.nii.gz"
    pred.parent.mkdir()
    volume = load_label(ONE_LAYER, None, LUNGS, ignore_unlisted=True)
    nib.save(nib.Nifti1Image(np.where(inside, volume.array, 0).astype(np.uint8), volume.affine), pred)
    pairs = [("c", pred, tmp_path / "cut.seg.nrrd", image)]
    summary = evaluate(pairs, LUNGS, tmp_path / "eval", overlays=0, labels=reading)
    assert summary["n_evaluated"] == 1 and summary["mean_dice"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- read by Slicer's own reader


def test_slicerio_reads_the_slicer_files_as_medseg_does() -> None:
    slicerio = pytest.importorskip("slicerio")
    seg = slicerio.read_segmentation(str(TWO_LAYERS))
    # slicerio's voxels are in NRRD index order (i, j, k of the LPS grid), medseg's in the same i, j, k.
    ref = slicerio.extract_segments(seg, [("left lung", 1), ("overlapping sphere", 2)])
    ours = load_slicer_segmentation(TWO_LAYERS, ["background", "left lung", "overlapping sphere"], ignore_unlisted=True)
    np.testing.assert_array_equal(ours.array, ref["voxels"])


def test_a_written_segmentation_reads_back_in_slicerio_and_medseg(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.io.slicer_seg import save_slicer_segmentation

    slicerio = pytest.importorskip("slicerio")
    scan = load_volume(sample_hippo / "labelsTr" / "hippocampus_001.nii.gz")
    mask = np.rint(scan.array).astype(np.uint8)
    classes = ["background", "Anterior", "Posterior"]
    path = save_slicer_segmentation(mask, scan, tmp_path / "case.seg.nrrd", classes)
    seg = slicerio.read_segmentation(str(path))
    assert [(s["name"], s["labelValue"], s["layer"]) for s in seg["segments"]] == [
        ("Anterior", 1, 0),
        ("Posterior", 2, 0),
    ]
    np.testing.assert_array_equal(slicerio.extract_segments(seg, [("Anterior", 1), ("Posterior", 2)])["voxels"], mask)
    # Its grid is the scan's: slicerio's ijk -> LPS against medseg's ijk -> RAS.
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ seg["ijkToLPS"], scan.affine, atol=1e-5)
    back = load_slicer_segmentation(path, ["background", "posterior", "anterior"])
    np.testing.assert_array_equal(back.array, np.select([mask == 2, mask == 1], [1, 2], 0))
    # Class codes (data.class_codes, as for DICOM SEG) become the segments' terminology entries.
    from medseg.io.dicom_seg import ClassCode

    codes = {"Anterior": ClassCode("5300000", "SCT", "Hippocampus", "91723000", "SCT", "Anatomical Structure")}
    coded = save_slicer_segmentation(mask, scan, tmp_path / "coded.seg.nrrd", classes, class_codes=codes)
    anterior, posterior = slicerio.read_segmentation(str(coded))["segments"]
    assert anterior["terminology"]["category"] == ["SCT", "91723000", "Anatomical Structure"]
    assert anterior["terminology"]["type"] == ["SCT", "5300000", "Hippocampus"]
    assert "terminology" not in posterior
    # Stored label values become the segments' values.
    hundreds = np.asarray([0, 100, 200], dtype=np.uint8)[mask]  # the label map as stored (Predictor.stored_labels)
    stored = save_slicer_segmentation(hundreds, scan, tmp_path / "s.seg.nrrd", classes, label_values=[0, 100, 200])
    seg = slicerio.read_segmentation(str(stored))
    assert [s["labelValue"] for s in seg["segments"]] == [100, 200]
    np.testing.assert_array_equal(slicerio.extract_segments(seg, [("Anterior", 1), ("Posterior", 2)])["voxels"], mask)


def test_a_slicer_segmentation_is_no_scan_to_predict(sample_hippo: Path, tmp_path: Path) -> None:
    from medseg.io.scans import case_id_from_path, find_scans

    (tmp_path / "case_01.seg.nrrd").write_bytes(ONE_LAYER.read_bytes())
    (tmp_path / "case_01.nii.gz").write_bytes((sample_hippo / "imagesTr" / "hippocampus_001.nii.gz").read_bytes())
    assert find_scans(tmp_path) == [tmp_path / "case_01.nii.gz"]
    assert case_id_from_path(tmp_path / "case_01.seg.nrrd") == "case_01"  # pairs with its image by case id
