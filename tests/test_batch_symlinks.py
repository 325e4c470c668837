"""Symbolic links in batch prediction: links to scan files, to DICOM series folders, and a series folder of
links to DICOM files predict exactly as the real files do, with no phantom failed "series" for the folder."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.inference.batch import predict_folder
from medseg.inference.predictor import Predictor
from medseg.io import case_id_from_path, find_scans, load_volume
from tests.test_inference import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
HIPPO = SAMPLE / "hippocampus" / "imagesTr"
DICOM = SAMPLE / "dicom" / "HippoCrop_Study1"
NIFTI = ("hippocampus_001", "hippocampus_003")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")
    return Predictor.from_checkpoint(path, device="cpu", precision="fp32")


def _linked_tree(root: Path) -> Path:
    """``links/``: links to two NIfTI files, a link to a DICOM folder, a real folder of links to .dcm files."""
    links = root / "links"
    links.mkdir(parents=True)
    for case in NIFTI:
        (links / f"{case}.nii.gz").symlink_to(HIPPO / f"{case}.nii.gz")
    (links / "linked_series").symlink_to(DICOM, target_is_directory=True)
    series = links / "series_of_links"
    series.mkdir()
    for f in sorted(DICOM.iterdir()):
        (series / f.name).symlink_to(f)
    return links


def test_find_scans_follows_links(tmp_path: Path) -> None:
    links = _linked_tree(tmp_path)
    scans = find_scans(links)
    assert scans == sorted(
        [*(links / f"{c}.nii.gz" for c in NIFTI), links / "linked_series", links / "series_of_links"]
    )
    # Named by the link, not by its target.
    assert [case_id_from_path(p) for p in scans] == [*NIFTI, "linked_series", "series_of_links"]


def test_find_scans_survives_a_link_loop(tmp_path: Path) -> None:
    links = _linked_tree(tmp_path)
    (links / "series_of_links" / "loop").symlink_to(links, target_is_directory=True)
    assert len(find_scans(links)) == 4


def test_linked_scans_predict_like_the_files(predictor: Predictor, tmp_path: Path) -> None:
    links = _linked_tree(tmp_path)
    out = tmp_path / "out"
    result = predict_folder(predictor, links, out, progress=False)
    with (out / "predictions.csv").open(newline="") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert (result.n_ok, result.n_failed) == (4, 0), rows
    assert result.exit_code == 0
    assert set(rows) == {*NIFTI, "linked_series", "series_of_links"}
    assert all(r["status"] == "ok" for r in rows.values())
    # Each mask is the one the real file gives, on the real file's grid.
    real = {**{c: HIPPO / f"{c}.nii.gz" for c in NIFTI}, "linked_series": DICOM, "series_of_links": DICOM}
    for case, source in real.items():
        scan = load_volume(source)
        mask = load_volume(out / f"{case}.nii.gz")
        assert mask.same_grid(scan), case
        expected = predictor.predict(scan).array
        assert np.array_equal(np.asarray(nib.load(out / f"{case}.nii.gz").dataobj), expected), case
    assert all(not p.is_symlink() for p in out.iterdir()), "outputs are files, not links into the inputs"
