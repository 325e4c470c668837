"""DICOM SEG written by medseg, checked with independent readers (dcmqi, highdicom, pydicom), read back for
training, and third-party SEGs (highdicom's test files) read onto their CT series."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.errors import ConfigError, ForeignReferenceError, SegmentNameError, UnreadableScanError
from medseg.io import list_dicom_series, load_label, load_segmentation, load_volume, save_mask
from medseg.io.dicom_seg import ClassCode, DicomWriteOptions, load_dicom_seg, save_dicom_seg
from medseg.io.dicom_source import SEG_SOP_CLASS, source_series
from tests.conftest import PGBM, SAMPLE_DATA, SHARED_DATA

hd = pytest.importorskip("highdicom", reason="highdicom is in the dicom / dev extras")

SEG_EXAMPLES = SHARED_DATA / "DICOM_SEG_examples"
CLASSES = ["background", "tumour"]
TUMOUR = ClassCode("108369006", "SCT", "Neoplasm", "49755003", "SCT", "Morphologically Altered Structure")
OPTIONS = DicomWriteOptions(
    class_codes={"tumour": TUMOUR},
    series_description="test SEG",
    series_number=942,
    manufacturer="medseg tests",
    algorithm_source="checkpoint tests/best.pt",
)


def pgbm_studies() -> list[tuple[Path, Path]]:
    """(T1post series, MaskTumor series) per PGBM study; empty when the data is absent."""
    return [(next(m.parent.glob("*T1post*")), m) for m in sorted(PGBM.glob("*/*/*MaskTumor*"))]


STUDIES = pgbm_studies()
needs_pgbm = pytest.mark.skipif(not STUDIES, reason=f"needs the PGBM DICOM studies at {PGBM}")


def _study_id(study: tuple[Path, Path]) -> str:
    return study[0].parts[-3] + "/" + study[0].parts[-2][:10]


def _tumour(study: tuple[Path, Path]) -> tuple[object, np.ndarray]:
    image = load_volume(study[0])
    return image, (load_volume(study[1]).array > 0).astype(np.uint8)


def band_labels(image) -> np.ndarray:
    """A deterministic two-class mask of ``image`` from intensity bands (non-empty, irregular)."""
    a = np.asarray(image.array)
    labels = np.zeros(image.shape, np.uint8)
    labels[a > np.percentile(a, 85)] = 1
    labels[a > np.percentile(a, 96)] = 2
    return labels


def _hippo() -> tuple[object, np.ndarray]:
    """The sample DICOM series with :func:`band_labels`."""
    image = load_volume(SAMPLE_DATA / "dicom" / "HippoCrop_Study1")
    return image, band_labels(image)


def highdicom_seg(sources: list[pydicom.Dataset], pixels: np.ndarray, names: list[str], path: Path) -> Path:
    """A BINARY SEG written by highdicom itself (a third-party writer), one MANUAL "Tissue" segment per name, in
    highdicom's ``(frames, rows, columns[, segments])`` form on ``sources``."""
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=name,
            segmented_property_category=tissue,
            segmented_property_type=tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, name in enumerate(names, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


def _dcmqi(seg: Path, out: Path) -> list[Path]:
    exe = shutil.which("segimage2itkimage")
    if exe is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi; in the dev extra)")
    out.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [exe, "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nii"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return sorted(out.glob("*.nii.gz"))


def _check_with_dcmqi(image, labels: np.ndarray, classes: list[str], tmp_path: Path) -> None:
    seg = save_dicom_seg(labels, image, tmp_path / "case.dcm", classes, options=OPTIONS)
    nifti = nib.load(save_mask(labels, image, tmp_path / "case.nii.gz"))
    decoded = np.zeros(image.shape, np.uint8)
    for f in _dcmqi(seg, tmp_path / "dcmqi"):
        img = nib.load(f)
        # Same grid as medseg's own NIfTI mask of the series: shape, and affine to a micrometre.
        assert img.shape == nifti.shape
        np.testing.assert_allclose(img.affine, nifti.affine, atol=1e-3)
        values = np.asarray(img.dataobj)
        decoded[values > 0] = values[values > 0]  # dcmqi writes each segment as its segment number
    np.testing.assert_array_equal(decoded, np.asarray(nifti.dataobj))
    assert decoded.any()


@needs_pgbm
@pytest.mark.parametrize("study", STUDIES, ids=_study_id)
def test_dcmqi_decodes_the_seg_to_the_nifti_mask_pgbm(study: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = _tumour(study)
    ds = source_series(image).datasets[0]
    iop = np.asarray(ds.ImageOrientationPatient, float)
    assert ds.Rows != ds.Columns or study[0].name.startswith("13-T1post-56086")  # non-square (but the 512x512 one)
    assert np.abs(iop - np.round(iop)).max() > 0.01  # oblique
    _check_with_dcmqi(image, labels, CLASSES, tmp_path)


def test_dcmqi_decodes_the_seg_to_the_nifti_mask_two_classes(tmp_path: Path) -> None:
    image, labels = _hippo()
    _check_with_dcmqi(image, labels, ["background", "anterior", "posterior"], tmp_path)


@pytest.mark.parametrize("omit", [False, True])
def test_highdicom_reads_the_same_label_volume(omit: bool, tmp_path: Path) -> None:
    image, labels = _hippo()
    classes = ["background", "anterior", "posterior"]
    path = save_dicom_seg(labels, image, tmp_path / "s.dcm", classes, options=DicomWriteOptions(omit_empty_frames=omit))
    seg = hd.seg.segread(path)
    # The source slices in position order; load_dicom's volume is (columns, rows, slices), so a frame is a
    # transposed k-slice: an axis mapping independent of medseg's geometric one.
    src = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in (SAMPLE_DATA / "dicom" / "HippoCrop_Study1").iterdir()),
        key=lambda d: float(
            np.asarray(d.ImagePositionPatient, float)
            @ np.cross(*np.reshape(d.ImageOrientationPatient, (2, 3)).astype(float))
        ),
    )
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in src], combine_segments=True
    )
    expected = np.stack([labels[:, :, k].T for k in range(labels.shape[2])])
    np.testing.assert_array_equal(pixels, expected)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == classes[1:]
    n_frames = int(seg.NumberOfFrames)
    if omit:
        assert n_frames == sum(int((labels == c).any(axis=(0, 1)).sum()) for c in (1, 2))
    else:
        assert n_frames == 2 * labels.shape[2]  # one frame per source slice and segment
    np.testing.assert_array_equal(load_segmentation(path, image, classes).array, labels)


