"""Multi-channel scans: several files (or one 4D file) of one case read as channels on one grid.

Three ways a case's channels are stored:

- one file per channel (nnU-Net ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``; or a case folder with one file
  per modality, matched by ``data.channel_patterns``);
- one 4D NIfTI whose 4th axis holds the channels (MSD multi-modal tasks).

Every channel must lie on the first channel's grid (same shape, grid corners within 1 % of a voxel); otherwise a
:class:`ChannelMismatchError` names the channel, its file and by how much it differs. The channels are returned
in the configured order, which is the model's input order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import BadCaseError, GeometryMismatchError, UnreadableScanError
from medseg.io._arrays import channel_count
from medseg.volume import Volume

#: Allowed displacement of the grid corners between channels, as a fraction of the smallest voxel size.
CHANNEL_TOLERANCE = 0.01


class ChannelMismatchError(GeometryMismatchError):
    """A channel of a case does not lie on the grid of its first channel."""


class MissingChannelError(BadCaseError):
    """A case lacks one of the configured channels (or has several files matching one)."""


@dataclass(frozen=True, eq=False)
class ChannelStack:
    """The channels of one case on one grid.

    Attributes:
        volumes: One :class:`Volume` per channel, in input order, all on ``volumes[0]``'s grid.
        names: Channel names in the same order.
    """

    volumes: tuple[Volume, ...]
    names: tuple[str, ...]

    @property
    def reference(self) -> Volume:
        """The first channel: its grid (affine, header, source) is the case's grid; masks are written on it."""
        return self.volumes[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape ``(I, J, K)``."""
        return self.reference.shape

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm."""
        return self.reference.spacing

    @property
    def source(self) -> Path | None:
        """The first channel's file."""
        return self.reference.source

    def stacked(self) -> np.ndarray:
        """``(C, I, J, K)`` stacked voxel values (a new array; a method, unlike ``Volume.array``, since it copies)."""
        return np.stack([np.asarray(v.array) for v in self.volumes])


def grid_difference(reference: Volume, other: Volume) -> str | None:
    """How ``other``'s grid differs from ``reference``'s (shape, or corner displacement in mm), or ``None``."""
    if reference.shape != other.shape:
        return f"shape {other.shape} differs from {reference.shape}"
    corners = np.array(np.meshgrid(*[(0, s - 1) for s in reference.shape], indexing="ij")).reshape(3, -1).T
    a = corners @ reference.affine[:3, :3].T + reference.affine[:3, 3]
    b = corners @ other.affine[:3, :3].T + other.affine[:3, 3]
    shift = float(np.linalg.norm(a - b, axis=1).max())
    allowed = CHANNEL_TOLERANCE * float(min(reference.spacing.min(), other.spacing.min()))
    if shift > allowed:
        return (
            f"grid corners are up to {shift:.4g} mm from the first channel's (allowed {allowed:.3g} mm): spacing "
            f"{np.round(other.spacing, 4).tolist()} vs {np.round(reference.spacing, 4).tolist()}, origin "
            f"{np.round(other.origin, 3).tolist()} vs {np.round(reference.origin, 3).tolist()}"
        )
    return None


def n_channels_in_file(path: Path) -> int:
    """Channels of a NIfTI file, as the reader reads them (:func:`medseg.io._arrays.channel_count`: its 4th axis,
    or the 5th after a singleton 4th); 1 for 3D files and non-NIfTI scans."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return 1
    try:
        shape = nib.load(str(path)).shape  # type: ignore[attr-defined]
    except Exception as exc:  # nibabel raises many types for bad headers
        raise UnreadableScanError(path, f"not a valid NIfTI file ({type(exc).__name__})") from exc
    return channel_count(tuple(shape))


def load_channels(
    paths: Sequence[Path],
    names: Sequence[str],
    reader: Callable[..., Volume] | None = None,
    *,
    case_id: str | None = None,
) -> ChannelStack:
    """Reads a case's channels: one file per channel, or one 4D file holding them all.

    Args:
        paths: One path per channel, or a single 4D NIfTI when ``len(names) > 1``.
        names: Channel names, in input order.
        reader: Reads one scan (``medseg.io.load_volume`` by default; it takes ``channel=`` for 4D files).
        case_id: Named in errors.

    Returns:
        The :class:`ChannelStack`.

    Raises:
        ChannelMismatchError: A channel is not on the first channel's grid (names the channel, file, difference).
        MissingChannelError: A 4D file has fewer channels than ``names``.
        UnreadableScanError: A file cannot be read.
    """
    if reader is None:
        from medseg.io.reading import load_volume

        reader = load_volume
    where = f"Case '{case_id}': " if case_id else ""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and len(names) > 1:
        found = n_channels_in_file(paths[0])
        if found != len(names):
            raise MissingChannelError(
                f"{where}'{paths[0]}' holds {found} channel(s) on its 4th axis, but {len(names)} are expected "
                f"({', '.join(names)})"
            )
        volumes = [reader(paths[0], channel=c) for c in range(len(names))]
    else:
        if len(paths) != len(names):
            raise MissingChannelError(
                f"{where}{len(paths)} channel file(s) for {len(names)} channels ({', '.join(names)})"
            )
        volumes = [reader(p) for p in paths]
    channel_paths = paths if len(paths) == len(names) else paths * len(names)
    for name, path, vol in zip(names[1:], channel_paths[1:], volumes[1:], strict=True):
        diff = grid_difference(volumes[0], vol)
        if diff is not None:
            raise ChannelMismatchError(
                f"{where}channel '{name}' ('{vol.source or path}') is not on the grid of channel '{names[0]}' "
                f"('{volumes[0].source or paths[0]}'): {diff}"
            )
    return ChannelStack(volumes=tuple(volumes), names=tuple(str(n) for n in names))


def match_channel_files(
    folder: Path, patterns: Sequence[str], *, case_id: str | None = None, exclude: Sequence[str] = ()
) -> list[Path]:
    """The file matching each pattern in a case folder (fnmatch, case-insensitive), in pattern order.

    Args:
        folder: The case folder (not searched recursively).
        patterns: One pattern per channel, e.g. ``["*flair*", "*t1c*"]``.
        case_id: Named in errors (default: the folder's name).
        exclude: Patterns of files that are never channels (e.g. the label pattern).

    Raises:
        MissingChannelError: No file, or several files, match a pattern (names the folder and pattern).
    """
    cid = case_id or folder.name
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if not any(fnmatch.fnmatch(p.name.lower(), e.lower()) for e in exclude)]
    out = []
    for pattern in patterns:
        hits = [p for p in files if fnmatch.fnmatch(p.name.lower(), pattern.lower())]
        if len(hits) != 1:
            what = "no file matches" if not hits else f"{len(hits)} files match ({', '.join(h.name for h in hits)})"
            raise MissingChannelError(f"Case '{cid}' in '{folder}': {what} the channel pattern '{pattern}'")
        out.append(hits[0])
    return out
