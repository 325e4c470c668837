"""``Volume``'s repr: one line with shape, spacing, orientation code, dtype and source; never the voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.io import load_volume
from medseg.volume import RAS_TO_LPS, Volume

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
SCAN = SAMPLE / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"


def test_repr_of_a_real_scan_is_one_concise_line() -> None:
    volume = load_volume(SCAN)
    text = repr(volume)
    spacing = ", ".join(f"{s:.4g}" for s in volume.spacing)
    assert text == (
        f"Volume(shape={volume.shape}, spacing=({spacing}) mm, orientation='{volume.orientation}', "
        f"dtype={volume.array.dtype}, source='{SCAN}')"
    )
    assert "\n" not in text and len(text) < 300


def test_orientation_codes() -> None:
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    assert Volume(array, np.diag([2.0, 1.0, 3.0, 1.0])).orientation == "RAS"
    assert Volume(array, RAS_TO_LPS).orientation == "LPS"
    permuted = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert Volume(array, permuted).orientation == "ASR"
    text = repr(Volume(array, np.diag([2.0, 1.0, 3.0, 1.0])))
    assert text == "Volume(shape=(2, 3, 4), spacing=(2, 1, 3) mm, orientation='RAS', dtype=uint8, source=None)"


def test_repr_of_a_degenerate_affine_does_not_raise() -> None:
    degenerate = np.diag([1.0, 0.0, 1.0, 1.0])  # a zero column: no orientation for j
    assert "orientation='R?S'" in repr(Volume(np.zeros((2, 2, 2)), degenerate))
