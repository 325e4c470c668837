"""DICOM series on real data: geometry equal to SimpleITK's, slice order by position, masks that line up."""

from __future__ import annotations

import functools
import itertools
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medseg.io.dicom as dicom_module
import medseg.io.dicom_pixels as pixels_module
from medseg.errors import MissingDecoderError, MultipleSeriesError, UnreadableScanError
from medseg.io import list_dicom_series, load_volume, save_mask
from medseg.io.geometry import itk_from_affine, sitk_to_array
from medseg.volume import Volume


@functools.cache
def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _pgbm_studies(pgbm_dir: Path) -> list[tuple[Path, Path]]:
    studies = []
    for study in sorted(p for p in pgbm_dir.glob("*/*") if p.is_dir()):
        image = next(study.glob("*T1post*"))
        mask = next(study.glob("*MaskTumor*"))
        studies.append((image, mask))
    assert len(studies) == 5
    return studies


@functools.cache
def _load(folder: Path) -> Volume:
    return load_volume(folder)


def _corner_and_centre_indices(shape: tuple[int, int, int]) -> list[list[float]]:
    last = np.array(shape, dtype=float) - 1
    points = [list(np.array(c) * last) for c in itertools.product([0, 1], repeat=3)]
    return [*points, list(last / 2)]


def test_pgbm_geometry_equals_simpleitk(pgbm_dir: Path) -> None:
    shapes = []
    for image_dir, mask_dir in _pgbm_studies(pgbm_dir):
        for folder in (image_dir, mask_dir):
            volume = _load(folder)
            reference = _sitk_series(folder)
            spacing, origin, direction = itk_from_affine(volume.affine)
            np.testing.assert_allclose(spacing, reference.GetSpacing(), atol=1e-4, err_msg=str(folder))
            np.testing.assert_allclose(origin, reference.GetOrigin(), atol=1e-4, err_msg=str(folder))
            np.testing.assert_allclose(direction.ravel(), reference.GetDirection(), atol=1e-4, err_msg=str(folder))
            np.testing.assert_array_equal(volume.array, sitk_to_array(reference))
        image, mask = _load(image_dir), _load(mask_dir)
        assert image.same_grid(mask, atol=1e-4), image_dir.parent
        assert set(np.unique(mask.array)) == {0, 1}
        # Oblique and non-square, with slice spacing (6.5 mm) != SliceThickness (5 mm).
        assert not np.allclose(np.abs(image.direction), np.eye(3), atol=1e-3)
        assert image.spacing[2] == pytest.approx(6.5, abs=1e-3)
        shapes.append(image.shape)
    assert any(i != j for i, j, _ in shapes)  # non-square slices (catches row/column swaps)


def test_pgbm_slices_sit_at_their_image_position(pgbm_dir: Path) -> None:
    pydicom = pytest.importorskip("pydicom")  # the `dicom` extra
    # Independent of SimpleITK: each file's ImagePositionPatient (LPS) must be the world position of voxel
    # (0, 0, k) for exactly one k, and its pixels must be that slice.
    image_dir, _ = _pgbm_studies(pgbm_dir)[0]
    volume = _load(image_dir)
    inverse = np.linalg.inv(volume.affine)
    seen = set()
    for f in sorted(image_dir.iterdir()):
        ds = pydicom.dcmread(f)
        ras = np.array([float(x) for x in ds.ImagePositionPatient]) * [-1, -1, 1]
        ijk = (inverse @ [*ras, 1.0])[:3]
        np.testing.assert_allclose(ijk[:2], [0, 0], atol=1e-4)
        k = round(ijk[2])
        assert abs(ijk[2] - k) < 1e-4
        np.testing.assert_array_equal(volume.array[:, :, k], ds.pixel_array.T)
        seen.add(k)
    assert seen == set(range(volume.shape[2]))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_mask_saved_like_dicom_maps_to_the_same_points(pgbm_dir: Path, tmp_path: Path, suffix: str) -> None:
    studies = _pgbm_studies(pgbm_dir) if suffix == ".nii.gz" else _pgbm_studies(pgbm_dir)[:1]
    for image_dir, mask_dir in studies:
        image, mask = _load(image_dir), _load(mask_dir)
        out = save_mask(mask.array, like=image, path=tmp_path / f"{image_dir.parent.name}{suffix}")
        written = sitk.ReadImage(str(out))
        reference = _sitk_series(image_dir)
        assert written.GetSize() == reference.GetSize()
        for index in _corner_and_centre_indices(image.shape):
            np.testing.assert_allclose(
                written.TransformContinuousIndexToPhysicalPoint(index),
                reference.TransformContinuousIndexToPhysicalPoint(index),
                atol=1e-3,
                err_msg=f"{out} at {index}",
            )
        np.testing.assert_array_equal(sitk_to_array(written), mask.array)
        if suffix == ".nii.gz":
            header = nib.load(out).header
            assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)