def test_pydicom_sees_the_required_attributes(tmp_path: Path) -> None:
    image, labels = _hippo()
    path = save_dicom_seg(labels, image, tmp_path / "s.dcm", ["background", "tumour", "tumour2"], options=OPTIONS)
    ds = pydicom.dcmread(path)
    src = source_series(image)
    first = src.datasets[0]
    assert ds.SOPClassUID == SEG_SOP_CLASS and ds.Modality == "SEG"
    for key in (
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "SegmentationType",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "DimensionIndexSequence",
        "ContentLabel",
        "PixelData",
    ):
        assert key in ds and ds[key].value not in (None, ""), key
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
        src.sop_uids
    )
    assert (ds.SeriesDescription, ds.SeriesNumber, ds.Manufacturer) == ("test SEG", 942, "medseg tests")
    assert ds.SegmentationType == "BINARY"
    seg1, seg2 = ds.SegmentSequence
    assert seg1.SegmentLabel == "tumour" and seg1.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert seg1.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    # no code configured for "tumour2": the generic SCT "Tissue"
    assert seg2.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    algo = seg1.SegmentationAlgorithmIdentificationSequence[0]
    assert (
        algo.AlgorithmName == "medseg" and algo.AlgorithmVersion and algo.AlgorithmSource == "checkpoint tests/best.pt"
    )
    # One frame per source slice and segment, in position order along the slice normal (highdicom orders the
    # frames of a 3D dimension organisation itself: descending position), each referencing its own slice.
    refs = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    per_segment = refs[: len(src.sop_uids)]
    assert per_segment in (src.sop_uids, src.sop_uids[::-1]) and refs == per_segment * 2
    by_uid = {d.SOPInstanceUID: d for d in src.datasets}
    for f, uid in zip(ds.PerFrameFunctionalGroupsSequence, refs, strict=True):
        np.testing.assert_allclose(
            np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float),
            np.asarray(by_uid[uid].ImagePositionPatient, float),
            atol=1e-4,
        )


