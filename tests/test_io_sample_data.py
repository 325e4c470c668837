"""Real-file I/O on sample_data only, so a fresh clone (no ../shared/data) still tests reading and writing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg.io import list_dicom_series, load_volume, save_mask

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
DICOM = SAMPLE / "dicom" / "HippoCrop_Study1"


def test_sample_data_is_intact_and_small() -> None:
    lines = (SAMPLE / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 61
    for line in lines:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((SAMPLE / name).read_bytes()).hexdigest() == digest, name
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    for needed in ("CC-BY-SA 4.0", "Antonelli", "nd320-c3-3d-imaging-starter", "MIT"):
        assert needed in readme


def test_dataset_json_lists_the_cases(sample_hippo: Path) -> None:
    spec = json.loads((sample_hippo / "dataset.json").read_text(encoding="utf-8"))
    assert spec["numTraining"] == len(spec["training"]) == 14
    assert spec["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert spec["licence"] == "CC-BY-SA 4.0"
    for entry in spec["training"]:
        assert (sample_hippo / entry["image"]).is_file()
        assert (sample_hippo / entry["label"]).is_file()
    assert sorted(p.name for p in (sample_hippo / "imagesTr").iterdir()) == sorted(
        Path(e["image"]).name for e in spec["training"]
    )


def test_sample_cases_round_trip(sample_hippo: Path, tmp_path: Path) -> None:
    peaks = []
    for image_path in sorted((sample_hippo / "imagesTr").glob("*.nii.gz")):
        label_path = sample_hippo / "labelsTr" / image_path.name
        image, label = load_volume(image_path), load_volume(label_path)
        assert image.same_grid(label)
        assert set(np.unique(label.array)) == {0, 1, 2}
        peaks.append(float(image.array.max()))
        out = save_mask(label.array, like=image, path=tmp_path / image_path.name)
        source, written = nib.load(image_path), nib.load(out)
        np.testing.assert_array_equal(written.affine, source.affine)
        assert written.header.get_qform(coded=True)[1] == source.header.get_qform(coded=True)[1]
        assert written.header.get_sform(coded=True)[1] == source.header.get_sform(coded=True)[1]
        np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
        np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
        np.testing.assert_array_equal(load_volume(out).array, label.array)
    assert max(peaks) > 1e5  # the 1e5-scale intensity case is included
    assert min(peaks) < 300


def test_sample_dicom_reads_in_position_order(tmp_path: Path) -> None:
    (info,) = list_dicom_series(DICOM)
    volume = load_volume(DICOM)
    assert volume.shape == (35, 51, 32)
    assert volume.source == DICOM
    np.testing.assert_allclose(volume.spacing, [1.0, 1.0, 1.0])
    # File k.dcm sits at ImagePositionPatient z = k; its pixels must be slice k - 1, whatever the name order.
    for f in info.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        position = [float(x) for x in reader.Execute().GetOrigin()]
        assert position[2] == float(f.stem)
        k = int(f.stem) - 1
        np.testing.assert_allclose((volume.affine @ [0, 0, k, 1])[:3], np.multiply(position, [-1, -1, 1]))
        np.testing.assert_array_equal(volume.array[:, :, k], sitk.GetArrayFromImage(reader.Execute())[0].T)
    # A mask saved like the series lands on the same world points.
    out = save_mask((volume.array > volume.array.mean()).astype(np.uint8), volume, tmp_path / "m.nii.gz")
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)
    np.testing.assert_array_equal(back.array, volume.array > volume.array.mean())
