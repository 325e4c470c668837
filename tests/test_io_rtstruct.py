"""RTSTRUCT written by medseg: round trip on the PGBM tumours, an independent reader, and the named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medseg.errors import ContourOutsideImageError, ForeignReferenceError, SegmentNameError
from medseg.io import load_segmentation, load_volume
from medseg.io.dicom_seg import ClassCode, DicomWriteOptions
from medseg.io.dicom_source import RTSTRUCT_SOP_CLASS, pixel_to_lps, source_series
from medseg.io.rtstruct import save_rtstruct
from medseg.metrics import dice
from tests.conftest import PGBM, SAMPLE_DATA

CLASSES = ["background", "tumour"]
OPTIONS = DicomWriteOptions(class_codes={"tumour": ClassCode("108369006", "SCT", "Neoplasm")})
STUDIES = [(next(m.parent.glob("*T1post*")), m) for m in sorted(PGBM.glob("*/*/*MaskTumor*"))]
needs_pgbm = pytest.mark.skipif(not STUDIES, reason=f"needs the PGBM DICOM studies at {PGBM}")


def _tumour(study: tuple[Path, Path]):
    return load_volume(study[0]), (load_volume(study[1]).array > 0).astype(np.uint8)


@needs_pgbm
@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s[0].parts[-3] + "/" + s[0].parts[-2][:10])
def test_round_trip_dice_on_the_pgbm_tumours(study: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = _tumour(study)
    holes = sum(
        int((ndimage.binary_fill_holes(labels[:, :, k]) & (labels[:, :, k] == 0)).sum()) for k in range(labels.shape[2])
    )
    path = save_rtstruct(labels, image, tmp_path / "rt.dcm", CLASSES, options=OPTIONS)
    back = load_segmentation(path, image, CLASSES)
    assert back.same_grid(image)
    d = float(dice(back.array == 1, labels == 1))
    print(f"{study[0].parts[-3]}/{study[0].parts[-2]}: Dice {d:.4f}, {labels.sum()} voxels, {holes} hole voxels")
    assert d >= 0.98
    # The even-odd contours keep holes: on these masks the round trip is exact.
    np.testing.assert_array_equal(back.array, labels)


@needs_pgbm
def test_rtstruct_dataset_and_patient_coordinates(tmp_path: Path) -> None:
    image, labels = _tumour(STUDIES[0])
    path = save_rtstruct(labels, image, tmp_path / "rt.dcm", CLASSES, options=OPTIONS)
    ds = pydicom.dcmread(path)
    src = source_series(image)
    first = src.datasets[0]
    assert ds.SOPClassUID == RTSTRUCT_SOP_CLASS and ds.Modality == "RTSTRUCT"
    for key in ("StudyInstanceUID", "PatientID", "SeriesInstanceUID", "StructureSetLabel", "StructureSetDate"):
        assert key in ds, key
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == first.FrameOfReferenceUID
    series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == src.sop_uids
    (roi,) = ds.StructureSetROISequence
    assert roi.ROIName == "tumour" and roi.ROIGenerationAlgorithm == "AUTOMATIC"
    assert ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0].CodeValue == "108369006"
    by_uid = {d.SOPInstanceUID: d for d in src.datasets}
    contours = ds.ROIContourSequence[0].ContourSequence
    assert contours
    for c in contours:
        assert c.ContourGeometricType == "CLOSED_PLANAR"
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert len(pts) == c.NumberOfContourPoints
        # every point lies in the plane of the slice it references (patient coordinates, oblique series)
        local = (
            np.linalg.inv(pixel_to_lps(by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]))
            @ np.c_[pts, np.ones(len(pts))].T
        )
        assert np.abs(local[2]).max() < 1e-3


@needs_pgbm
def test_rt_utils_reads_the_contours_on_a_square_series(tmp_path: Path) -> None:
    """rt-utils 1.2.7 as an independent reader. Only the 512 x 512 study: rt-utils swaps rows and columns, which
    breaks non-square series (one reason medseg does not use it), fills every contour (holes become filled) and
    rasterises with OpenCV's fillPoly, which also takes the pixels the contour passes through (a one-pixel rim
    more than the even-odd pixel-centre rule). So the check is a Dice against the hole-filled mask."""
    rt_utils = pytest.importorskip("rt_utils", reason="rt-utils is in the dev extra")
    study = next((s for s in STUDIES if "13-T1post-56086" in s[0].name), None)
    if study is None:
        pytest.skip("needs the 512 x 512 PGBM-003 study")
    image, labels = _tumour(study)
    path = save_rtstruct(labels, image, tmp_path / "rt.dcm", CLASSES, options=OPTIONS)
    theirs = rt_utils.RTStructBuilder.create_from(str(study[0]), str(path)).get_roi_mask_by_name("tumour")
    filled = np.stack([ndimage.binary_fill_holes(labels[:, :, k]) for k in range(labels.shape[2])], axis=-1)
    d = float(dice(theirs.transpose(1, 0, 2), filled))
    print(f"rt-utils vs hole-filled mask: Dice {d:.4f}")
    assert d > 0.9


def test_rtstruct_two_classes_with_holes_and_islands(tmp_path: Path) -> None:
    image = load_volume(SAMPLE_DATA / "dicom" / "HippoCrop_Study1")
    labels = np.zeros(image.shape, np.uint8)
    labels[5:30, 5:45, 10] = 1
    labels[10:25, 12:38, 10] = 0  # a hole
    labels[14:20, 18:30, 10] = 2  # an island of another class in the hole
    labels[16:18, 22:26, 10] = 0  # a hole in the island
    labels[2:4, 2:4, 3:20] = 1
    path = save_rtstruct(labels, image, tmp_path / "rt.dcm", ["background", "a", "b"])
    np.testing.assert_array_equal(load_segmentation(path, image, ["background", "a", "b"]).array, labels)


@needs_pgbm
def test_rtstruct_errors_name_the_problem(tmp_path: Path) -> None:
    image, labels = _tumour(STUDIES[0])
    path = save_rtstruct(labels, image, tmp_path / "rt.dcm", CLASSES, options=OPTIONS)
    with pytest.raises(ForeignReferenceError):  # another study: other frame of reference / instances
        load_segmentation(path, load_volume(STUDIES[1][0]), CLASSES)
    with pytest.raises(SegmentNameError, match="'tumour'"):
        load_segmentation(path, image, ["background", "oedema"])

    ds = pydicom.dcmread(path)
    normal = pixel_to_lps(source_series(image).datasets[0])[:3, 2]
    for how, shift in (("off the slices", 100.0 * normal), ("beside the image", np.array([500.0, 0.0, 0.0]))):
        moved = pydicom.dcmread(path)
        c = moved.ROIContourSequence[0].ContourSequence[0]
        pts = np.asarray(c.ContourData, float).reshape(-1, 3) + shift
        c.ContourData = [f"{v:.4f}" for v in pts.ravel()]
        out = tmp_path / f"moved_{how.split()[0]}.dcm"
        moved.save_as(out)
        with pytest.raises(ContourOutsideImageError, match="outside"):
            load_segmentation(out, image, CLASSES)
    # a contour naming an instance that is not in the series
    c = ds.ROIContourSequence[0].ContourSequence[0]
    c.ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "foreign.dcm")
    with pytest.raises(ForeignReferenceError, match="not in the image series"):
        load_segmentation(tmp_path / "foreign.dcm", image, CLASSES)
