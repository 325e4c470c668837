"""DICOM SEG and RTSTRUCT on an enhanced multi-frame image (one file holding every slice, as Philips and newer
Siemens scanners export MR): written by medseg and checked with highdicom, dcmqi and pydicom; written by highdicom
and read by medseg. The multi-frame files are highdicom's Legacy Converted Enhanced MR conversion of real
single-frame series, with the frames stored out of position order, so a frame is found by its number and its
position, never by its place in the file."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.errors import ContourOutsideImageError, ForeignReferenceError
from medseg.io import load_segmentation, load_volume, save_mask
from medseg.io.dicom_seg import save_dicom_seg
from medseg.io.dicom_source import source_series
from medseg.io.rtstruct import save_rtstruct
from tests.conftest import PGBM, SAMPLE_DATA
from tests.test_io_dicom_seg import band_labels, highdicom_seg

hd = pytest.importorskip("highdicom", reason="highdicom is in the dicom / dev extras")

HIPPO = SAMPLE_DATA / "dicom" / "HippoCrop_Study1"
CLASSES = ["background", "anterior", "posterior"]
PGBM_T1 = sorted(PGBM.glob("*/*/*T1post*"))


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    return np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))


def _multi_frame(series: Path, folder: Path) -> tuple[Path, list[pydicom.Dataset]]:
    """``series`` converted to one Legacy Converted Enhanced MR file in ``folder`` from its slices in reversed
    file-name order (the frames do not end up in position order). Returns the file and the slices."""
    slices = [pydicom.dcmread(p) for p in sorted(series.iterdir(), reverse=True) if p.is_file()]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        slices, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1
    )
    folder.mkdir(parents=True)
    path = folder / "enhanced.dcm"
    image.save_as(path)
    return path, slices


def _frame_planes(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame of the multi-frame file (frame order): its ImagePositionPatient and slice normal, read with
    pydicom from the per-frame (or shared) functional groups."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        own = frame if "PlaneOrientationSequence" in frame else shared
        iop = np.asarray(own.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        ipp = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        out.append((ipp, np.cross(iop[:3], iop[3:])))
    return out


def _expected_frames(labels: np.ndarray, path: Path) -> np.ndarray:
    """Per frame (frame order), its pixels of ``labels``, mapped independently of medseg's geometry: the series is
    read as (columns, rows, slices) in position order, so frame f is the transposed slice at its position's rank."""
    planes = _frame_planes(path)
    along = [float(ipp @ normal) for ipp, normal in planes]
    rank = np.argsort(np.argsort(along))
    return np.stack([labels[:, :, rank[f]].T for f in range(len(planes))])


@pytest.fixture
def enhanced(tmp_path: Path):
    """(multi-frame volume, its file, the single-frame datasets in frame order, the single-frame volume)."""
    path, slices = _multi_frame(HIPPO, tmp_path / "enhanced")
    return load_volume(path.parent), path, slices, load_volume(HIPPO)


def test_the_multi_frame_image_reads_as_its_series_and_maps_frames_by_number(enhanced) -> None:
    image, path, slices, single = enhanced
    np.testing.assert_array_equal(image.array, single.array)
    np.testing.assert_allclose(image.affine, single.affine, atol=1e-6)
    src = source_series(image)
    assert (
        src.multi_frame
        and len(src.instances) == 1
        and src.instances[0].SOPInstanceUID == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    )
    # Planes in position order; frame numbers are the reversed file order, so they run backwards here.
    assert sorted(src.frame_numbers) == list(range(1, len(slices) + 1))  # type: ignore[type-var]
    assert list(src.frame_numbers) != sorted(src.frame_numbers)  # type: ignore[type-var]


def test_seg_on_a_multi_frame_image_is_read_by_highdicom_and_dcmqi(enhanced, tmp_path: Path) -> None:
    image, path, slices, _ = enhanced
    labels = band_labels(image)
    seg_path = save_dicom_seg(labels, image, tmp_path / "seg.dcm", CLASSES)
    seg = hd.seg.segread(seg_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    assert [s.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == [
        source.SOPInstanceUID
    ]
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID,
        source_frame_numbers=list(range(1, len(slices) + 1)),
        combine_segments=True,
    )
    np.testing.assert_array_equal(pixels, _expected_frames(labels, path))
    np.testing.assert_array_equal(load_segmentation(seg_path, image, CLASSES).array, labels)

    exe = shutil.which("segimage2itkimage")
    if exe is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi; in the dev extra)")
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run([exe, "--inputDICOM", str(seg_path), "--outputDirectory", str(out), "-t", "nii"], check=False)
    assert run.returncode == 0
    nifti = nib.load(save_mask(labels, image, tmp_path / "mask.nii.gz"))
    decoded = np.zeros(image.shape, np.uint8)
    for f in sorted(out.glob("*.nii.gz")):
        img = nib.load(f)
        assert img.shape == nifti.shape
        np.testing.assert_allclose(img.affine, nifti.affine, atol=1e-3)
        values = np.asarray(img.dataobj)
        decoded[values > 0] = values[values > 0]  # dcmqi writes each segment as its segment number
    np.testing.assert_array_equal(decoded, labels)