def test_totalsegmentator_jpeg2000_ct_aligns_with_its_segmentation(totalseg_dir: Path, monkeypatch) -> None:
    ct_dir = totalseg_dir / "example_ct_dicom"
    assert pixels_module.transfer_syntax(next(ct_dir.iterdir())) == "1.2.840.10008.1.2.4.90"

    # SimpleITK's GDCM decodes JPEG 2000 by itself: the pydicom fallback must not be needed.
    def no_fallback(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("pydicom fallback used")

    monkeypatch.setattr(pixels_module, "_read_pixels_pydicom", no_fallback)
    ct = _load(ct_dir)
    assert ct.shape == (512, 512, 20)
    assert ct.array.dtype == np.int16
    assert (int(ct.array.min()), int(ct.array.max())) == (-1024, 1839)
    assert ct.spacing[2] == pytest.approx(2.0)  # from positions; SliceThickness says 3 mm

    seg = load_volume(totalseg_dir / "example_seg_dicom.nii.gz")
    # The affines say how CT voxels map to seg voxels: the NIfTI is stored LAS, so j is flipped
    # (PROVENANCE.md: seg[i, j, k] <-> DICOM pixel [row = 511 - j, col = i] of the k-th slice by position).
    ct_to_seg = np.linalg.inv(seg.affine) @ ct.affine
    flip_j = np.diag([1.0, -1.0, 1.0, 1.0])
    flip_j[1, 3] = 511
    np.testing.assert_allclose(ct_to_seg, flip_j, atol=1e-4)
    labels = seg.array[:, ::-1, :]  # seg resampled onto the CT grid, as the affines prescribe
    assert ct.array[labels == 5].mean() == pytest.approx(89, abs=3)  # liver
    assert ct.array[labels == 52].mean() == pytest.approx(177, abs=3)  # aorta
    assert ct.array[labels == 0].mean() == pytest.approx(-742, abs=5)
    # The check can fail: without the flip the liver lands on other tissue.
    assert abs(ct.array[seg.array == 5].mean() - 89) > 20


def test_pydicom_fallback_matches_gdcm(totalseg_dir: Path, monkeypatch) -> None:
    pytest.importorskip("pylibjpeg")  # the `dicom` extra (pydicom + pylibjpeg)
    ct_dir = totalseg_dir / "example_ct_dicom"
    expected = _load(ct_dir)

    def gdcm_fails(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("simulated: GDCM built without a JPEG 2000 codec")

    monkeypatch.setattr(pixels_module, "_read_pixels_sitk", gdcm_fails)
    fallback = load_volume(ct_dir)
    assert fallback.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(fallback.array, expected.array)
    np.testing.assert_array_equal(fallback.affine, expected.affine)


def test_missing_decoder_error_names_the_extra(totalseg_dir: Path, monkeypatch) -> None:
    ct_dir = totalseg_dir / "example_ct_dicom"

    def gdcm_fails(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("simulated: GDCM built without a JPEG 2000 codec")

    def no_pydicom() -> object:
        raise ImportError("No module named 'pydicom'")

    monkeypatch.setattr(pixels_module, "_read_pixels_sitk", gdcm_fails)
    monkeypatch.setattr(pixels_module, "_import_pydicom", no_pydicom)
    with pytest.raises(MissingDecoderError) as info:
        load_volume(ct_dir)
    message = str(info.value)
    assert str(ct_dir) in message
    assert 'pip install "medseg[dicom]"' in message
    assert "JPEG 2000" in message

    # pydicom present but pylibjpeg missing: pydicom cannot decode either.
    def undecodable(path: str) -> object:
        def pixel_array() -> np.ndarray:
            raise RuntimeError("no pixel data decoders are available")

        return SimpleNamespace(pixel_array=property(pixel_array).__get__(object()))

    monkeypatch.setattr(pixels_module, "_import_pydicom", lambda: SimpleNamespace(dcmread=undecodable))
    monkeypatch.setattr(pixels_module, "_have_jpeg_decoders", lambda: False)
    with pytest.raises(MissingDecoderError, match=r"medseg\[dicom\]"):
        load_volume(ct_dir)


def test_hippocrop_slices_follow_position_not_file_name(hippocrop_dir: Path) -> None:
    pydicom = pytest.importorskip("pydicom")  # the `dicom` extra
    folders = sorted(hippocrop_dir.glob("Study*/*_HCropVolume"))
    assert len(folders) == 3
    for folder in folders:
        files = sorted(folder.glob("*.dcm"))  # text order: 1, 10, 11, ... (the trap)
        headers = [pydicom.dcmread(f) for f in files]
        z_text_order = [float(ds.ImagePositionPatient[2]) for ds in headers]
        assert z_text_order != sorted(z_text_order)
        volume = load_volume(folder)
        assert volume.shape[2] == len(files)
        by_instance = sorted(headers, key=lambda ds: int(ds.InstanceNumber))
        for k, ds in enumerate(by_instance):
            world = volume.affine @ [0, 0, k, 1]
            lps = np.array([float(x) for x in ds.ImagePositionPatient])
            np.testing.assert_allclose(world[:3] * [-1, -1, 1], lps, atol=1e-6)
            np.testing.assert_array_equal(volume.array[:, :, k], ds.pixel_array.T)


def test_several_series_listed_and_selectable(pgbm_dir: Path, tmp_path: Path) -> None:
    (image_dir, mask_dir) = next(pair for pair in _pgbm_studies(pgbm_dir) if "PGBM-008" in str(pair[0]))
    both = tmp_path / "both"
    both.mkdir()
    for prefix, folder in (("img", image_dir), ("msk", mask_dir)):
        for f in folder.iterdir():
            shutil.copy(f, both / f"{prefix}_{f.name}")
    infos = list_dicom_series(both)
    assert sorted((i.description, i.n_slices) for i in infos) == [("Mask_Tumor", 22), ("T1post", 22)]
    with pytest.raises(MultipleSeriesError) as info:
        load_volume(both)
    message = str(info.value)
    assert str(both) in message
    for series in infos:
        assert series.uid in message
        assert repr(series.description) in message
    assert "22 slice(s)" in message

    t1 = next(i for i in infos if i.description == "T1post")
    expected = _load(image_dir)
    chosen = load_volume(both, series="t1post")  # a unique description, case-insensitive
    np.testing.assert_array_equal(chosen.array, expected.array)
    np.testing.assert_array_equal(chosen.affine, expected.affine)
    for choice in (t1.uid, t1.uid[: len(t1.uid) - 10]):  # the UID, or a unique prefix of it
        assert dicom_module._choose_series(infos, choice, both) == t1
    # One file stands for its own series.
    one_file = load_volume(next(both.glob("msk_*")))
    np.testing.assert_array_equal(one_file.array, _load(mask_dir).array)
    with pytest.raises(UnreadableScanError, match="does not pick exactly one"):
        load_volume(both, series="1.3.6.1")  # a prefix shared by both


def test_list_dicom_series_on_sample(tmp_path: Path) -> None:
    folder = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"
    (infos,) = list_dicom_series(folder)
    assert infos.n_slices == 32
    assert infos.description == "HippoCrop"
    assert len(infos.files) == 32
    assert list_dicom_series(tmp_path) == []


def test_a_planning_export_reads_the_scan_not_the_dose_beside_it(tmp_path: Path) -> None:
    """A planning system exports the CT, its RT dose grid, the plan and the structures into one folder: the scan is
    the series that is not an RT dose (recorded in its Modality); the dose stays readable on request."""
    import pydicom
    from pydicom.data import get_testdata_file

    from medseg.io.dicom import folder_voxels, series_modality

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"
    export = tmp_path / "export"
    shutil.copytree(sample, export)
    # named to sort first, so no rule by file order can pass this test
    shutil.copy(get_testdata_file("rtdose.dcm"), export / "0_RD.dose.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), export / "0_RP.plan.dcm")
    expected = load_volume(sample)
    volume = load_volume(export)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_array_equal(volume.affine, expected.affine)
    assert series_modality(export) == series_modality(sample) == "MR"
    assert folder_voxels(export) == 34 * int(np.prod(expected.shape[:2]))  # 34 files x one MR slice's voxels
    dose = next(i for i in list_dicom_series(export) if i.modality == "RTDOSE")
    assert load_volume(export, series=dose.uid).shape != expected.shape  # the dose grid, asked for by its UID

    # Two scans beside a dose still need a choice.
    for f in sample.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(export / f"again_{f.name}")
    with pytest.raises(MultipleSeriesError):
        load_volume(export)


def test_a_folder_of_two_scans_reads_the_one_its_structure_set_was_drawn_on(tmp_path: Path) -> None:
    """A planning export with a CT and a registered second scan: the RTSTRUCT (or SEG) among the files names the
    series it was drawn on, and that one is read; two label files naming different series leave the choice open."""
    import pydicom
    from pydicom.uid import generate_uid

    from medseg.io.dicom import series_modality
    from medseg.io.rtstruct import save_rtstruct

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"
    second = tmp_path / "second"
    second.mkdir()
    for f in sorted(sample.glob("*.dcm")):  # another series: own UIDs, other pixel values
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["second series"])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f.name])
        ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        ds.Modality = "CT"
        ds.save_as(second / f.name)
    first_vol, second_vol = load_volume(sample), load_volume(second)
    assert not np.array_equal(first_vol.array, second_vol.array)
    labels = np.zeros(first_vol.shape, np.uint8)
    labels[5:20, 8:30, 6:12] = 1
    rs_first = save_rtstruct(labels, first_vol, tmp_path / "rs_first.dcm", ["background", "a"])
    rs_second = save_rtstruct(labels, second_vol, tmp_path / "rs_second.dcm", ["background", "a"])

    export = tmp_path / "export"
    shutil.copytree(sample, export)
    for f in second.iterdir():
        shutil.copy(f, export / f"MR_{f.name}")
    with pytest.raises(MultipleSeriesError):
        load_volume(export)
    assert series_modality(export) == "MR"  # the first file by name
    for structures, expected, modality in ((rs_first, first_vol, "MR"), (rs_second, second_vol, "CT")):
        shutil.copy(structures, export / "RS.dcm")
        np.testing.assert_array_equal(load_volume(export).array, expected.array)
        assert series_modality(export) == modality  # what data.modality: auto decides from
    shutil.copy(rs_first, export / "RS_other.dcm")  # two structure sets, drawn on different series
    with pytest.raises(MultipleSeriesError):
        load_volume(export)
    (second_info,) = list_dicom_series(second)
    np.testing.assert_array_equal(load_volume(export, series=second_info.uid).array, second_vol.array)