def test_fractional_seg_from_probabilities(tmp_path: Path) -> None:
    image, _ = _hippo()
    rng = np.random.default_rng(0)
    fg = rng.random(image.shape).astype(np.float32)
    probs = np.stack([1 - fg, fg])
    path = save_dicom_seg(
        (fg >= 0.5).astype(np.uint8),
        image,
        tmp_path / "f.dcm",
        ["background", "x"],
        probabilities=probs,
        options=DicomWriteOptions(fractional=True),
    )
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "FRACTIONAL" and ds.MaximumFractionalValue == 255
    seg = hd.seg.segread(path)
    src = source_series(image)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=src.sop_uids, segment_numbers=[1])[..., 0]
    want = np.stack([src.frame(fg, n) for n in range(len(src.datasets))])
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6  # 8-bit quantisation
    back = load_segmentation(path, image, ["background", "x"]).array
    assert np.mean(back == (fg >= 0.5)) > 0.99  # values within 1/255 of 0.5 may round either way


@needs_pgbm
def test_seg_as_training_label_reproduces_the_mask_exactly(tmp_path: Path) -> None:
    from medseg.config import DataConfig
    from medseg.data.cases import discover_cases
    from medseg.data.prepare import _CaseReader

    root = tmp_path / "set"
    for image_dir, mask_dir in STUDIES[:2]:
        case = root / image_dir.parts[-3] / image_dir.parts[-2].replace(" ", "_")
        case.mkdir(parents=True)
        shutil.copytree(image_dir, case / image_dir.name)
        image, labels = load_volume(case / image_dir.name), (load_volume(mask_dir).array > 0).astype(np.uint8)
        save_dicom_seg(labels, image, case / "MaskTumor_seg.dcm", CLASSES, options=OPTIONS)
    spec = discover_cases(DataConfig(root=root, layout="dicom", dicom_image_pattern="*T1post*", classes=CLASSES))
    assert len(spec.cases) == 2 and all(c.label.name == "MaskTumor_seg.dcm" for c in spec.cases)
    for case, (_, mask_dir) in zip(spec.cases, STUDIES[:2], strict=True):
        _, from_seg, _ = _CaseReader(load_volume, 2, classes=CLASSES).read(case)
        # the mask series holds 0/1: the label medseg trained from before, read the usual way
        _, from_series, _ = _CaseReader(load_volume, 2, classes=CLASSES).read(replace(case, label=mask_dir))
        np.testing.assert_array_equal(from_seg, from_series)
        assert from_seg.sum() > 0


@needs_pgbm
def test_seg_errors_name_the_problem(tmp_path: Path) -> None:
    (_, mask_a), (img_b, _) = STUDIES[0], STUDIES[1]
    image, labels = _tumour(STUDIES[0])
    path = save_dicom_seg(labels, image, tmp_path / "a.dcm", CLASSES, options=OPTIONS)
    with pytest.raises(ForeignReferenceError, match=r"FrameOfReferenceUID|references series"):
        load_segmentation(path, load_volume(img_b), CLASSES)  # another study of the same patient
    # Same frame of reference, another series: a SEG written on the mask series, read onto the T1post.
    mask_vol = load_volume(mask_a)
    other = save_dicom_seg(labels, mask_vol, tmp_path / "other.dcm", CLASSES, options=OPTIONS)
    with pytest.raises(ForeignReferenceError, match="references series"):
        load_segmentation(other, image, CLASSES)
    with pytest.raises(SegmentNameError, match=r"'tumour'.*none of the classes"):
        load_segmentation(path, image, ["background", "oedema"])
    with pytest.raises(SegmentNameError, match=r"no segment.*'oedema'"):
        load_segmentation(path, image, ["background", "tumour", "oedema"])
    with pytest.raises(UnreadableScanError, match="load_segmentation"):
        load_volume(path)