def test_a_seg_that_highdicom_writes_on_the_multi_frame_image_is_read(enhanced, tmp_path: Path) -> None:
    image, path, slices, _ = enhanced
    labels = band_labels(image)
    # frame f of the SEG on frame f of the image
    highdicom_seg([pydicom.dcmread(path)], _expected_frames(labels, path), CLASSES[1:], tmp_path / "theirs.dcm")
    np.testing.assert_array_equal(load_segmentation(tmp_path / "theirs.dcm", image, CLASSES).array, labels)

    # A frame number the image does not have is named, not guessed.
    broken = pydicom.dcmread(tmp_path / "theirs.dcm")
    item = broken.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    item.ReferencedFrameNumber = len(slices) + 7
    broken.save_as(tmp_path / "broken.dcm")
    with pytest.raises(ForeignReferenceError, match=f"frame {len(slices) + 7}"):
        load_segmentation(tmp_path / "broken.dcm", image, CLASSES)


def test_rtstruct_on_a_multi_frame_image_round_trips_and_names_its_frames(enhanced, tmp_path: Path) -> None:
    image, path, _, _ = enhanced
    labels = np.zeros(image.shape, np.uint8)
    labels[5:30, 5:45, 10] = 1
    labels[10:25, 12:38, 10] = 0  # a hole
    labels[14:20, 18:30, 10] = 2  # an island of another class in the hole
    labels[2:4, 2:4, 3:20] = 1
    rt = save_rtstruct(labels, image, tmp_path / "rt.dcm", CLASSES)
    np.testing.assert_array_equal(load_segmentation(rt, image, CLASSES).array, labels)
    # Every contour names the frame it lies on, and its points lie in that frame's plane.
    ds = pydicom.dcmread(rt)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    planes = _frame_planes(path)
    contours = [c for roi in ds.ROIContourSequence for c in roi.ContourSequence]
    assert contours
    for c in contours:
        ref = c.ContourImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == uid
        ipp, normal = planes[int(ref.ReferencedFrameNumber) - 1]
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert np.abs((pts - ipp) @ normal).max() < 1e-3
    # A contour that names another (existing) frame than the one its points lie on: the error names that frame.
    first = ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    first.ReferencedFrameNumber = 1 + int(first.ReferencedFrameNumber) % len(planes)
    ds.save_as(tmp_path / "wrong_frame.dcm")
    with pytest.raises(
        ContourOutsideImageError,
        match=rf"off the plane of the image it references \(frame {first.ReferencedFrameNumber} ",
    ):
        load_segmentation(tmp_path / "wrong_frame.dcm", image, CLASSES)


