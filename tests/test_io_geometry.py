"""RAS <-> LPS and (k, j, i) <-> (i, j, k) conversions, checked against SimpleITK's own index -> point mapping."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medseg.io.geometry import (
    affine_from_itk,
    array_to_sitk,
    itk_from_affine,
    sitk_affine,
    sitk_to_array,
)
from medseg.volume import RAS_TO_LPS


def _random_image(rng: np.random.Generator, left_handed: bool = False) -> sitk.Image:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if (np.linalg.det(q) < 0) != left_handed:
        q[:, 0] *= -1
    image = sitk.GetImageFromArray(rng.integers(0, 1000, size=(5, 4, 3)).astype(np.int16))  # (k, j, i)
    image.SetSpacing(rng.uniform(0.3, 4.0, size=3).tolist())
    image.SetOrigin(rng.uniform(-200, 200, size=3).tolist())
    image.SetDirection(q.ravel().tolist())
    return image


def test_affine_maps_voxels_to_sitk_points_in_ras(rng: np.random.Generator) -> None:
    for left_handed in (False, True):
        image = _random_image(rng, left_handed)
        affine = sitk_affine(image)
        for index in [(0, 0, 0), (2, 3, 4), (1, 0, 3), (2, 3, 0)]:
            lps = np.array(image.TransformIndexToPhysicalPoint(index))
            ras = (affine @ [*index, 1.0])[:3]
            np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)


def test_array_order_is_i_j_k(rng: np.random.Generator) -> None:
    image = _random_image(rng)
    array = sitk_to_array(image)
    assert array.shape == image.GetSize()
    for index in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        assert array[index] == image.GetPixel(index)


def test_itk_affine_round_trip(rng: np.random.Generator) -> None:
    image = _random_image(rng)
    spacing, origin, direction = itk_from_affine(sitk_affine(image))
    np.testing.assert_allclose(spacing, image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(origin, image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(direction.ravel(), image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(affine_from_itk(spacing, origin, direction), sitk_affine(image), atol=1e-12)


def test_array_to_sitk_round_trip(rng: np.random.Generator) -> None:
    array = rng.integers(0, 50, size=(6, 7, 8)).astype(np.uint8)
    affine = np.diag([-0.8, 1.2, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    image = array_to_sitk(array, affine)
    assert image.GetSize() == (6, 7, 8)
    np.testing.assert_array_equal(sitk_to_array(image), array)
    np.testing.assert_allclose(sitk_affine(image), affine, atol=1e-12)
    # LPS: RAS x -> -x, so a RAS spacing of -0.8 along i is an LPS direction of +1 along x.
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), np.diag([1.0, -1.0, 1.0]))


def test_ras_to_lps_is_its_own_inverse() -> None:
    np.testing.assert_array_equal(RAS_TO_LPS @ RAS_TO_LPS, np.eye(4))