def test_seg_for_a_nifti_scan_is_refused(tmp_path: Path) -> None:
    from medseg.inference.batch import discover

    nifti = SAMPLE_DATA / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    scan = load_volume(nifti)
    with pytest.raises(ForeignReferenceError, match="not read from a DICOM series"):
        save_dicom_seg(np.zeros(scan.shape, np.uint8), scan, tmp_path / "x.dcm", CLASSES)
    with pytest.raises(ConfigError, match="needs a DICOM series input"):
        discover(nifti, tmp_path / "out", "dicom-seg")
    # A mixed folder: the NIfTI scan becomes a failed job, the DICOM series is predicted.
    mixed = tmp_path / "in"
    (mixed / "nii").mkdir(parents=True)
    shutil.copy(nifti, mixed / "nii" / nifti.name)
    shutil.copytree(SAMPLE_DATA / "dicom" / "HippoCrop_Study1", mixed / "dicom" / "S1")
    jobs = {j.input.name: j for j in discover(mixed, tmp_path / "out", "dicom-seg")}
    assert jobs[nifti.name].problem and "DICOM series" in jobs[nifti.name].problem
    assert jobs["S1"].problem is None and jobs["S1"].output.name == "S1.dcm"


# ---------------------------------------------------------------- third-party SEGs (highdicom's test files)


@pytest.fixture
def ct2_reference(tmp_path: Path):
    """The 3 evenly spaced slices of pydicom's CT2 series (its 4th lies 200 mm away: not a regular stack)."""
    src = SEG_EXAMPLES / "pydicom_CT2_series"
    if not src.is_dir():
        pytest.skip(f"needs {SEG_EXAMPLES}")
    folder = tmp_path / "CT2"
    folder.mkdir()
    for name in ("17136", "17166", "17196"):
        shutil.copy(src / name, folder / name)
    return load_volume(folder)


@pytest.mark.parametrize(
    "name", ["seg_image_ct_binary.dcm", "seg_image_ct_binary_fractional.dcm", "seg_image_ct_true_fractional.dcm"]
)
def test_third_party_segs_are_read_like_highdicom_reads_them(name: str, ct2_reference) -> None:
    path = SEG_EXAMPLES / "highdicom_seg" / name
    got = load_segmentation(path, ct2_reference, ["background", "first segment"])
    assert got.same_grid(ct2_reference)
    seg = hd.seg.segread(path)
    src = source_series(ct2_reference)
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=src.sop_uids, segment_numbers=[1])[..., 0]
    want = np.zeros(ct2_reference.shape, np.uint8)
    for n in range(len(src.datasets)):
        # CT2 is axial, unrotated: frame (row, column) = volume (j, i) of slice n.
        want[:, :, n] = (px[n] >= 0.5).T
    np.testing.assert_array_equal(got.array, want)
    assert got.array.any()
    # classes=None: segment numbers are the labels
    np.testing.assert_array_equal(load_segmentation(path, ct2_reference).array, want)


def test_third_party_segs_of_other_instances_are_refused(ct2_reference) -> None:
    # The overlap SEG also covers the far slice (not part of the regular stack); the single-frame one
    # references an image of another series.
    for name in ("seg_image_ct_binary_overlap.dcm", "seg_image_ct_binary_single_frame.dcm"):
        with pytest.raises(ForeignReferenceError, match="does not belong"):
            load_segmentation(SEG_EXAMPLES / "highdicom_seg" / name, ct2_reference)