@pytest.mark.skipif(not PGBM_T1, reason=f"needs the PGBM DICOM studies at {PGBM}")
@pytest.mark.filterwarnings("ignore:.*unlikely to represent the intended person name")  # highdicom on "PGBM-001"
def test_seg_on_an_oblique_multi_frame_image(tmp_path: Path) -> None:
    path, slices = _multi_frame(PGBM_T1[0], tmp_path / "enhanced")
    image = load_volume(path.parent)
    iop = np.asarray(slices[0].ImageOrientationPatient, float)
    assert np.abs(iop - np.round(iop)).max() > 0.01  # oblique
    labels = band_labels(image)
    seg_path = save_dicom_seg(labels, image, tmp_path / "seg.dcm", CLASSES)
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_frame(
        source_sop_instance_uid=pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID,
        source_frame_numbers=list(range(1, len(slices) + 1)),
        combine_segments=True,
    )
    np.testing.assert_array_equal(pixels, _expected_frames(labels, path))
    np.testing.assert_array_equal(load_segmentation(seg_path, image, CLASSES).array, labels)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_batch_prediction_writes_seg_and_rtstruct_for_a_multi_frame_scan(fmt: str, enhanced, tmp_path: Path) -> None:
    from medseg.inference.batch import predict_folder
    from medseg.inference.predictor import Predictor
    from tests.test_inference import make_checkpoint

    image, path, _, _ = enhanced
    predictor = Predictor.from_checkpoint(make_checkpoint(tmp_path / "best.pt"), device="cpu", precision="fp32")
    out = tmp_path / "pred"
    result = predict_folder(predictor, path.parent, out, output_format=fmt, also_nifti=True, progress=False)
    assert result.n_ok == 1 and result.n_failed == 0
    nifti = load_volume(out / "enhanced.nii.gz")
    assert nifti.same_grid(image) and (np.asarray(nifti.array) > 0).any()
    decoded = load_segmentation(out / "enhanced.dcm", image, predictor.classes)
    np.testing.assert_array_equal(decoded.array, nifti.array)


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_dicom_layout_trains_from_a_label_drawn_on_a_multi_frame_image(kind: str, tmp_path: Path) -> None:
    """A case folder as a PACS export holds it: the enhanced image's folder and the SEG / RTSTRUCT beside it."""
    from medseg.config import DataConfig
    from medseg.data.cases import discover_cases
    from medseg.data.prepare import _CaseReader

    case = tmp_path / "set" / "patient1"
    path, _ = _multi_frame(HIPPO, case / "t1_enhanced")
    image = load_volume(path.parent)
    labels = (band_labels(image) > 0).astype(np.uint8)
    classes = ["background", "hippocampus"]
    (save_dicom_seg if kind == "seg" else save_rtstruct)(labels, image, case / "mask.dcm", classes)
    (c,) = discover_cases(DataConfig(root=tmp_path / "set", layout="dicom", classes=classes)).cases
    assert c.image == path.parent and c.label == case / "mask.dcm"
    _, label, _ = _CaseReader(load_volume, 2, classes=classes).read(c)
    # The same mask as a NIfTI label read the same way (the reader turns both to the closest-RAS order).
    nifti = save_mask(labels, image, tmp_path / "mask.nii.gz")
    _, direct, _ = _CaseReader(load_volume, 2).read(replace(c, label=nifti))
    np.testing.assert_array_equal(label, direct)
    assert label.sum() == labels.sum() > 0


def test_seg_on_a_multi_frame_image_with_per_frame_orientation(enhanced, tmp_path: Path) -> None:
    """Some enhanced exports repeat the orientation in every frame's functional group instead of sharing it;
    highdicom needs it shared, so the SEG is written from a copy of the header with it moved there."""
    _, path, _, _ = enhanced
    ds = pydicom.dcmread(path)
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame.PlaneOrientationSequence = orientation
    folder = tmp_path / "per_frame"
    folder.mkdir()
    ds.save_as(folder / "enhanced.dcm")
    before = (folder / "enhanced.dcm").read_bytes()
    image = load_volume(folder)
    labels = band_labels(image)
    seg_path = save_dicom_seg(labels, image, tmp_path / "seg.dcm", CLASSES)
    assert (folder / "enhanced.dcm").read_bytes() == before  # the source is read, never changed
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_frame(
        source_sop_instance_uid=ds.SOPInstanceUID,
        source_frame_numbers=list(range(1, int(ds.NumberOfFrames) + 1)),
        combine_segments=True,
    )
    np.testing.assert_array_equal(pixels, _expected_frames(labels, folder / "enhanced.dcm"))
    np.testing.assert_array_equal(load_segmentation(seg_path, image, CLASSES).array, labels)


def test_a_seg_of_the_single_frame_series_is_foreign_to_the_multi_frame_image(enhanced, tmp_path: Path) -> None:
    image, _, _, single = enhanced
    labels = band_labels(single)
    seg_path = save_dicom_seg(labels, single, tmp_path / "single.dcm", CLASSES)
    with pytest.raises(ForeignReferenceError, match="references series"):
        load_segmentation(seg_path, image, CLASSES)
    # Without the series reference, its frames name instances the multi-frame image does not hold.
    ds = pydicom.dcmread(seg_path)
    del ds.ReferencedSeriesSequence
    ds.save_as(tmp_path / "unnamed.dcm")
    with pytest.raises(ForeignReferenceError, match=r"referenced instance.* not in the series"):
        load_segmentation(tmp_path / "unnamed.dcm", image, CLASSES)
