"""One file holding a volume: multi-frame, RT dose and Siemens mosaic files are read exactly or refused.

The files are built in the test with pydicom from the real PGBM T1post series (and, for the mosaic, from the
header of nibabel's own Siemens mosaic test file), so every geometry has the real series' oblique orientation,
non-square slices and 6.5 mm slice spacing (!= 5 mm SliceThickness).
"""

from __future__ import annotations

import copy
import functools
import gzip
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import medseg.io.dicom_frames as dicom_frames
from medseg.errors import MissingDecoderError, MultipleVolumesError, UnreadableScanError
from medseg.io import load_volume
from medseg.volume import RAS_TO_LPS, Volume

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"


def _t1post(pgbm_dir: Path) -> Path:
    return sorted(pgbm_dir.glob("PGBM-001/04-02-1992*/*T1post*"))[0]


@functools.cache
def _series(folder: Path) -> tuple[Volume, list[Any]]:
    files = sorted(folder.glob("*.dcm"))
    return load_volume(folder), [pydicom.dcmread(f) for f in files]


def _new_file(first: Any, sop_class: str, n_frames: int) -> Any:
    ds = copy.deepcopy(first)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "InstanceNumber"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = n_frames
    return ds


def _enhanced(slices: list[Any], *, positions: bool = True) -> Any:
    """An Enhanced MR multi-frame file holding ``slices`` (in the given order) as frames."""
    ds = _new_file(slices[0], ENHANCED_MR, len(slices))
    del ds.PixelSpacing
    orientation, measures, shared = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = slices[0].ImageOrientationPatient
    measures.PixelSpacing = slices[0].PixelSpacing
    measures.SliceThickness = slices[0].SliceThickness
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for s in slices:
        group = Dataset()
        if positions:
            position = Dataset()
            position.ImagePositionPatient = s.ImagePositionPatient
            group.PlanePositionSequence = Sequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    return ds


def _save(ds: Any, folder: Path, name: str = "volume.dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


def _shuffled(slices: list[Any]) -> list[Any]:
    order = np.random.default_rng(0).permutation(len(slices))
    return [slices[i] for i in order]


def _assert_same_grid(volume: Volume, reference: Volume) -> None:
    assert volume.shape == reference.shape
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4, rtol=0)


def test_single_volume_multiframe_reads_like_its_series(pgbm_dir: Path, tmp_path: Path) -> None:
    reference, slices = _series(_t1post(pgbm_dir))
    path = _save(_enhanced(_shuffled(slices)), tmp_path / "mf")  # frames out of position order
    for source in (path.parent, path):
        volume = load_volume(source)
        _assert_same_grid(volume, reference)
        np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.spacing[2] == pytest.approx(6.5, abs=1e-3)  # from the positions, not SliceThickness (5 mm)


def test_two_volume_multiframe_is_refused_with_what_to_do(pgbm_dir: Path, tmp_path: Path) -> None:
    _, slices = _series(_t1post(pgbm_dir))
    path = _save(_enhanced(_shuffled(slices * 2)), tmp_path / "two")
    with pytest.raises(MultipleVolumesError) as info:
        load_volume(path.parent)
    message = str(info.value)
    assert str(path.parent) in message and "'volume.dcm'" in message
    assert f"2 volumes of {len(slices)} slice positions each ({2 * len(slices)} frames)" in message
    assert "dcm2niix" in message


def test_uneven_repeats_and_gaps_in_a_multiframe_are_refused(pgbm_dir: Path, tmp_path: Path) -> None:
    _, slices = _series(_t1post(pgbm_dir))
    path = _save(_enhanced([*slices, slices[3]]), tmp_path / "repeat")
    with pytest.raises(MultipleVolumesError, match=r"25 frames at only 24 slice positions \(1 to 2 frames"):
        load_volume(path)
    path = _save(_enhanced(slices[:10] + slices[11:]), tmp_path / "gap")
    with pytest.raises(
        UnreadableScanError, match=r"missing slice\(s\): a gap of 13\.000 mm .*'volume\.dcm, frame \d+'.*about 1 slice"
    ):
        load_volume(path)