def test_overlapping_segments_keep_the_higher_class(ct2_reference, tmp_path: Path, caplog) -> None:
    # An overlapping two-segment SEG built with highdicom itself on the 3-slice reference.
    src = source_series(ct2_reference)
    rows, cols = int(src.datasets[0].Rows), int(src.datasets[0].Columns)
    a = np.zeros((3, rows, cols, 2), bool)
    a[:, 2:8, 2:8, 0] = True
    a[:, 5:12, 5:12, 1] = True
    sources = [pydicom.dcmread(ct2_reference.source / n) for n in ("17136", "17166", "17196")]
    highdicom_seg(sources, a, ["B", "A"], tmp_path / "ov.dcm")
    got = load_dicom_seg(tmp_path / "ov.dcm", ct2_reference, ["background", "A", "B"]).array
    # segment "A" (2nd) is class 1, "B" (1st) class 2: in the overlap the higher class, B, is kept
    assert got[6, 6, 0] == 2 and got[3, 3, 0] == 2 and got[10, 10, 0] == 1 and got[0, 0, 0] == 0
    assert "several segments" in caplog.text


def test_load_label_reads_masks_and_segs(tmp_path: Path) -> None:
    image, labels = _hippo()
    seg = save_dicom_seg(labels, image, tmp_path / "s.dcm", ["bg", "a", "b"])
    np.testing.assert_array_equal(load_label(seg, image.source).array, labels)
    nii = save_mask(labels, image, tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(load_label(nii, None).array, labels)
    with pytest.raises(UnreadableScanError, match="none was given"):
        load_label(seg, None)


def test_jpeg2000_ct_whose_uids_are_only_in_the_file_meta(tmp_path: Path) -> None:
    """The TotalSegmentator example CT (JPEG 2000) leaves SOPClassUID / SOPInstanceUID empty in the dataset and
    keeps them in the file meta header: the SEG must still reference every instance (and RTSTRUCT too)."""
    from medseg.io.rtstruct import save_rtstruct
    from tests.conftest import TOTALSEG

    series = TOTALSEG / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip(f"needs {series}")
    image = load_volume(series)
    # Two ellipsoids and a hole through one (smooth shapes: an RTSTRUCT of a noisy 512 x 512 threshold mask has
    # tens of thousands of contours and takes about a minute to write and read on 2 cores).
    i, j, k = np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij")
    labels = np.zeros(image.shape, np.uint8)
    labels[((i - 200) / 80) ** 2 + ((j - 260) / 60) ** 2 + ((k - 10) / 8) ** 2 < 1] = 1
    labels[((i - 330) / 40) ** 2 + ((j - 250) / 90) ** 2 + ((k - 8) / 6) ** 2 < 1] = 2
    labels[((i - 200) / 30) ** 2 + ((j - 260) / 20) ** 2 < 1] = 0
    classes = ["background", "a", "b"]
    _check_with_dcmqi(image, labels, classes, tmp_path)
    assert len(set(source_series(image).sop_uids)) == image.shape[2]
    rt = save_rtstruct(labels, image, tmp_path / "rt.dcm", classes)
    back = load_segmentation(rt, image, classes).array
    for c in (1, 2):
        d = 2 * np.sum((back == c) & (labels == c)) / (np.sum(back == c) + np.sum(labels == c))
        assert d >= 0.98, (c, d)


def test_a_seg_names_the_series_it_was_drawn_on(tmp_path: Path) -> None:
    from medseg.io.dicom_source import referenced_series_uids
    from medseg.io.rtstruct import save_rtstruct

    image, labels = _hippo()
    (info,) = list_dicom_series(SAMPLE_DATA / "dicom" / "HippoCrop_Study1")
    seg = save_dicom_seg(labels, image, tmp_path / "seg.dcm", ["background", "a", "b"])
    rt = save_rtstruct(labels, image, tmp_path / "rt.dcm", ["background", "a", "b"])
    assert referenced_series_uids(seg) == referenced_series_uids(rt) == {info.uid}
    assert referenced_series_uids(SAMPLE_DATA / "dicom" / "HippoCrop_Study1" / "1.dcm") == set()
