"""NIfTI reading and mask writing on real files: the source header's geometry must survive exactly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import GeometryMismatchError, MedsegError, OutputExistsError
from medseg.io import load_volume, save_mask, save_volume
from medseg.volume import Volume

GEOMETRY_FIELDS = [
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "pixdim",
    "xyzt_units",
]


def _assert_same_geometry(written: Path, source: Path) -> None:
    a, b = nib.load(written), nib.load(source)
    np.testing.assert_array_equal(a.affine, b.affine)
    for field in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(a.header[field], b.header[field], err_msg=field)
    qa, qcode_a = a.header.get_qform(coded=True)
    qb, qcode_b = b.header.get_qform(coded=True)
    sa, scode_a = a.header.get_sform(coded=True)
    sb, scode_b = b.header.get_sform(coded=True)
    assert (qcode_a, scode_a) == (qcode_b, scode_b)
    np.testing.assert_array_equal(qa, qb)
    np.testing.assert_array_equal(sa, sb)


def test_every_hippocampus_case_round_trips(hippo_dir: Path, tmp_path: Path) -> None:
    images = sorted((hippo_dir / "imagesTr").glob("*.nii.gz"))
    assert len(images) == 91
    for image_path in images:
        label_path = hippo_dir / "labelsTr" / image_path.name
        image = load_volume(image_path)
        label = load_volume(label_path)
        assert image.same_grid(label), image_path.name
        out = save_mask(label.array, like=image, path=tmp_path / image_path.name)
        _assert_same_geometry(out, image_path)
        written = nib.load(out)
        assert written.get_data_dtype() == np.uint8
        assert (written.dataobj.slope, written.dataobj.inter) == (1.0, 0.0)  # as stored in the file
        np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(nib.load(label_path).dataobj))


def test_reading_keeps_values_dtype_and_header(hippo_dir: Path) -> None:
    path = hippo_dir / "imagesTr" / "hippocampus_044.nii.gz"  # float32, values up to ~3.6e5
    volume = load_volume(path)
    img = nib.load(path)
    np.testing.assert_array_equal(volume.array, img.get_fdata(dtype=np.float32))
    assert volume.array.dtype == np.float32
    assert volume.array.max() > 1e5
    assert volume.source == path
    assert isinstance(volume.header, nib.Nifti1Header)
    np.testing.assert_array_equal(volume.affine, img.affine)
    np.testing.assert_array_equal(volume.spacing, [1.0, 1.0, 1.0])


def test_lps_mr_example_keeps_its_affine(totalseg_dir: Path, tmp_path: Path) -> None:
    mr_path = totalseg_dir / "example_mr_sm.nii.gz"
    mr = load_volume(mr_path)
    assert nib.aff2axcodes(mr.affine) == ("L", "P", "S")
    seg = load_volume(totalseg_dir / "example_seg_mr.nii.gz")
    assert seg.same_grid(mr)
    out = save_mask(seg.array, like=mr, path=tmp_path / "seg.nii.gz")
    _assert_same_geometry(out, mr_path)
    np.testing.assert_array_equal(load_volume(out).array, seg.array)
    # ITK reads it where it reads the scan (ITK uses qform/sform by its own rules).
    a, b = sitk.ReadImage(str(out)), sitk.ReadImage(str(mr_path))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_mask_dtype_and_label_checks(sample_hippo: Path, tmp_path: Path) -> None:
    like = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")
    many = np.zeros(like.shape, dtype=np.int64)
    many[0, 0, 0] = 300
    out = save_mask(many, like, tmp_path / "big.nii.gz")
    assert nib.load(out).get_data_dtype() == np.uint16
    assert load_volume(out).array[0, 0, 0] == 300
    as_float = np.zeros(like.shape, dtype=np.float32)
    as_float[1, 1, 1] = 2.0
    assert nib.load(save_mask(as_float, like, tmp_path / "f.nii.gz")).get_data_dtype() == np.uint8
    boolean = np.zeros(like.shape, dtype=bool)
    assert nib.load(save_mask(boolean, like, tmp_path / "b.nii.gz")).get_data_dtype() == np.uint8
    for bad, reason in [(-1, "negative"), (0.5, "non-integer"), (70000, "uint16")]:
        arr = np.zeros(like.shape, dtype=np.float64)
        arr[2, 2, 2] = bad
        target = tmp_path / f"bad_{reason}.nii.gz"
        with pytest.raises(MedsegError, match=reason) as info:
            save_mask(arr, like, target)
        assert str(target) in str(info.value)
        assert not target.exists()


def test_mask_shape_mismatch_writes_nothing(sample_hippo: Path, tmp_path: Path) -> None:
    like = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(GeometryMismatchError) as info:
        save_mask(np.zeros((*like.shape[:2], like.shape[2] + 1), np.uint8), like, target)
    assert str(target) in str(info.value)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(sample_hippo: Path, tmp_path: Path) -> None:
    like = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")
    target = tmp_path / "mask.nii.gz"
    save_mask(np.zeros(like.shape, np.uint8), like, target)
    with pytest.raises(OutputExistsError) as info:
        save_mask(np.ones(like.shape, np.uint8), like, target)
    assert str(target) in str(info.value)
    assert load_volume(target).array.max() == 0
    save_mask(np.ones(like.shape, np.uint8), like, target, overwrite=True)
    assert load_volume(target).array.min() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]  # no temp files left behind


def test_default_extension_and_unsupported_extension(sample_hippo: Path, tmp_path: Path) -> None:
    like = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")
    out = save_mask(np.zeros(like.shape, np.uint8), like, tmp_path / "case")
    assert out == tmp_path / "case.nii.gz"
    assert out.exists()
    for name in ("case.png", "case.mhd"):
        with pytest.raises(MedsegError, match="unsupported output type"):
            save_mask(np.zeros(like.shape, np.uint8), like, tmp_path / name)


def test_save_volume_writes_float32(sample_hippo: Path, tmp_path: Path) -> None:
    path = sample_hippo / "imagesTr" / "hippocampus_001.nii.gz"
    like = load_volume(path)
    probs = np.linspace(0, 1, like.array.size, dtype=np.float64).reshape(like.shape)
    out = save_volume(probs, like, tmp_path / "p.nii.gz")
    _assert_same_geometry(out, path)
    back = load_volume(out)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, probs, atol=1e-7)
    with pytest.raises(MedsegError, match="NaN"):
        save_volume(np.full(like.shape, np.nan), like, tmp_path / "nan.nii.gz")


def test_volume_without_header_gets_scanner_codes(tmp_path: Path) -> None:
    affine = np.array([[0.0, 0.0, 2.0, -10.0], [-0.5, 0.0, 0.0, 20.0], [0.0, 0.8, 0.0, -30.0], [0, 0, 0, 1]])
    like = Volume(array=np.zeros((4, 5, 6), np.int16), affine=affine)
    out = save_mask(np.ones((4, 5, 6), np.uint8), like, tmp_path / "m.nii.gz")
    hdr = nib.load(out).header
    assert int(hdr["qform_code"]) == 1
    assert int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(hdr.get_sform(), affine, atol=1e-6)


def test_changed_affine_is_not_hidden_by_the_old_header(sample_hippo: Path, tmp_path: Path) -> None:
    source = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")
    shifted_affine = source.affine.copy()
    shifted_affine[:3, 3] += [5.0, 0.0, 0.0]
    shifted = Volume(array=source.array, affine=shifted_affine, source=source.source, header=source.header)
    out = save_mask(np.zeros(source.shape, np.uint8), shifted, tmp_path / "m.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, shifted_affine, atol=1e-6)


def test_the_mask_of_a_2d_nifti_is_2d(sample_hippo: Path, tmp_path: Path) -> None:
    # A 2D file is read as one slice (K = 1); its mask gets the file's own two dimensions back.
    src = nib.load(next((sample_hippo / "imagesTr").glob("*.nii.gz")))
    plane = np.asarray(src.dataobj)[:, :, 10]
    path = tmp_path / "slice2d.nii.gz"
    nib.save(nib.Nifti1Image(plane, src.affine), path)
    scan = load_volume(path)
    assert scan.shape == (*plane.shape, 1)
    out = save_mask((scan.array > scan.array.mean()).astype(np.uint8), like=scan, path=tmp_path / "mask.nii.gz")
    written, ref = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
    assert written.GetDimension() == ref.GetDimension() == 2 and written.GetSize() == ref.GetSize()
    assert written.GetSpacing() == ref.GetSpacing() and written.GetOrigin() == ref.GetOrigin()
    assert nib.load(out).shape == plane.shape
