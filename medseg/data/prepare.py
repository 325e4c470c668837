"""Reading, checking, normalising and slicing cases: every file is read exactly once per run.

:func:`prepare_training_data` is what training calls: it reads the training and validation cases once, fits the
normalisation on the training cases only (``ct``), resolves the slice axis from the training spacings and keeps
each case's slices in memory (or memory-mapped from ``cache_dir``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from medseg.config import PreprocessingConfig
from medseg.data.cases import BadCaseCollector, Case, SkippedCase
from medseg.data.checks import GEOMETRY_TOLERANCE, check_image_finite, check_pair, geometry_mismatch
from medseg.data.fingerprint import FingerprintAccumulator
from medseg.data.label_grid import label_on_image_grid
from medseg.data.label_reading import LabelReading
from medseg.data.modality import hounsfield_hint
from medseg.data.normalization import CTStatsAccumulator, NormalizationParams, normalize, resolve_scheme
from medseg.data.plan import Plan, make_plan
from medseg.data.resample import plan_grid, resample_image, resample_label
from medseg.data.slicing import channels_to_slices, context_indices, label_to_slices, slices_to_volume
from medseg.data.unannotated import foreground_mask, label_count, without_unannotated
from medseg.errors import BadCaseError, ConfigError, MedsegError, RunFailedError
from medseg.io.orientation import to_canonical
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.io.segmentation import LabelKind

log = logging.getLogger(__name__)


class Reader(Protocol):
    """Reads a scan (file or DICOM folder) into a :class:`Volume`; ``medseg.io.load_volume`` by default.

    ``channel`` is passed only for a 4D file that holds a case's channels (the MSD multi-modal layout), to read
    one of them; a 3D scan is read with the path alone. ``label=True`` is passed for a label map: a label file
    with several channels must be refused, not read through the configured ``data.channel``.
    """

    def __call__(self, path: Path, /, *, channel: int | None = ..., label: bool = ...) -> Volume: ...


def default_reader() -> Reader:
    """``medseg.io.load_volume`` (imported lazily: it pulls in SimpleITK/pydicom)."""
    from medseg.io import load_volume

    return load_volume


def label_dtype(n_classes: int) -> type[np.unsignedinteger]:
    """Smallest unsigned dtype holding labels ``0..n_classes-1`` (uint8 up to 256 classes)."""
    return np.uint8 if n_classes <= 256 else np.uint16


@dataclass(eq=False)
class PreparedCase:
    """A case read, checked, normalised and cut into slices.

    Attributes:
        id: Case id.
        image: Normalised slices ``(N, C, H, W)`` float32, one channel per input channel (modality), not padded.
            The 2.5D neighbours are not stored (that would triple the memory of every case): the network's
            input is gathered from these slices by :meth:`network_input`. A read-only memory map when a cache
            folder is used.
        label: Label slices ``(N, H, W)`` uint8, or ``None`` for an unlabelled case.
        axis: Slice axis of the volume.
        shape: Volume shape ``(I, J, K)``.
        spacing: Voxel size in mm along i, j, k (for spacing-aware metrics).
        affine: Voxel-to-RAS affine of the image (4x4), if known.
        case: The source case (files), if known.
        context: 2.5D context slices on each side that :meth:`network_input` adds.
        unannotated: The label index of unannotated voxels (``n_classes``) when the dataset marks some
            (``data.ignore_label``, ``medseg.data.unannotated``); ``None`` = every voxel is annotated.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    axis: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    case: Case | None = None
    context: int = 0
    unannotated: int | None = None

    @property
    def n_input_channels(self) -> int:
        """Input channels (modalities) ``C``."""
        return int(self.image.shape[1])

    @property
    def network_channels(self) -> int:
        """Channels of the network's input: ``C * (2 * context + 1)``."""
        return self.n_input_channels * (2 * self.context + 1)

    @property
    def n_slices(self) -> int:
        """Number of slices ``N``."""
        return int(self.image.shape[0])

    @property
    def volume(self) -> np.ndarray:
        """The normalised volume ``(I, J, K)`` float32 of the first channel (a view), e.g. for validation."""
        return slices_to_volume(self.image[:, 0], self.axis)

    def network_input(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The network's input for slices ``start .. stop - 1`` (default: all): ``(n, C * (2k+1), H, W)`` float32,
        a new array.

        Channel-major as :func:`medseg.data.slicing.channels_to_slices` cuts a volume: channel
        ``c * (2k+1) + j`` is input channel ``c`` of neighbour ``n - k + j`` (the edge slice replicated beyond
        the volume's ends).
        """
        indices = context_indices(self.n_slices, self.context)[start:stop]
        stack = self.image[indices]  # (n, 2k+1, C, H, W)
        n, width, c, h, w = stack.shape
        return np.ascontiguousarray(np.swapaxes(stack, 1, 2), dtype=np.float32).reshape(n, c * width, h, w)

    @property
    def label_volume(self) -> np.ndarray | None:
        """The label volume ``(I, J, K)`` (a view), or ``None``."""
        return slices_to_volume(self.label, self.axis) if self.label is not None else None

    @property
    def foreground(self) -> np.ndarray:
        """Per slice, whether it holds any label > 0 other than unannotated voxels (all False when unlabelled)."""
        if self.label is None:
            return np.zeros(self.n_slices, dtype=bool)
        if self.unannotated is None:
            return np.asarray(self.label.reshape(self.n_slices, -1).max(axis=1) > 0)
        return np.asarray(foreground_mask(self.label, self.unannotated).reshape(self.n_slices, -1).any(axis=1))

    @property
    def annotated(self) -> np.ndarray:
        """Per slice, whether it holds any annotated voxel (all True when every voxel is; all False unlabelled)."""
        if self.label is None:
            return np.zeros(self.n_slices, dtype=bool)
        if self.unannotated is None:
            return np.ones(self.n_slices, dtype=bool)
        return np.asarray(self.label.reshape(self.n_slices, -1).min(axis=1) != self.unannotated)


@dataclass
class PreparedData:
    """Everything training needs from the data stage.

    Attributes:
        train: Prepared training cases.
        val: Prepared validation cases.
        params: Normalisation fitted on the training cases (save ``params.to_dict()`` with the model).
        axis: Slice axis used.
        context: 2.5D context slices on each side.
        skipped: Cases left out with ``skip_bad_cases``.
        plan: The plan decided from the training cases' fingerprint (target spacing, patch, batch, ...).
    """

    train: list[PreparedCase]
    val: list[PreparedCase]
    params: NormalizationParams
    axis: int
    context: int
    skipped: list[SkippedCase] = field(default_factory=list)
    plan: Plan | None = None


@dataclass
class _Loaded:
    case: Case
    array: np.ndarray  # normalised float32, or raw float32 while a ct fit is pending
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray


class _Stash:
    """Keeps arrays in memory, or writes each to a private file in ``cache_dir`` and hands back a read-only map of it.

    Each file is unlinked as soon as it is mapped: the map stays valid (POSIX keeps an unlinked file while it is
    mapped), its disk space comes back when the array is dropped or the process ends, and no two processes or runs
    ever share a file, so torchrun's ranks may share one ``cache_dir``. Only a process killed between writing and
    mapping a file (a few milliseconds) can leave one behind: ``.medseg-*.npy``.
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunFailedError(f"Cannot create data.cache_dir '{self.cache_dir}': {err}") from err

    def keep(self, array: np.ndarray, name: str) -> np.ndarray:
        if self.cache_dir is None:
            return array
        safe = re.sub(r"[^\w.-]", "_", name)
        tmp: Path | None = None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".medseg-{safe}-", suffix=".npy", dir=self.cache_dir)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array)
            return np.load(tmp, mmap_mode="r")
        except OSError as err:  # a full or read-only disk: the run's failure, not the case's
            raise RunFailedError(
                f"Cannot write the prepared case '{name}' to data.cache_dir '{self.cache_dir}': {err}"
            ) from err
        finally:
            if tmp is not None:
                _unlink_quietly(tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # Windows refuses to remove a mapped file; it then stays until the folder is cleaned by hand
        log.debug("Could not remove the cache file %s while it is mapped", path)


def _read_image(case: Case, reader: Reader, channels: Sequence[str]) -> tuple[Volume, np.ndarray | None]:
    """The case's image (its first channel) and, with several channels, all of them ``(C, I, J, K)``."""
    if len(channels) <= 1 and not case.channel_files:
        return reader(case.image), None
    from medseg.io.channels import load_channels

    paths = list(case.channel_files) or [case.image]
    stack = load_channels(paths, channels, reader, case_id=case.id)
    return stack.reference, stack.stacked()


@dataclass(frozen=True)
class _CaseReader:
    """How a dataset's cases are read: the scan reader and what the dataset says about its files.

    Attributes:
        reader: Reads one scan file.
        n_classes: Number of classes incl. background (needed for labelled cases).
        channels: Input channel names (several: each case's channels are read, checked and stacked).
        classes: Class names: DICOM SEG / RTSTRUCT labels map their segments to them by name.
        labels: How label files are read (stored values, unlisted values, labels cut to their extent).
    """

    reader: Reader
    n_classes: int | None
    channels: Sequence[str] = ("image",)
    classes: Sequence[str] | None = None
    labels: LabelReading = field(default_factory=LabelReading)

    def read(self, case: Case) -> tuple[Volume, np.ndarray | None, np.ndarray | None]:
        """Reads image and label once, checks them, and brings both to closest-RAS voxel order.

        The reorientation (permutes/flips only, see ``medseg.io.orientation``) makes the slice axis mean the same
        anatomical direction for every case; the predictor applies the same one to each scan. Labels become class
        indices. Read errors become BadCaseErrors naming both files.
        """
        from medseg.io.segmentation import label_kind

        try:
            image, stacked = _read_image(case, self.reader, self.channels)
            kind = label_kind(case.label) if case.label is not None else "map"
            labels = self.labels.for_kind(kind)  # refuses a kind the dataset's labels cannot be: named with the case
            label = self._read_label(case.label, image, kind) if case.label is not None else None
        except BadCaseError:
            raise
        except MedsegError as err:
            raise BadCaseError(f"Case '{case.id}' (image '{case.image}', label '{case.label}'): {err}") from err
        if label is None:
            check_image_finite(case, image)
            canon, reorientation = to_canonical(image)
            return canon, None, reorientation.apply(stacked) if stacked is not None else None
        if self.n_classes is None:
            raise ValueError("n_classes is needed to check labelled cases")
        label = _on_image_grid(case, label, image, labels.place_cut, labels.ignore or 0)
        check_pair(case, image, label, self.n_classes, labels=labels)
        image, reorientation = to_canonical(image)
        multi = reorientation.apply(stacked) if stacked is not None else None
        n_labels = label_count(self.n_classes, labels.ignore)
        indices = labels.indices(label.array, self.n_classes, label_dtype(n_labels))
        return image, reorientation.apply(indices), multi

    def _read_label(self, path: Path, image: Volume, kind: LabelKind) -> Volume:
        """A label map goes through ``reader``; a label that names its segments (DICOM SEG / RTSTRUCT, structure
        folder, Slicer segmentation) is read with its segments matched to ``classes`` by name."""
        from medseg.io.segmentation import load_label

        if kind == "map":
            return self.reader(path, label=True)
        return load_label(
            path,
            image,
            self.classes,
            ignore_unlisted=self.labels.unlisted_background,
            aliases=self.labels.alias_map(),
            nested=self.labels.regions is not None,  # segments named after the regions: the innermost wins
        )


def _on_image_grid(case: Case, label: Volume, image: Volume, place_cut: bool, fill: int = 0) -> Volume:
    """The label on its image's grid when it was saved in another axis order or (``place_cut``) cut to its extent:
    exact, its voxels are the image's (those it does not cover get ``fill``). Otherwise as read, for
    :func:`check_pair` to refuse."""
    if geometry_mismatch(image, label) is None:
        return label
    try:
        placed = label_on_image_grid(label, image, GEOMETRY_TOLERANCE, place_cut=place_cut, fill=fill)
    except ValueError as err:
        raise BadCaseError(f"Case '{case.id}' (image '{case.image}', label '{case.label}'): {err}") from None
    if placed is None:
        return label
    log.debug(
        "Case '%s': label '%s' (shape %s) placed on the image's grid %s", case.id, case.label, label.shape, image.shape
    )
    return placed


def _load_all(
    cases: Sequence[Case],
    case_reader: _CaseReader,
    collector: BadCaseCollector,
    params: NormalizationParams | None,
    ct_acc: CTStatsAccumulator | None,
    stash: _Stash,
    fingerprint: FingerprintAccumulator | None = None,
) -> list[_Loaded]:
    loaded = []
    for case in cases:
        try:
            image, label, multi = case_reader.read(case)
        except BadCaseError as err:
            collector.report(case.id, err)
            continue
        raw = multi if multi is not None else image.array
        if fingerprint is not None:  # raw intensities, closest-RAS geometry: what the plan is decided from
            fingerprint.add(case.id, raw, label, image.spacing, image.voxel_volume)
        if ct_acc is not None:  # fitted on the annotated foreground: unannotated voxels are no class's
            fitted_on = without_unannotated(label, case_reader.n_classes or 2) if label is not None else None
            ct_acc.add(image.array, fitted_on, source=case.image)
        if params is not None and multi is not None:  # each channel normalised on its own
            array = np.stack([normalize(multi[c], params, source=case.image) for c in range(multi.shape[0])])
        elif params is not None:
            array = normalize(image.array, params, source=case.image)
        else:  # ct fit pending: float32 holds HU exactly and halves the memory of get_fdata's float64
            array = np.asarray(image.array, dtype=np.float32)
        loaded.append(
            _Loaded(
                case=case,
                array=stash.keep(array, f"{case.id}.volume"),
                label=stash.keep(label, f"{case.id}.label_volume") if label is not None else None,
                spacing=tuple(float(s) for s in image.spacing),  # type: ignore[arg-type]
                affine=image.affine,
            )
        )
        del image
    return loaded


def _slice_loaded(
    item: _Loaded,
    axis: int,
    context: int,
    params: NormalizationParams | None,
    stash: _Stash,
    target_spacing: Sequence[float] | None = None,
    n_classes: int = 2,
    unannotated: int | None = None,
) -> PreparedCase:
    array = normalize(item.array, params, source=item.case.image) if params is not None else item.array
    # In-plane resampling to the plan's target spacing (after normalisation, as the predictor does it).
    grid = plan_grid(array.shape[-3:], item.spacing, target_spacing, axis)
    spacing, affine = item.spacing, item.affine
    label_volume = item.label
    if not grid.is_identity:
        stacked = np.stack([resample_image(a, grid) for a in (array if array.ndim == 4 else array[None])])
        array = stacked if array.ndim == 4 else stacked[0]
        n_labels = label_count(n_classes, unannotated)
        label_volume = resample_label(label_volume, grid, n_labels) if label_volume is not None else None
        spacing, affine = grid.target_spacing(item.spacing), grid.target_affine(item.affine)
    image = stash.keep(channels_to_slices(array if array.ndim == 4 else array[None], axis), f"{item.case.id}.image")
    label = (
        stash.keep(label_to_slices(label_volume, axis), f"{item.case.id}.label") if label_volume is not None else None
    )
    return PreparedCase(
        id=item.case.id,
        image=image,
        label=label,
        axis=axis,
        shape=tuple(int(s) for s in array.shape[-3:]),  # type: ignore[arg-type]
        spacing=spacing,
        affine=affine,
        case=item.case,
        context=context,
        unannotated=unannotated if label is not None else None,
    )


def _slice_all(
    items: list[_Loaded],
    axis: int,
    context: int,
    params: NormalizationParams | None,
    stash: _Stash,
    target_spacing: Sequence[float] | None = None,
    n_classes: int = 2,
    unannotated: int | None = None,
) -> list[PreparedCase]:
    # Consumes ``items`` so each volume is freed once its slices exist (peak memory ~ data + one case).
    out = []
    for i in range(len(items)):
        out.append(_slice_loaded(items[i], axis, context, params, stash, target_spacing, n_classes, unannotated))
        # With a cache_dir, dropping the volume's map also frees its disk space (its file is already unlinked).
        items[i] = None  # type: ignore[call-overload]
    return out


def prepare_cases(
    cases: Sequence[Case],
    params: NormalizationParams,
    axis: int,
    context: int = 0,
    *,
    n_classes: int | None = None,
    reader: Reader | None = None,
    skip_bad_cases: bool = False,
    skipped: list[SkippedCase] | None = None,
    cache_dir: Path | None = None,
    target_spacing: Sequence[float] | None = None,
    channels: Sequence[str] = ("image",),
    classes: Sequence[str] | None = None,
    labels: LabelReading | None = None,
) -> list[PreparedCase]:
    """Reads (once), checks, normalises and slices cases with known parameters.

    Args:
        cases: Cases to prepare; labelled ones need ``n_classes``.
        params: Fitted normalisation (see :func:`prepare_training_data` to fit and prepare in one read).
        axis: Slice axis.
        context: 2.5D context slices on each side.
        n_classes: Number of classes incl. background, for the label checks.
        reader: Scan reader; ``medseg.io.load_volume`` by default.
        skip_bad_cases: Log and skip bad cases instead of raising.
        skipped: If given, skipped cases are appended to it.
        cache_dir: Keep slices as memory-mapped ``.npy`` files here instead of in memory.
        target_spacing: The plan's target spacing: in-plane axes are resampled to it (``None``: not at all).
        channels: Input channel names (several: each case's channels are read, checked and stacked).
        classes: Class names (background first): DICOM SEG / RTSTRUCT labels map their segments to them by name.
        labels: How label files are read (``LabelReading.of(cfg.data, spec.label_values, spec.ignore_label)``);
            ``None`` = class k stored as k, other values refused, labels on their image's grid.

    Returns:
        One :class:`PreparedCase` per usable case, in input order.

    Raises:
        BadCaseError: A case is unreadable or fails :func:`check_pair` (unless ``skip_bad_cases``).
    """
    collector = BadCaseCollector(skip_bad_cases, gather=True)
    stash = _Stash(cache_dir)
    case_reader = _CaseReader(reader or default_reader(), n_classes, channels, classes, labels or LabelReading())
    loaded = _load_all(cases, case_reader, collector, params, None, stash)
    collector.raise_gathered(len(cases))
    if skipped is not None:
        skipped.extend(collector.skipped)
    unannotated = (n_classes or 2) if case_reader.labels.ignore is not None else None
    return _slice_all(loaded, axis, context, None, stash, target_spacing, n_classes or 2, unannotated)


def prepare_training_data(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    n_classes: int,
    preprocessing: PreprocessingConfig,
    *,
    modality: Literal["mri", "ct"] = "mri",
    modality_reason: str = "",
    reader: Reader | None = None,
    skip_bad_cases: bool = False,
    cache_dir: Path | None = None,
    seed: int = 0,
    batch_size: str | int = "auto",
    classes: Sequence[str] | None = None,
    channels: Sequence[str] = ("image",),
    pad_multiple: int | None = None,
    labels: LabelReading | None = None,
) -> PreparedData:
    """Reads every case once, fits normalisation on the training cases, resolves the axis, slices.

    Args:
        train_cases: Training cases (labelled).
        val_cases: Validation cases (labelled or not).
        n_classes: Number of classes including background.
        preprocessing: ``normalization``, ``nonzero``, ``slice_axis``, ``context_slices``.
        modality: Resolves ``normalization: auto`` (``ct`` -> ct, else zscore): ``data.modality`` resolved by
            :func:`medseg.data.modality.dataset_modality`.
        modality_reason: Why that modality (its source), quoted in the plan's normalisation reason.
        reader: Scan reader; ``medseg.io.load_volume`` by default.
        skip_bad_cases: Log and skip bad cases instead of raising; they are listed in ``skipped``.
        cache_dir: Keep volumes and slices as memory-mapped ``.npy`` files here instead of in memory.
        seed: Seed of the ``ct`` voxel subsample.
        batch_size: ``training.batch_size`` (``auto`` or a number), decided in the plan.
        classes: Class names, background first (for the fingerprint, ``None`` = ``class0 .. classN``; DICOM SEG /
            RTSTRUCT labels map their segments to them by name).
        channels: Input channel names in input order; with several, each is normalised on its own.
        pad_multiple: Planned patches are multiples of this (``None`` = ``preprocessing.pad_multiple``; the
            trainer passes the network's, which a deeper network raises).
        labels: How label files are read (``LabelReading.of(cfg.data, spec.label_values, spec.ignore_label)``);
            ``None`` = class k stored as k, other values refused, labels on their image's grid.

    Returns:
        :class:`PreparedData` with the prepared cases, normalisation parameters, axis, plan and skipped cases.

    Raises:
        BadCaseError: A case fails its checks (unless ``skip_bad_cases``).
        ValueError: No usable training case.
    """
    reader = reader or default_reader()
    scheme = resolve_scheme(preprocessing.normalization, modality)
    collector = BadCaseCollector(skip_bad_cases, gather=True)  # every bad case named at once
    stash = _Stash(cache_dir)
    context = preprocessing.context_slices
    names = list(classes) if classes is not None else [f"class{i}" for i in range(n_classes)]
    regions = labels.regions if labels is not None else None
    membership = None if regions is None else regions.membership()
    fingerprint = FingerprintAccumulator(names, channels=tuple(channels), seed=seed, membership=membership)
    if scheme == "ct" and len(channels) > 1:
        raise ConfigError(
            f"preprocessing.normalization ct is fitted on one channel; the data has {len(channels)} "
            f"({', '.join(channels)}): use zscore or percentile"
        )

    case_reader = _CaseReader(reader, n_classes, channels, classes, labels or LabelReading())
    if scheme == "ct":
        acc = CTStatsAccumulator(seed=seed)
        train = _load_all(train_cases, case_reader, collector, None, acc, stash, fingerprint)
        collector.raise_gathered(len(train_cases))
        if not train:
            raise ValueError("No usable training case left to fit the normalisation on")
        params = acc.params()
        val = _load_all(val_cases, case_reader, collector, None, None, stash)
        collector.raise_gathered(len(train_cases) + len(val_cases))
        pending: NormalizationParams | None = params
    else:
        params = NormalizationParams(scheme=scheme, nonzero=preprocessing.nonzero)
        train = _load_all(train_cases, case_reader, collector, params, None, stash, fingerprint)
        val = _load_all(val_cases, case_reader, collector, params, None, stash)
        collector.raise_gathered(len(train_cases) + len(val_cases))
        pending = None
    if not train:
        raise ValueError("No usable training case (all were skipped)")

    # One plan for the whole dataset, from the training cases' fingerprint (after reading, before slicing).
    measured = fingerprint.result()
    reason = _normalization_reason(preprocessing.normalization, scheme, modality_reason)
    auto_not_ct = preprocessing.normalization == "auto" and scheme != "ct" and len(channels) == 1
    hint = hounsfield_hint(measured.scan_minima().tolist()) if auto_not_ct else None
    if hint:
        log.warning("Normalisation: %s", hint)
        reason = f"{reason}; {hint}"
    plan = make_plan(
        measured,
        slice_axis=preprocessing.slice_axis,
        target_spacing=preprocessing.target_spacing,
        patch_size=preprocessing.patch_size,
        batch_size=batch_size,
        pad_multiple=pad_multiple or preprocessing.pad_multiple,
        channels=list(channels),
        normalization=[params.to_dict() for _ in channels],
        normalization_reason=reason,
    )
    axis = plan.slice_axis
    median_spacing = np.median(np.array([item.spacing for item in train]), axis=0)
    log.info(
        "Data: %d training, %d validation cases; normalisation %s; slice axis %d (median spacing %s)",
        len(train),
        len(val),
        params,
        axis,
        np.round(median_spacing, 3).tolist(),
    )
    for line in plan.summary_lines():
        log.info("%s", line)
    unannotated = n_classes if case_reader.labels.ignore is not None else None
    return PreparedData(
        train=_slice_all(train, axis, context, pending, stash, plan.target_spacing, n_classes, unannotated),
        val=_slice_all(val, axis, context, pending, stash, plan.target_spacing, n_classes, unannotated),
        params=params,
        axis=axis,
        context=context,
        skipped=collector.skipped,
        plan=plan,
    )


def _normalization_reason(setting: str, scheme: str, modality_reason: str) -> str:
    if setting != "auto":
        return "set in the config (preprocessing.normalization)"
    why = f" ({modality_reason})" if modality_reason else ""
    if scheme == "ct":
        return f"CT{why}: dataset-wide clip to the 0.5/99.5 foreground percentiles, then z-score (nnU-Net)"
    return f"not CT{why}: per-volume z-score (intensities are not calibrated)"
