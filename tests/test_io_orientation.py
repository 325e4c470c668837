"""Reorientation to closest-RAS voxel order: same world positions, exact inverse."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medseg.io import load_volume
from medseg.io.orientation import canonical_reorientation, to_canonical
from medseg.volume import Volume


def _world(volume: Volume, index: np.ndarray) -> np.ndarray:
    return (volume.affine @ np.append(index, 1.0))[:3]


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, -1, 1), (-1, 1, -1)])
def test_every_permutation_and_flip_goes_to_ras_and_back(perm, signs, rng):
    linear = np.zeros((3, 3))
    for src, world in enumerate(perm):
        linear[world, src] = signs[src] * (src + 1.0)  # distinct spacings catch axis mix-ups
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [10.0, -20.0, 5.0]
    vol = Volume(array=rng.random((4, 5, 6)), affine=affine)

    canon, reo = to_canonical(vol)

    # The canonical affine is diagonal with positive entries: voxel axes run R, A, S.
    assert np.allclose(canon.affine[:3, :3], np.diag(np.diag(canon.affine[:3, :3])))
    assert (np.diag(canon.affine[:3, :3]) > 0).all()
    # Every voxel keeps its world position and value.
    for idx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        src_world = _world(vol, np.array(idx, float))
        matches = [c for c in np.ndindex(canon.shape) if np.allclose(_world(canon, np.array(c, float)), src_world)]
        assert len(matches) == 1
        assert canon.array[matches[0]] == vol.array[idx]
    assert np.array_equal(reo.invert(canon.array), vol.array)
    # Leading channel axes are carried along.
    stacked = np.stack([vol.array, 2 * vol.array])
    assert np.array_equal(reo.invert(reo.apply(stacked)), stacked)


def test_ras_volume_is_untouched(sample_hippo):
    vol = load_volume(next((sample_hippo / "imagesTr").glob("*.nii.gz")))
    canon, reo = to_canonical(vol)
    assert reo.is_identity and canon is vol


def test_lps_mr_example_is_flipped_to_ras(totalseg_dir):
    vol = load_volume(totalseg_dir / "example_mr_sm.nii.gz")
    canon, reo = to_canonical(vol)
    assert reo.flip[:2] == (True, True)
    assert (np.diag(canon.affine[:3, :3]) > 0).all()
    assert np.array_equal(reo.invert(canon.array), vol.array)


def test_oblique_dicom_picks_closest_axes(pgbm_dir):
    series = next(pgbm_dir.glob("PGBM-001/04-*/*T1post*"))
    vol = load_volume(series)
    reo = canonical_reorientation(vol.affine)
    canon, _ = to_canonical(vol)
    # Oblique by a few degrees: each canonical axis points mostly along its own RAS axis.
    direction = canon.direction
    assert (np.diag(direction) > 0.9).all()
    assert np.array_equal(reo.invert(canon.array), vol.array)