def test_multiframe_without_positions_is_refused(pgbm_dir: Path, tmp_path: Path) -> None:
    _, slices = _series(_t1post(pgbm_dir))
    path = _save(_enhanced(slices, positions=False), tmp_path / "nopos")
    with pytest.raises(UnreadableScanError, match=r"frame 1 of 24 in 'volume.dcm' has no ImagePositionPatient"):
        load_volume(path.parent)
    # A classic multi-frame file with one plane and no frame offsets: positions unknown, never invented.
    ds = _new_file(slices[0], "1.2.840.10008.5.1.4.1.1.4", len(slices))
    ds.ImagePositionPatient, ds.ImageOrientationPatient = (
        slices[0].ImagePositionPatient,
        slices[0].ImageOrientationPatient,
    )
    ds.PixelData = b"".join(s.PixelData for s in slices)
    path = _save(ds, tmp_path / "classic")
    with pytest.raises(UnreadableScanError, match="only one ImagePositionPatient and no GridFrameOffsetVector"):
        load_volume(path)


def _rt_dose(slices: list[Any], reference: Volume, scaling: float | None) -> Any:
    """An RT dose grid on the series' grid: frames in position order, offsets along the normal from slice 0."""
    normal = np.cross(*np.array([float(v) for v in slices[0].ImageOrientationPatient]).reshape(2, 3))
    along = {id(s): float(np.array([float(v) for v in s.ImagePositionPatient]) @ normal) for s in slices}
    ordered = sorted(slices, key=lambda s: along[id(s)])
    ds = _new_file(ordered[0], RT_DOSE, len(ordered))
    ds.Modality = "RTDOSE"
    ds.ImagePositionPatient = ordered[0].ImagePositionPatient
    ds.ImageOrientationPatient = ordered[0].ImageOrientationPatient
    ds.GridFrameOffsetVector = [round(along[id(s)] - along[id(ordered[0])], 4) for s in ordered]
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    if scaling is not None:
        ds.DoseGridScaling = scaling
    ds.PixelData = b"".join(s.PixelData for s in ordered)
    return ds


def test_rt_dose_applies_dose_grid_scaling(pgbm_dir: Path, tmp_path: Path, caplog) -> None:
    reference, slices = _series(_t1post(pgbm_dir))
    path = _save(_rt_dose(slices, reference, 2.5e-4), tmp_path / "dose")
    with caplog.at_level(logging.INFO, logger="medseg.io.dicom_frames"):
        dose = load_volume(path.parent)
    _assert_same_grid(dose, reference)
    assert dose.array.dtype == np.float32
    np.testing.assert_allclose(dose.array, reference.array * 2.5e-4, rtol=1e-6)
    assert "voxel values are dose in Gy" in caplog.text
    path = _save(_rt_dose(slices, reference, None), tmp_path / "unscaled")
    with pytest.raises(UnreadableScanError, match="RT dose grid without DoseGridScaling"):
        load_volume(path)


_NIBABEL_MOSAIC = Path(__import__("nibabel").__file__).parent / "nicom" / "tests" / "data" / "siemens_dwi_1000.dcm.gz"


@pytest.fixture
def mosaic_header() -> Any:
    """nibabel's Siemens DWI mosaic (7x7 tiles of 128x128, 48 slices; its pixels are all zero)."""
    if not _NIBABEL_MOSAIC.exists():
        pytest.skip(f"needs nibabel's mosaic test file {_NIBABEL_MOSAIC} (not in this nibabel install)")
    return pydicom.dcmread(io.BytesIO(gzip.decompress(_NIBABEL_MOSAIC.read_bytes())))


