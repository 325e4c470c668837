"""NRRD / MetaImage through SimpleITK: round trips keep the grid, including an oblique one from PGBM."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import UnreadableScanError
from medseg.io import load_volume, save_mask, save_volume
from medseg.io.geometry import array_to_sitk

SAMPLE_IMAGE = (
    Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_039.nii.gz"
)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nifti_to_itk_round_trip(tmp_path: Path, suffix: str) -> None:
    source = load_volume(SAMPLE_IMAGE)
    out = save_volume(source.array, source, tmp_path / f"v{suffix}")
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-9)
    np.testing.assert_array_equal(back.array, source.array)
    # SimpleITK reads the NRRD/MHA where it reads the original NIfTI.
    a, b = sitk.ReadImage(str(out)), sitk.ReadImage(str(SAMPLE_IMAGE))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_oblique_pgbm_round_trip(pgbm_dir: Path, tmp_path: Path, suffix: str) -> None:
    image_dir = next(pgbm_dir.glob("PGBM-001/04-02-1992*/*T1post*"))
    image = load_volume(image_dir)
    assert not np.allclose(np.abs(image.direction), np.eye(3), atol=1e-3)  # oblique
    out = save_volume(image.array, image, tmp_path / f"t1{suffix}")
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-9)
    np.testing.assert_array_equal(back.array, image.array.astype(np.float32))
    mask = save_mask((image.array > image.array.mean()).astype(np.uint8), image, tmp_path / f"m{suffix}")
    back_mask = load_volume(mask)
    assert back_mask.array.dtype == np.uint8
    np.testing.assert_allclose(back_mask.affine, image.affine, atol=1e-9)
    # ... and to NIfTI and back: same world coordinates (qform's float32 quaternion: ~1e-5 mm).
    nifti = load_volume(save_mask(back_mask.array, back_mask, tmp_path / "m.nii.gz"))
    np.testing.assert_allclose(nifti.affine, image.affine, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nhdr", ".mhd"])
def test_detached_headers_are_read(tmp_path: Path, suffix: str) -> None:
    source = load_volume(SAMPLE_IMAGE)
    path = tmp_path / f"v{suffix}"
    sitk.WriteImage(array_to_sitk(source.array, source.affine), str(path))
    assert len(list(tmp_path.iterdir())) == 2  # header + data file
    back = load_volume(path)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-9)
    np.testing.assert_array_equal(back.array, source.array)


def test_4d_and_vector_images_need_a_channel(tmp_path: Path) -> None:
    source = load_volume(SAMPLE_IMAGE)
    channels = [source.array, source.array * 2]
    vector = sitk.Compose([array_to_sitk(c, source.affine) for c in channels])
    vector_path = tmp_path / "vector.nrrd"
    sitk.WriteImage(vector, str(vector_path))
    with pytest.raises(UnreadableScanError, match="2 components") as info:
        load_volume(vector_path)
    assert str(vector_path) in str(info.value)
    picked = load_volume(vector_path, channel=1)
    np.testing.assert_array_equal(picked.array, channels[1])
    np.testing.assert_allclose(picked.affine, source.affine, atol=1e-9)

    series = sitk.JoinSeries([array_to_sitk(c, source.affine) for c in channels])  # 4D: (i, j, k, t)
    series_path = tmp_path / "series.mha"
    sitk.WriteImage(series, str(series_path))
    with pytest.raises(UnreadableScanError, match="4D volume with 2"):
        load_volume(series_path)
    picked = load_volume(series_path, channel=1)
    np.testing.assert_array_equal(picked.array, channels[1])
    np.testing.assert_allclose(picked.affine, source.affine, atol=1e-9)


def test_corrupt_itk_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n" + b"\x00" * 100)
    with pytest.raises(UnreadableScanError) as info:
        load_volume(bad)
    assert str(bad) in str(info.value)


def test_nifti_of_an_nrrd_source_gets_scanner_codes(tmp_path: Path) -> None:
    source = load_volume(SAMPLE_IMAGE)
    nrrd = load_volume(save_volume(source.array, source, tmp_path / "v.nrrd"))
    assert nrrd.header is None
    out = save_mask(np.zeros(nrrd.shape, np.uint8), nrrd, tmp_path / "m.nii.gz")
    header = nib.load(out).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(nib.load(out).affine, source.affine, atol=1e-6)


@pytest.mark.parametrize("header", ["scan.nhdr", "scan.mhd"])
def test_a_detached_header_without_its_voxel_file_names_that_file(
    sample_hippo: Path, tmp_path: Path, header: str
) -> None:
    image = sitk.ReadImage(str(next((sample_hippo / "imagesTr").glob("*.nii.gz"))))
    sitk.WriteImage(image, str(tmp_path / header))
    data = next(p for p in tmp_path.iterdir() if p.name != header)  # the voxel file SimpleITK wrote beside it
    assert load_volume(tmp_path / header).shape == image.GetSize()
    data.unlink()  # a copy that left the voxels behind
    with pytest.raises(UnreadableScanError, match=re.escape(f"its voxels are kept in '{data}'")):
        load_volume(tmp_path / header)
