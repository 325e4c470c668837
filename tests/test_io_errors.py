"""One test per bad input: the right MedsegError subclass, and a message that names the file and the reason.

Bad inputs are built in tmp_path from copies of real files (sample_data/, always present; ../shared/data
where two DICOM series are needed). Sources are never modified.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import GeometryMismatchError, MultipleSeriesError, UnreadableScanError
from medseg.io import load_volume, save_mask

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
IMAGE = SAMPLE / "hippocampus" / "imagesTr" / "hippocampus_004.nii.gz"  # float32 image
DICOM = SAMPLE / "dicom" / "HippoCrop_Study1"


def _raises_naming(exc_type: type[Exception], path: Path, reason: str, **kwargs: object) -> str:
    with pytest.raises(exc_type) as info:
        load_volume(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message
    assert reason.lower() in message.lower(), message
    return message


def test_missing_path(tmp_path: Path) -> None:
    _raises_naming(UnreadableScanError, tmp_path / "nope.nii.gz", "no such file")
    _raises_naming(UnreadableScanError, tmp_path / "no_folder", "no such file or folder")


def test_folder_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    shutil.copy(SAMPLE / "README.md", folder / "README.md")
    _raises_naming(UnreadableScanError, folder, "no DICOM files")


def test_folder_with_scans_below_says_where(tmp_path: Path) -> None:
    shutil.copytree(DICOM, tmp_path / "study" / "series1")
    message = _raises_naming(UnreadableScanError, tmp_path / "study", "no DICOM files directly in it")
    assert "series1" in message


def test_truncated_nifti(tmp_path: Path) -> None:
    data = IMAGE.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    _raises_naming(UnreadableScanError, cut, "truncated")
    header_only = tmp_path / "header_cut.nii.gz"
    header_only.write_bytes(gzip.compress(gzip.decompress(data)[:200]))
    _raises_naming(UnreadableScanError, header_only, "not a valid NIfTI")


def test_non_image_named_nifti(tmp_path: Path) -> None:
    text = tmp_path / "readme.nii.gz"
    shutil.copy(SAMPLE / "README.md", text)
    _raises_naming(UnreadableScanError, text, "not a valid NIfTI")
    gzipped_text = tmp_path / "readme_gz.nii.gz"
    gzipped_text.write_bytes(gzip.compress((SAMPLE / "README.md").read_bytes()))
    _raises_naming(UnreadableScanError, gzipped_text, "not a valid NIfTI")


def test_unsupported_file_type(tmp_path: Path) -> None:
    other = tmp_path / "scan.png"
    shutil.copy(SAMPLE / "README.md", other)
    _raises_naming(UnreadableScanError, other, "unsupported file type")


def test_4d_volume_needs_a_channel(tmp_path: Path) -> None:
    img = nib.load(IMAGE)
    data = np.asanyarray(img.dataobj)
    four_d = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, 2 * data], axis=-1), img.affine, img.header), four_d)
    _raises_naming(UnreadableScanError, four_d, "4D volume with 2 channels")
    np.testing.assert_array_equal(load_volume(four_d, channel=1).array, 2 * data)
    _raises_naming(UnreadableScanError, four_d, "out of range", channel=2)
    # A trailing singleton 4th dimension is just a 3D scan.
    singleton = tmp_path / "one_channel.nii.gz"
    nib.save(nib.Nifti1Image(data[..., np.newaxis], img.affine, img.header), singleton)
    volume = load_volume(singleton)
    assert volume.shape == data.shape
    np.testing.assert_array_equal(volume.affine, img.affine)


def test_non_finite_voxels(tmp_path: Path) -> None:
    img = nib.load(IMAGE)
    data = np.asanyarray(img.dataobj).copy()
    data[3, 4, 5] = np.nan
    data[0, 0, 0] = np.inf
    bad = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bad)
    _raises_naming(UnreadableScanError, bad, "1 NaN and 1 infinite voxel(s) of")


def test_several_series_in_a_folder(hippocrop_dir: Path, tmp_path: Path) -> None:
    both = tmp_path / "two_series"
    both.mkdir()
    for study in ("Study1", "Study3"):
        for f in next((hippocrop_dir / study).iterdir()).iterdir():
            shutil.copy(f, both / f"{study}_{f.name}")
    message = _raises_naming(MultipleSeriesError, both, "holds 2 DICOM series")
    assert "32 slice(s)" in message
    assert "40 slice(s)" in message


def test_missing_slice(tmp_path: Path) -> None:
    gap = tmp_path / "gap"
    shutil.copytree(DICOM, gap)
    (gap / "17.dcm").unlink()  # HippoCrop: file k.dcm sits at z = k mm
    message = _raises_naming(UnreadableScanError, gap, "missing slice")
    assert "'16.dcm'" in message
    assert "'18.dcm'" in message


def test_duplicate_slice_positions(tmp_path: Path) -> None:
    dup = tmp_path / "dup"
    shutil.copytree(DICOM, dup)
    shutil.copy(dup / "5.dcm", dup / "5_copy.dcm")
    _raises_naming(UnreadableScanError, dup, "share a position")


def test_mask_shape_differs_from_like(tmp_path: Path) -> None:
    like = load_volume(IMAGE)
    target = tmp_path / "mask.nrrd"
    with pytest.raises(GeometryMismatchError) as info:
        save_mask(np.zeros(like.shape[::-1], np.uint8), like, target)
    assert str(target) in str(info.value)
    assert "shape" in str(info.value)
    assert not target.exists()


def test_mask_volume_on_another_grid(tmp_path: Path) -> None:
    like = load_volume(IMAGE)
    moved = like.with_array(np.zeros(like.shape, np.uint8))
    affine = like.affine.copy()
    affine[0, 3] += 0.5
    shifted = type(like)(array=moved.array, affine=affine)
    with pytest.raises(GeometryMismatchError, match="different grid"):
        save_mask(shifted, like, tmp_path / "m.nii.gz")
    save_mask(moved, like, tmp_path / "ok.nii.gz")  # a Volume on the same grid is fine


def test_colour_dicom_is_refused(tmp_path: Path) -> None:
    import locale

    import SimpleITK as sitk

    folder = tmp_path / "rgb"
    folder.mkdir()
    rng = np.random.default_rng(0)
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        for k in range(3):  # a tiny RGB secondary-capture series written by GDCM
            image = sitk.GetImageFromArray(rng.integers(0, 255, (8, 9, 3)).astype(np.uint8), isVector=True)
            image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
            image.SetMetaData("0020|0032", f"0\\0\\{k}")
            image.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(folder / f"{k}.dcm"))
            writer.Execute(image)
    finally:
        # GDCM's DICOM writer switches the process locale to "C" (text I/O would become ASCII for later tests).
        locale.setlocale(locale.LC_ALL, saved_locale)
    _raises_naming(UnreadableScanError, folder, "colour")


def test_single_slice_series(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(DICOM / "7.dcm", folder / "7.dcm")
    volume = load_volume(folder)
    assert volume.shape == (35, 51, 1)
    np.testing.assert_allclose(volume.affine @ [0, 0, 0, 1], [0, 0, 7, 1])


def test_truncated_dicom_slice_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "cut"
    shutil.copytree(DICOM, folder)
    data = (DICOM / "12.dcm").read_bytes()
    (folder / "12.dcm").write_bytes(data[: len(data) - 500])
    message = _raises_naming(UnreadableScanError, folder, "missing slice")
    assert "unreadable file(s) skipped: '12.dcm'" in message
