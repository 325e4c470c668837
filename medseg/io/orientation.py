"""Reorientation to the closest canonical (RAS) voxel order, and back.

A 2D model learns anatomy in one plane and one handedness. Scans arrive in any voxel order (DICOM and NRRD
are usually LPS-stored, some NIfTI are LPS or permuted), so training and prediction both bring each volume to
the voxel order closest to RAS before slicing, and predictions are brought back to the scan's own grid
afterwards. Only axis permutations and flips are used: no resampling, so the round trip is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel.orientations as nio
import numpy as np

from medseg.volume import Volume


@dataclass(frozen=True)
class Reorientation:
    """How a volume's voxel axes map to the canonical (closest-RAS) axes.

    Attributes:
        perm: ``perm[c]`` is the source axis that becomes canonical axis ``c``.
        flip: ``flip[c]`` is whether canonical axis ``c`` runs opposite to its source axis.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        """True when the volume already is in canonical voxel order."""
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Brings an array whose last three axes are the source voxel axes into canonical order."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = np.transpose(array, (*range(lead), *(lead + p for p in self.perm)))
        for c, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis=lead + c)
        return np.ascontiguousarray(out)

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Brings an array whose last three axes are canonical back to the source voxel order (exact inverse)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = array
        for c, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis=lead + c)
        inverse = np.argsort(self.perm)
        out = np.transpose(out, (*range(lead), *(lead + int(i) for i in inverse)))
        return np.ascontiguousarray(out)


def canonical_reorientation(affine: np.ndarray) -> Reorientation:
    """The permutation and flips that bring voxel axes closest to RAS for ``affine``.

    Args:
        affine: 4x4 voxel -> RAS matrix (oblique allowed: the closest axes are chosen, as nibabel does).
    """
    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))  # row i: (world axis, sign) of voxel axis i
    perm = [0, 0, 0]
    flip = [False, False, False]
    for src, (world, sign) in enumerate(ornt):
        perm[int(world)] = src
        flip[int(world)] = bool(sign < 0)
    return Reorientation(perm=(perm[0], perm[1], perm[2]), flip=(flip[0], flip[1], flip[2]))


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """Returns ``volume`` in closest-RAS voxel order (with the matching affine) and the reorientation used.

    The returned volume describes the same voxels in the same world positions; only the index order differs.
    Its ``header`` is dropped (it described the source order); write masks with ``like=`` the original volume.
    """
    reo = canonical_reorientation(volume.affine)
    if reo.is_identity:
        return volume, reo
    shape = np.array(volume.shape)
    # New voxel index n maps to source index: s[perm[c]] = n[c] (or shape-1-n[c] when flipped).
    to_source = np.zeros((4, 4))
    to_source[3, 3] = 1.0
    for c, (src, flipped) in enumerate(zip(reo.perm, reo.flip, strict=True)):
        to_source[src, c] = -1.0 if flipped else 1.0
        to_source[src, 3] = shape[src] - 1 if flipped else 0.0
    affine = volume.affine @ to_source
    return Volume(array=reo.apply(np.asarray(volume.array)), affine=affine, source=volume.source), reo
