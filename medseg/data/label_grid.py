"""A label saved on another voxel grid than its image's, placed on the image's grid when that is exact.

Segmentation tools may save a label with the voxel axes in another order (a label written in RAS order for an
LPS image) or on the image's grid cut to the label's extent (label maps exported cut to their segments). The
label's voxels then sit exactly on voxels of the image, with the axes permuted or flipped and shifted by whole
voxels. Another axis order covers the same voxels in space and is always placed; a cut label is placed only when
the config says so (``data.place_cut_labels``): where headers carry no position (origin 0, spacing 1, common in
research sets) a truncated label, or one of another case, would fit just as well. (A 3D Slicer ``.seg.nrrd``
is always placed: its header carries the real positions of a segmentation of that image,
``medseg.io.slicer_seg``.) Any other difference (another spacing, a fraction of a voxel, a rotation) cannot be
placed without resampling, and the label is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.volume import Volume


@dataclass(frozen=True)
class Placement:
    """A label placed on its image's grid.

    Attributes:
        volume: The label on the image's grid.
        box: The image voxels the label's grid covers, ``[first, last]`` per axis (may reach beyond the image).
        whole: The label's grid is the image's own, in another axis order (the same voxels in space).
        outside: Labelled (non-zero) voxels of the label beyond the image's extent, left out of ``volume``.
    """

    volume: Volume
    box: list[list[int]]
    whole: bool
    outside: int

    def problem(self, image_shape: tuple[int, ...]) -> str | None:
        """Why the placement loses labels (labelled voxels beyond the image), or ``None``."""
        if not self.outside:
            return None
        return (
            f"{self.outside} labelled voxels lie outside the image (the label grid covers image voxels {self.box}, "
            f"the image {[[0, s - 1] for s in image_shape]})"
        )


def place_on_grid(label: Volume, image: Volume, tolerance: float, *, fill: int = 0) -> Placement | None:
    """``label`` on ``image``'s voxel grid, when each of its voxels is exactly a voxel of that grid.

    That holds when label index -> image index is a signed permutation of the axes plus a whole-voxel shift:
    a label stored in another axis order, or cut to its extent. Label voxels off the image grid's extent are
    dropped (counted in ``outside``); image voxels the label does not cover get ``fill``: background, or the
    value of unannotated voxels (``data.ignore_label``) where the dataset has one (nobody drew there).

    Args:
        label: The label as read.
        image: Its image.
        tolerance: Largest allowed displacement of the label's grid corners from the placement, as a fraction of
            the smallest voxel size (as :func:`medseg.data.checks.geometry_mismatch`).

    Returns:
        The :class:`Placement` (the label with ``image``'s affine and header, its own source and voxel type), or
        ``None`` when the label's voxels are not voxels of the image's grid.
    """
    to_image = np.linalg.inv(image.affine) @ label.affine  # label voxel index -> image voxel index
    perm = np.rint(to_image[:3, :3])
    if not (np.abs(perm).sum(axis=0) == 1).all() or not (np.abs(perm).sum(axis=1) == 1).all():
        return None  # not a signed permutation: another spacing, or a rotation
    shift = np.rint(to_image[:3, 3])
    # Where the exact placement puts the label's corners, against where its affine puts them, in mm.
    corners = np.array(np.meshgrid(*[(0, s - 1) for s in label.shape], indexing="ij")).reshape(3, -1)
    placed = perm @ corners + shift[:, None]
    actual = to_image[:3, :3] @ corners + to_image[:3, 3:4]
    error_mm = np.linalg.norm(image.affine[:3, :3] @ (placed - actual), axis=0).max()
    if error_mm > tolerance * float(min(image.spacing.min(), label.spacing.min())):
        return None
    # Image axis a takes label axis src[a], reversed where the permutation's entry is -1.
    src = np.abs(perm).argmax(axis=1)
    signs = perm[np.arange(3), src]
    array = np.transpose(np.asarray(label.array), src)
    start = np.zeros(3, dtype=np.int64)
    for a in range(3):
        n = array.shape[a]
        if signs[a] < 0:
            array = np.flip(array, axis=a)
            start[a] = int(shift[a]) - (n - 1)  # the label's last voxel along it lands on the lowest index
        else:
            start[a] = int(shift[a])
    box = [[int(start[a]), int(start[a] + array.shape[a] - 1)] for a in range(3)]
    out = np.full(image.shape, fill, dtype=array.dtype)
    dst = tuple(slice(max(0, start[a]), min(image.shape[a], start[a] + array.shape[a])) for a in range(3))
    src_sl = tuple(slice(dst[a].start - start[a], dst[a].stop - start[a]) for a in range(3))
    inside = array[src_sl] if all(s.stop > s.start for s in dst) else array[0:0]
    outside = _labelled(array, fill) - _labelled(inside, fill)
    if inside.size:
        out[dst] = inside
    volume = Volume(array=out, affine=image.affine, source=label.source, header=image.header)
    return Placement(volume, box, whole=box == [[0, s - 1] for s in image.shape], outside=outside)


def _labelled(array: np.ndarray, fill: int) -> int:
    # Voxels holding a class other than background (and other than the unannotated value, where it is the fill).
    return int(np.count_nonzero((array != 0) & (array != fill))) if fill else int(np.count_nonzero(array))


def label_on_image_grid(
    label: Volume, image: Volume, tolerance: float, *, place_cut: bool, fill: int = 0
) -> Volume | None:
    """The label on its image's grid, or ``None`` when its voxels are not the image's (the caller refuses it).

    Args:
        label: The label as read (not on ``image``'s grid).
        image: Its image.
        tolerance: As :func:`place_on_grid`.
        place_cut: Place a label cut to its extent (``data.place_cut_labels``); another axis order is always placed.
        fill: As :func:`place_on_grid`.

    Raises:
        ValueError: A cut label without ``place_cut`` (the message says how to place it), or labelled voxels
            beyond the image.
    """
    placement = place_on_grid(label, image, tolerance, fill=fill)
    if placement is None:
        return None
    if not placement.whole and not place_cut:
        raise ValueError(
            f"label shape {label.shape} covers image voxels {placement.box} of the image's {image.shape}: saved cut "
            "to its extent? Set data.place_cut_labels: true to place such labels by their position (off by "
            "default: where headers carry no position, a truncated label or one of another case fits as well)"
        )
    problem = placement.problem(image.shape)
    if problem:
        raise ValueError(problem)
    return placement.volume