def _mosaic_with_real_tiles(ds: Any, slices: list[Any]) -> Any:
    """The mosaic header with its 48 tiles filled from real PGBM slices (cropped to 128x128)."""
    ds = copy.deepcopy(ds)
    m, tile = 7, 128
    pixels = np.zeros((m * tile, m * tile), dtype=np.uint16)
    for k in range(48):
        r, c = divmod(k, m)
        source = slices[k % len(slices)].pixel_array[60 : 60 + tile, 40 : 40 + tile]
        pixels[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = source + k  # + k: no two tiles alike
    ds.PixelData = pixels.tobytes()
    return ds


def test_mosaic_is_unpacked_like_nibabel(pgbm_dir: Path, tmp_path: Path, mosaic_header: Any) -> None:
    _, slices = _series(_t1post(pgbm_dir))
    ds = _mosaic_with_real_tiles(mosaic_header, slices)
    path = _save(ds, tmp_path / "mosaic")
    volume = load_volume(path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel: "DICOM readers are highly experimental"
        from nibabel.nicom import dicomwrappers

        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
        expected = wrapper.get_data()  # (rows, columns, slices)
    assert type(wrapper).__name__ == "MosaicWrapper"
    assert volume.shape == (128, 128, 48)
    assert len({int(volume.array[:, :, k].sum()) for k in range(48)}) == 48  # every tile its own slice
    np.testing.assert_array_equal(volume.array, expected.transpose(1, 0, 2))
    # nibabel's affine maps (row, column, slice) to LPS; medseg's (column, row, slice) to RAS.
    lps = RAS_TO_LPS @ volume.affine
    np.testing.assert_allclose(lps[:, [1, 0, 2, 3]], wrapper.affine, atol=2e-3, rtol=0)
    assert volume.spacing[2] == pytest.approx(float(ds.SpacingBetweenSlices))
    # Independent of both unpackers: the scanner's protocol (ASCCONV in the CSA series header) lists each
    # slice's centre (Siemens' in-plane centre is voxel N/2). Slice order, spacing and corner shift must match.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import ascconv, csareader
    protocol = csareader.get_scalar(csareader.get_csa_header(ds, "series"), "MrPhoenixProtocol")
    text = protocol[protocol.index("### ASCCONV BEGIN") : protocol.index("### ASCCONV END ###") + 19]
    planned = ascconv.parse_ascconv(text, '""')[0]["sSliceArray"]["asSlice"]
    assert len(planned) == 48
    for k in (0, 23, 47):
        centre = [planned[k]["sPosition"].get(axis, 0.0) for axis in ("dSag", "dCor", "dTra")]  # LPS mm
        np.testing.assert_allclose((lps @ [64, 64, k, 1])[:3], centre, atol=0.01, err_msg=f"slice {k}")


def test_mosaic_without_csa_and_several_mosaics_are_refused(tmp_path: Path, mosaic_header: Any) -> None:
    ds = copy.deepcopy(mosaic_header)
    del ds[0x0029, 0x1010]  # the CSA image header
    path = _save(ds, tmp_path / "nocsa")
    with pytest.raises(UnreadableScanError, match=r"Siemens mosaic .* without NumberOfImagesInMosaic"):
        load_volume(path)
    for i in range(3):  # three diffusion directions / time points of one series
        ds = copy.deepcopy(mosaic_header)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        _save(ds, tmp_path / "series", f"{i}.dcm")
    with pytest.raises(MultipleVolumesError, match=r"3 files of which 3 are Siemens mosaic files.*dcm2niix"):
        load_volume(tmp_path / "series")


def test_compressed_multiframe_reads_like_its_series_with_either_decoder(
    totalseg_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from pydicom.encaps import encapsulate, generate_frames

    series = totalseg_dir / "example_ct_dicom"
    reference = load_volume(series)
    slices = _shuffled([pydicom.dcmread(f) for f in sorted(series.iterdir())])
    assert slices[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 Lossless
    ds = _enhanced(slices)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = slices[0].RescaleSlope, slices[0].RescaleIntercept
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = Sequence([transform])
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelData = encapsulate([next(generate_frames(s.PixelData, number_of_frames=1)) for s in slices])
    path = _save(ds, tmp_path / "ct")
    volume = load_volume(path)
    _assert_same_grid(volume, reference)
    np.testing.assert_array_equal(volume.array, reference.array)

    # Without pydicom's JPEG 2000 plugins, GDCM decodes the frames: the same voxels.
    def no_decoder(self: Any) -> np.ndarray:
        raise RuntimeError("simulated: no pixel data handler for JPEG 2000")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    np.testing.assert_array_equal(load_volume(path).array, reference.array)
    # Neither decoder: refused, naming the extra to install.
    monkeypatch.setattr(dicom_frames, "_gdcm_frames", lambda path, n: None)
    with pytest.raises(MissingDecoderError, match=r"'volume\.dcm' is compressed .*medseg\[dicom\]"):
        load_volume(path)
