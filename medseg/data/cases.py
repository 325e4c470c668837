"""Case discovery: which image goes with which label, for the three dataset layouts medseg understands.

- ``msd``: a Medical Segmentation Decathlon / nnU-Net folder with ``dataset.json`` (MSD's ``training`` list and
  ``labels`` index->name dict, or nnU-Net v2's name->index ``labels`` with ``imagesTr/<case>_0000<ending>``).
- ``glob``: ``data.image_glob`` + ``data.label_glob`` under ``data.root``, paired by the ``case`` group of
  ``data.case_pattern`` matched against the file names (by default the package's case id,
  :func:`medseg.io.scans.case_id_from_path`: the name without its scan ending and nnU-Net's ``_0000``).
- ``dicom``: one folder per case holding an image series folder and a mask (series folder or NIfTI/NRRD/MHA
  file, or a DICOM SEG / RTSTRUCT file or a folder holding just one), told apart by
  ``data.dicom_image_pattern`` / ``data.dicom_mask_pattern``.

Problems with a single case (missing label, missing image) are :class:`BadCaseError`s naming the files; with
``data.skip_bad_cases`` they are logged and listed in :attr:`DatasetSpec.skipped` instead. Problems with the
dataset as a whole (no root, unreadable ``dataset.json``, no classes) are :class:`ConfigError`s.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.config import DataConfig
from medseg.data.label_values import MAX_LABEL_VALUE, is_identity, label_values_problem
from medseg.data.layout_hint import layout_hint
from medseg.data.modality import RecordedModality, from_channel_names
from medseg.data.name_patterns import compile_named, shared_label_suffix, suffix_case_pattern
from medseg.data.regions import Regions, regions_from_labels
from medseg.errors import BadCaseError, ConfigError
from medseg.io.scans import (
    CHANNEL_SUFFIX,
    case_id_from_path,
    holds_dicom_scan,
    is_hidden,
    is_supported_file,
    nnunet_channel_files,
    strip_scan_ending,
)
from medseg.io.segmentation import label_names
from medseg.io.structure_masks import structure_files

log = logging.getLogger(__name__)

#: The name nnU-Net v2's ``dataset.json`` gives the label of unannotated voxels (``medseg.data.unannotated``).
IGNORE_NAME = "ignore"


@dataclass(frozen=True)
class Case:
    """One training or prediction case.

    Attributes:
        id: Unique name, used for output file names and to pair predictions with ground truth.
        image: Image file or DICOM series folder.
        label: Label file or DICOM mask series folder; ``None`` for unlabelled cases.
        channel_files: With several input channels stored one file per channel: those files in input order
            (``image`` is the first). Empty for single-channel cases and for 4D files holding all channels.
    """

    id: str
    image: Path
    label: Path | None
    channel_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SkippedCase:
    """A case left out because it failed a check (``data.skip_bad_cases``); listed in the run's output."""

    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-able form for run reports."""
        return {"id": self.id, "reason": self.reason}


@dataclass
class DatasetSpec:
    """The result of discovery.

    Attributes:
        cases: Usable cases, sorted by id.
        classes: Class names, background at index 0.
        skipped: Cases left out with ``skip_bad_cases`` (empty otherwise).
        channels: Input channel names in input order (``["image"]`` for single-channel data).
        recorded_modality: What ``dataset.json``'s channel names record about the modality, for
            ``data.modality: auto``; ``None`` for other layouts (DICOM tags are read by
            :func:`medseg.data.modality.dataset_modality`, only when a run needs them).
        layout: The layout the cases were found in (``auto`` resolved).
        label_values: The value each class is stored as in the label files (``data.label_values`` or
            ``dataset.json``); ``None`` when class k is stored as k.
        ignore_label: The value label files store for unannotated voxels (``data.ignore_label``, or the
            ``ignore`` label of ``dataset.json``); ``None`` = every voxel is annotated.
        regions: Overlapping regions trained instead of classes (``data.regions`` or ``dataset.json``;
            ``medseg.data.regions``): ``classes`` are then background and the regions, ``label_values`` their
            painted values. ``None`` = plain classes.
    """

    cases: list[Case]
    classes: list[str]
    skipped: list[SkippedCase] = field(default_factory=list)
    channels: list[str] = field(default_factory=lambda: ["image"])
    recorded_modality: RecordedModality | None = None
    layout: str = "msd"
    label_values: list[int] | None = None
    ignore_label: int | None = None
    regions: Regions | None = None


#: Bad cases an error message lists in full before it says how many more there are.
LISTED_BAD_CASES = 10


class BadCaseCollector:
    """Raises or records bad cases depending on ``skip_bad_cases``; shared by discovery and preparation.

    Args:
        skip_bad_cases: Record each bad case as skipped (with a warning) and go on.
        gather: Without ``skip_bad_cases``, go on reading and raise once for all bad cases
            (:meth:`raise_gathered`) instead of at the first: reading a dataset then names every file to fix.
    """

    def __init__(self, skip_bad_cases: bool, *, gather: bool = False) -> None:
        self.skip_bad_cases = skip_bad_cases
        self.gather = gather
        self.skipped: list[SkippedCase] = []
        self.gathered: list[BadCaseError] = []

    def report(self, case_id: str, error: BadCaseError) -> None:
        """Re-raises ``error`` (gathers it, with ``gather``), or logs it as a warning and records the case as
        skipped."""
        if not self.skip_bad_cases:
            if not self.gather:
                raise error
            self.gathered.append(error)
            return
        log.warning("Skipping case '%s': %s", case_id, error)
        self.skipped.append(SkippedCase(case_id, str(error)))

    def raise_gathered(self, n_cases: int) -> None:
        """Raises one :class:`BadCaseError` naming every gathered bad case, or returns when there is none.

        Args:
            n_cases: How many cases were read (for "2 of 16 cases").
        """
        if not self.gathered:
            return
        hint = "set data.skip_bad_cases: true to go on without them (plan.json then lists them with the reason)"
        if len(self.gathered) == 1:
            raise BadCaseError(
                f"{str(self.gathered[0]).rstrip('.')}. To go on without it, set data.skip_bad_cases: true (plan.json "
                "then lists it with the reason)"
            ) from self.gathered[0]
        shown = "\n".join(f"  - {err}" for err in self.gathered[:LISTED_BAD_CASES])
        more = len(self.gathered) - LISTED_BAD_CASES
        raise BadCaseError(
            f"{len(self.gathered)} of {n_cases} cases fail their checks; {hint}:\n{shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


def discover_cases(cfg: DataConfig, *, require_labels: bool = True) -> DatasetSpec:
    """Finds the cases of a dataset and its class names.

    Args:
        cfg: The ``data`` section (``root``, ``layout``, globs/patterns, ``classes``, ``skip_bad_cases``,
            ``max_cases``).
        require_labels: Training needs a label for every case (a missing one is a bad case); with False,
            cases without a label get ``label=None``.

    Returns:
        A :class:`DatasetSpec` with cases sorted by id (the first ``max_cases`` if set).

    Raises:
        ConfigError: No or missing root, unreadable ``dataset.json``, no classes, no cases, duplicate ids.
        BadCaseError: A case's image or label file is missing (unless ``skip_bad_cases``).
    """
    if cfg.root is None:
        raise ConfigError("data.root is not set: point it at the dataset folder")
    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigError(f"data.root '{root}' is not a folder")
    layout = cfg.layout
    if layout == "auto":
        layout = "msd" if (root / "dataset.json").is_file() else "glob"
    collector = BadCaseCollector(cfg.skip_bad_cases)
    channels = ["image"]

    recorded: RecordedModality | None = None
    declared: list[int] | None = None  # label values dataset.json declares
    declared_ignore: int | None = None
    regions: Regions | None = None
    if layout == "msd":
        cases, classes, declared, regions = _discover_msd(root, collector, require_labels, cfg)
        ds = read_dataset_json(root)
        declared_ignore = ignore_from_labels(ds.get("labels"))
        channels = msd_channel_names(ds)
        recorded = from_channel_names(_raw_channel_names(ds))
    elif layout == "folders":
        from medseg.data.folders import channel_names, discover_folders

        cases, classes = discover_folders(root, cfg, collector, require_labels), None
        channels = channel_names(cfg)
    elif layout == "glob":
        cases, classes = _discover_glob(root, cfg, collector, require_labels), None
    else:
        cases, classes = _discover_dicom(root, cfg, collector, require_labels), None

    if not cases and not collector.skipped and layout != "msd":  # nothing matched: say what the folder holds
        raise ConfigError(f"No cases found under data.root '{root}' with layout '{layout}': {layout_hint(root)}")
    if cfg.regions is not None:  # the config wins, as data.classes does over dataset.json
        regions = Regions.of(cfg.regions, cfg.regions_class_order or [])
    if regions is not None:
        if cfg.label_values is not None:
            raise ConfigError(
                f"'{root / 'dataset.json'}' declares regions {list(regions.names)}, written with its "
                "regions_class_order: data.label_values cannot go with them; leave it unset, or set data.classes too "
                "to train plain classes from these files"
            )
        classes, declared = regions.classes, regions.label_values
        if cfg.classes is not None:  # the regions' names again (_own_labels): the regions are kept
            cfg = cfg.model_copy(update={"classes": None})
    if cfg.classes is not None:
        classes = list(cfg.classes)
    if not classes:
        classes = classes_from_label_names(cases)
    if not classes:
        raise ConfigError(
            f"data.classes is required for layout '{layout}' (class names with background first, "
            "e.g. [background, tumour])"
        )
    if len(classes) < 2:
        raise ConfigError(f"data.classes needs background and at least one class, got {classes}")
    label_values = _label_values(cfg, declared, classes, root)
    ignore_label = _ignore_label(cfg, declared_ignore, label_values, classes, root)
    if regions is not None and ignore_label is not None:
        source = (
            "data.ignore_label" if cfg.ignore_label is not None else f"the ignore label of '{root / 'dataset.json'}'"
        )
        raise ConfigError(f"{source} ({ignore_label}) together with overlapping regions is not supported")
    if not cases:
        raise ConfigError(f"No usable cases found under data.root '{root}' (layout '{layout}')")

    _reject_duplicates(cases)
    cases.sort(key=lambda c: c.id)
    if cfg.max_cases is not None:
        cases = cases[: cfg.max_cases]
    return DatasetSpec(
        cases=cases,
        classes=classes,
        skipped=collector.skipped,
        channels=channels,
        recorded_modality=recorded,
        layout=layout,
        label_values=label_values,
        ignore_label=ignore_label,
        regions=regions,
    )


def classes_from_label_names(cases: list[Case]) -> list[str] | None:
    """The classes a dataset's labels name, for a run without ``data.classes``: background, then the structures
    in name order, exactly as the labels name them (:func:`medseg.io.segmentation.label_names`: structure folders'
    file names, 3D Slicer segment names, DICOM SEG segment labels, RTSTRUCT ROI names; sorted, as Slicer and most
    planning systems number them in drawing order). ``None`` when some labelled case is a label map.

    Raises:
        ConfigError: Two cases' labels name different structures (the first such case and the difference).
    """
    names: dict[str, list[str]] = {}
    for case in cases:
        if case.label is None:
            continue
        own = label_names(case.label)
        if own is None:
            return None
        unique: dict[str, str] = {}
        for name in own:  # two ROIs of one name (any case) are one structure, spelt as first given
            unique.setdefault(name.casefold(), name)
        names[case.id] = sorted(unique.values())
    if not names:
        return None
    first_id, first = next(iter(names.items()))
    reference = {n.casefold(): n for n in first}
    for case_id, own in names.items():
        mine = {n.casefold(): n for n in own}
        if mine.keys() != reference.keys():
            lacks = [reference[k] for k in sorted(reference.keys() - mine.keys())]
            adds = [mine[k] for k in sorted(mine.keys() - reference.keys())]
            diff = "; ".join(
                part
                for part in (f"lacks {', '.join(lacks)}" if lacks else "", f"adds {', '.join(adds)}" if adds else "")
                if part
            )
            raise ConfigError(
                f"data.classes is not set and the labels name different structures: case '{case_id}' "
                f"{diff} against case '{first_id}'. {_name_census(names)}. List the classes to train in "
                "data.classes (background first); data.class_aliases gives a class the other names it goes by; "
                "data.unlisted_labels: background leaves the other structures out"
            )
    log.info(
        "Classes from the labels' structure names (data.classes not set): background + %d structures in name order "
        "(%s); data.classes and data.unlisted_labels: background train fewer",
        len(first),
        ", ".join(first[:12]) + (f", ... {len(first) - 12} more" if len(first) > 12 else ""),
    )
    return ["background", *first]


def _name_census(names: dict[str, list[str]], shown: int = 20) -> str:
    """Which structure names the labels give, and in how many cases: what ``data.classes`` and
    ``data.class_aliases`` are written from (case-insensitive; each spelt as first met)."""
    spelling: dict[str, str] = {}
    counts: dict[str, int] = {}
    for own in names.values():
        for name in own:
            key = name.casefold()
            spelling.setdefault(key, name)
            counts[key] = counts.get(key, 0) + 1
    every = sorted(spelling[k] for k, n in counts.items() if n == len(names))
    some = sorted((k for k, n in counts.items() if n < len(names)), key=lambda k: (-counts[k], k))
    listed = [f"{spelling[k]} ({counts[k]})" for k in some[:shown]]
    if len(some) > shown:
        listed.append(f"... {len(some) - shown} more")
    return (
        f"Of the {len(names)} labelled cases, all name {', '.join(every) if every else 'no structure'}; "
        f"some name {', '.join(listed)} (cases naming each)"
    )


def _label_values(cfg: DataConfig, declared: list[int] | None, classes: list[str], root: Path) -> list[int] | None:
    """``data.label_values``, else what ``dataset.json`` declares; ``None`` when class k is stored as k."""
    values = cfg.label_values if cfg.label_values is not None else declared
    if cfg.label_values is not None and declared is not None and cfg.label_values != declared:
        # The config wins: it is how a user corrects a dataset.json without editing the dataset.
        log.warning(
            "data.label_values %s replaces the label values %s that '%s' declares",
            cfg.label_values,
            declared,
            root / "dataset.json",
        )
    if values is None:
        return None
    problem = label_values_problem(values, len(classes))
    if problem:
        raise ConfigError(f"data.label_values for classes {classes}: {problem}")
    return None if is_identity(values) else list(values)


def _ignore_label(
    cfg: DataConfig, declared: int | None, values: list[int] | None, classes: list[str], root: Path
) -> int | None:
    """``data.ignore_label``, else the ``ignore`` label ``dataset.json`` declares; refused where it is a class's
    stored value."""
    ignore = cfg.ignore_label if cfg.ignore_label is not None else declared
    if cfg.ignore_label is not None and declared is not None and cfg.ignore_label != declared:
        source = root / "dataset.json"
        log.warning("data.ignore_label %d replaces the ignore label %d of '%s'", ignore, declared, source)
    if ignore is not None and not 0 <= ignore <= MAX_LABEL_VALUE:
        raise ConfigError(f"'{root / 'dataset.json'}': the ignore label {ignore} is outside 0..{MAX_LABEL_VALUE}")
    stored = values if values is not None else list(range(len(classes)))
    if ignore is not None and ignore in stored:
        raise ConfigError(
            f"data.ignore_label {ignore} is the stored value of class '{classes[stored.index(ignore)]}' "
            f"(classes {classes} stored as {stored}): unannotated voxels need a value of their own"
        )
    return ignore


def _reject_duplicates(cases: list[Case]) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.id in seen:
            raise ConfigError(
                f"Two cases share the id '{case.id}': '{seen[case.id].image}' and '{case.image}' "
                "(check the file names or data.case_pattern; several channels per case need layout msd with "
                "nnU-Net naming or layout folders)"
            )
        seen[case.id] = case


# ---------------------------------------------------------------- msd / nnU-Net


def read_dataset_json(root: Path) -> dict[str, Any]:
    """Parses ``root/dataset.json``.

    Raises:
        ConfigError: If it is missing or not a JSON object.
    """
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"'{path}' does not exist (data.layout msd needs it); {layout_hint(root)}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a JSON object, got {type(data).__name__}")
    return data


def classes_from_labels(labels: Any, source: Path) -> tuple[list[str], list[int] | None]:
    """Class names and their stored values from a ``dataset.json`` ``labels`` entry (MSD or nnU-Net v2 style).

    Classes are ordered by stored value, background (value 0) first. Values with gaps (BraTS's 0, 1, 2, 4; a
    binary mask stored as 0/255) are read as declared: class k is whatever is stored as the k-th smallest value.
    nnU-Net v2's ``ignore`` label marks unannotated voxels, not a class: it is left out here and read by
    :func:`ignore_from_labels`.

    Returns:
        ``(classes, label_values)``; ``label_values`` is ``None`` when class k is stored as k.

    Raises:
        ConfigError: No background (value 0), values that are not integers in 0..65535, or two names for one
            value. (nnU-Net region labels, lists of values, are read by :func:`medseg.data.regions.regions_from_labels`
            first.)
    """
    if not isinstance(labels, dict) or not labels:
        raise ConfigError(f"'{source}': 'labels' must be a non-empty mapping, got {labels!r}")
    by_value: dict[int, str] = {}
    if all(isinstance(k, str) and k.strip().isdigit() for k in labels):  # MSD: {"0": "background", ...}
        by_value = {int(k): str(v) for k, v in labels.items()}
    else:  # nnU-Net v2: {"background": 0, ...}
        for name, value in labels.items():
            if isinstance(value, str) and value.strip().isdigit():
                raise ConfigError(
                    f"'{source}': label '{name}' maps to the string {value!r}; write the value as a JSON number "
                    f"({value.strip()})"
                )
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"'{source}': label '{name}' maps to {value!r}; labels must be integers")
            if value in by_value:
                raise ConfigError(f"'{source}': labels '{by_value[value]}' and '{name}' share the value {value}")
            by_value[value] = str(name)
    by_value = {v: name for v, name in by_value.items() if name != IGNORE_NAME}
    values = sorted(by_value)
    if not values or values[0] != 0:
        raise ConfigError(f"'{source}': labels must declare the background as value 0, got values {values}")
    problem = label_values_problem(values)
    if problem:
        raise ConfigError(f"'{source}': {problem}")
    return [by_value[v] for v in values], None if is_identity(values) else values


def ignore_from_labels(labels: Any) -> int | None:
    """The value a ``dataset.json`` ``labels`` entry declares for unannotated voxels (nnU-Net v2's ``ignore``
    label: ``{"background": 0, "tumour": 1, "ignore": 2}``), or ``None``. Call after :func:`classes_from_labels`,
    which checks the entry."""
    if not isinstance(labels, dict):
        return None
    for key, value in labels.items():
        if key == IGNORE_NAME and isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2
            return value
        if value == IGNORE_NAME and isinstance(key, str) and key.strip().isdigit():  # MSD style {"3": "ignore"}
            return int(key)
        name = key if isinstance(value, int) else value
        if isinstance(name, str) and name.strip().casefold() == IGNORE_NAME and name != IGNORE_NAME:
            log.warning(
                "dataset.json label '%s' is trained as a class: only 'ignore' (lower case, as nnU-Net spells it) "
                "marks unannotated voxels",
                name,
            )
    return None


def _raw_channel_names(ds: dict[str, Any]) -> list[str]:
    """The names under ``channel_names`` (nnU-Net v2) or ``modality`` (MSD), in index order; ``[]`` if none."""
    channels = ds.get("channel_names", ds.get("modality"))
    if not isinstance(channels, dict):
        return []
    try:
        return [str(channels[k]) for k in sorted(channels, key=lambda k: int(k))]
    except ValueError:
        return [str(v) for v in channels.values()]


def msd_channel_names(ds: dict[str, Any]) -> list[str]:
    """Channel names of an MSD / nnU-Net ``dataset.json`` (``channel_names`` or ``modality``), in index order;
    ``["image"]`` for a single channel."""
    names = _raw_channel_names(ds)
    return names if len(names) > 1 else ["image"]


def _discover_msd(
    root: Path, collector: BadCaseCollector, require_labels: bool, cfg: DataConfig | None = None
) -> tuple[list[Case], list[str] | None, list[int] | None, Regions | None]:
    ds = read_dataset_json(root)
    source = root / "dataset.json"
    labels = ds.get("labels")
    as_dict: dict[str, Any] = labels if isinstance(labels, dict) else {}
    declares_regions = any(isinstance(v, list) for v in as_dict.values())
    region_names = [str(n) for n, v in as_dict.items() if v not in (0, [0])]  # all but background
    own = _own_labels(cfg, region_names) if cfg is not None and declares_regions else None
    regions: Regions | None = None
    classes: list[str] | None
    values: list[int] | None
    if declares_regions and own is not None:
        log.warning(
            "%s replaces the regions %s that '%s' declares%s",
            own,
            region_names,
            source,
            "" if own == "data.regions" else ": plain classes are trained (to keep the regions, leave it unset)",
        )
        classes, values = None, None
    elif declares_regions:
        try:
            regions = regions_from_labels(labels, ds.get("regions_class_order"), str(source))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        assert regions is not None  # labels with lists of values are regions
        classes, values = regions.classes, regions.label_values
    else:
        classes, values = classes_from_labels(labels, source)
    n_channels = len(msd_channel_names(ds))

    pairs: list[tuple[str, Path, Path | None]] = []
    training = ds.get("training")
    if isinstance(training, list) and training:
        for i, entry in enumerate(training):
            if not isinstance(entry, dict) or "image" not in entry:
                raise ConfigError(f"'{source}': training[{i}] must be an object with 'image' and 'label'")
            image = _resolve_msd_image(root / entry["image"])
            label = root / entry["label"] if entry.get("label") else root / "labelsTr" / image.name
            # nnU-Net v1 naming (<case>_0000 ...) holds one file per channel; MSD's own files are 4D.
            pairs.append((case_id_from_path(image), image, label))
    else:  # nnU-Net v2: no training list, files found by name
        ending = str(ds.get("file_ending", ".nii.gz"))
        for image in sorted((root / "imagesTr").glob(f"*{CHANNEL_SUFFIX}{ending}")):
            if is_hidden(image.name):  # macOS '._<name>' resource forks ride along in many archives
                continue
            case_id = image.name[: -len(f"{CHANNEL_SUFFIX}{ending}")]
            pairs.append((case_id, image, root / "labelsTr" / f"{case_id}{ending}"))
    if not pairs:
        raise ConfigError(f"'{source}' lists no training cases and '{root / 'imagesTr'}' has no '*_0000' images")
    cases = _pairs_to_cases(pairs, collector, require_labels)
    if n_channels > 1:
        cases = _with_channel_files(cases, n_channels, collector)
    return cases, classes, values, regions


def _own_labels(cfg: DataConfig, names: list[str]) -> str | None:
    """The config key that replaces the regions ``dataset.json`` declares (named ``names``), or ``None``: the config
    is how a user corrects a set's regions (``data.regions``) or trains plain classes from its files
    (``data.classes``). ``data.classes`` that only repeat the regions' names (background first) keep them."""
    if cfg.regions is not None:
        return "data.regions"
    if cfg.classes is not None and [c.casefold() for c in cfg.classes[1:]] != [n.casefold() for n in names]:
        return "data.classes"
    return None


def _with_channel_files(cases: list[Case], n_channels: int, collector: BadCaseCollector) -> list[Case]:
    # nnU-Net naming: <case>_0000<ending> is channel 0, <case>_0001<ending> channel 1, ...; a file without the
    # _0000 suffix is an MSD 4D file holding every channel on its 4th axis (read as such, checked when read).
    out = []
    for case in cases:
        channel_files = nnunet_channel_files(case.image, n_channels)
        if channel_files is None:
            out.append(case)
            continue
        files = tuple(channel_files)
        missing = [f for f in files if not f.exists()]
        if missing:
            from medseg.io.channels import MissingChannelError

            collector.report(
                case.id,
                MissingChannelError(
                    f"Case '{case.id}': channel file(s) {', '.join(repr(str(m)) for m in missing)} do not exist "
                    f"(dataset.json lists {n_channels} channels)"
                ),
            )
            continue
        out.append(Case(case.id, case.image, case.label, files))
    return out


def _resolve_msd_image(path: Path) -> Path:
    # nnU-Net v1 converted data keeps MSD's training list but names the files <case>_0000<ending>.
    if path.exists():
        return path
    stem = strip_scan_ending(path.name)
    candidate = path.with_name(f"{stem}{CHANNEL_SUFFIX}{path.name[len(stem) :]}")
    return candidate if candidate.exists() else path


def _pairs_to_cases(
    pairs: list[tuple[str, Path, Path | None]], collector: BadCaseCollector, require_labels: bool
) -> list[Case]:
    cases = []
    for case_id, image, label in pairs:
        if not image.exists():
            collector.report(case_id, BadCaseError(f"Case '{case_id}': image '{image}' does not exist"))
            continue
        if label is None or not label.exists():
            if require_labels:
                expected = f"label '{label}' does not exist" if label is not None else "no label file found"
                collector.report(case_id, BadCaseError(f"Case '{case_id}': image '{image}' has no label: {expected}"))
                continue
            label = None
        cases.append(Case(case_id, image, label))
    return cases


# ---------------------------------------------------------------- glob


def _case_namer(case_pattern: str | None) -> Callable[[Path], str | None]:
    """The case id of a file for the glob layout: ``data.case_pattern``'s ``case`` group when set, else the
    package's own :func:`medseg.io.scans.case_id_from_path` (scan files only); ``None`` = not a case file."""
    if case_pattern is None:
        return lambda path: case_id_from_path(path) if is_supported_file(path) else None
    pattern = compile_named(case_pattern, "data.case_pattern", "case")

    def from_pattern(path: Path) -> str | None:
        match = pattern.match(path.name)
        return None if match is None else match.group("case")

    return from_pattern


def _shown_ids(by_case: dict[str, Path], limit: int = 3) -> str:
    ids = sorted(by_case)
    return ", ".join(f"'{i}'" for i in ids[:limit]) + (", ..." if len(ids) > limit else "")


def _case_pattern_hint(image_ids: list[str], label_ids: list[str]) -> str | None:
    """How to pair images and labels whose case ids differ by a last tag (``spleen_2_img`` / ``spleen_2_label``):
    the ``data.case_pattern`` that pairs them, when one tag per side does; ``None`` otherwise."""

    def split(ids: list[str]) -> tuple[set[str], set[str]]:
        parts = [re.split(r"[_\-.]", i)[-1] for i in ids]
        return {i[: -len(t) - 1] for i, t in zip(ids, parts, strict=True) if len(i) > len(t)}, set(parts)

    (img_stems, img_tags), (lab_stems, lab_tags) = split(image_ids), split(label_ids)
    if len(img_tags) == 1 and len(lab_tags) == 1 and img_stems & lab_stems:
        tags = f"{img_tags.pop()}|{lab_tags.pop()}"
        return (
            f"they differ by a tag: set data.case_pattern: '(?P<case>.+)[_.-]({tags})\\.' (a regex on the file name; "
            "its case group is the case id)"
        )
    return None


def _suffix_hint(image_ids: list[str], label_ids: list[str]) -> str | None:
    """How to pair labels named as their image plus one suffix (ACDC's ``patient001_frame01_gt``): the
    ``data.case_pattern`` that pairs them, when every label is an image's id plus the same suffix; else ``None``."""
    suffix = shared_label_suffix(label_ids, image_ids)
    if suffix is None:
        return None
    return (
        f"each label is named as its image plus '{suffix}': set data.case_pattern: "
        f"'{suffix_case_pattern(suffix)}' (a regex on the file name; its case group is the case id)"
    )


def _discover_glob(root: Path, cfg: DataConfig, collector: BadCaseCollector, require_labels: bool) -> list[Case]:
    case_of = _case_namer(cfg.case_pattern)
    why = "does not match data.case_pattern" if cfg.case_pattern is not None else "is not a supported scan file"
    # A file is never both an image and a label: image_glob '*/*.nii.gz' beside label_glob '*/*_gt.nii.gz'
    # would otherwise pair each label with itself.
    label_files = {path.resolve() for path in root.glob(cfg.label_glob)}

    def by_case(glob: str, what: str, exclude: set[Path] | None = None) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(root.glob(glob)):
            if any(is_hidden(part) for part in path.relative_to(root).parts):  # '._<name>', '.Trash/'...
                continue
            if exclude and path.resolve() in exclude:
                continue
            case_id = case_of(path)
            if case_id is None:
                log.warning("Ignoring %s '%s': its name %s", what, path, why)
                continue
            if case_id in found:
                raise ConfigError(f"Two {what} files give the case id '{case_id}': '{found[case_id]}' and '{path}'")
            found[case_id] = path
        return found

    images = by_case(cfg.image_glob, "image", exclude=label_files)
    if not images:
        if any(path.resolve() in label_files for path in root.glob(cfg.image_glob)):
            raise ConfigError(
                f"data.image_glob '{cfg.image_glob}' matches only files that data.label_glob '{cfg.label_glob}' "
                f"matches too, under '{root}': a file is an image or a label, so the two globs must differ"
            )
        raise ConfigError(f"data.image_glob '{cfg.image_glob}' matches no files under '{root}': {layout_hint(root)}")
    labels = by_case(cfg.label_glob, "label")
    for orphan in sorted(set(labels) - set(images)):
        log.warning("Label '%s' has no image matching data.image_glob; ignored", labels[orphan])
    pairs: list[tuple[str, Path, Path | None]] = [(cid, img, labels.get(cid)) for cid, img in images.items()]
    missing = [(cid, img) for cid, img, lab in pairs if lab is None]
    tagged = None
    if labels and len(missing) == len(pairs):  # not one pair: a naming convention apart?
        tagged = _case_pattern_hint(list(images), list(labels)) or _suffix_hint(list(images), list(labels))
    if tagged and cfg.case_pattern is None:  # not one pair, and the names differ by a tag (case_2_img, case_2_label)
        raise ConfigError(
            f"No image under '{root}' has a label with its case id (images {_shown_ids(images)}, labels "
            f"{_shown_ids(labels)}); {tagged}"
        )
    if missing and require_labels:
        # Name where the label was looked for, so a wrong label_glob is easy to spot.
        for cid, img in missing:
            collector.report(
                cid,
                BadCaseError(
                    f"Case '{cid}': image '{img}' has no label: no file under '{root}' matching "
                    f"data.label_glob '{cfg.label_glob}' has case id '{cid}'"
                ),
            )
        pairs = [p for p in pairs if p[2] is not None]
    return _pairs_to_cases(pairs, collector, require_labels)


# ---------------------------------------------------------------- dicom


def is_dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` directly holds the DICOM files of a scan (:func:`medseg.io.scans.holds_dicom_scan`):
    SEG / RTSTRUCT files are labels beside series, and RT plans or dose grids no scan to segment, so a folder of
    only those is no series."""
    return holds_dicom_scan(folder)


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name.lower(), pattern.lower())


def dicom_label_files(case_folder: Path, pattern: str) -> list[Path]:
    """DICOM SEG / RTSTRUCT masks of a case folder whose name matches the mask pattern: files directly in it,
    and subfolders holding just one such file (a SEG exported as its own "series" folder)."""
    from medseg.io.segmentation import dicom_label_file

    return sorted(p for p in case_folder.iterdir() if _matches(p.name, pattern) and dicom_label_file(p) is not None)


def labels_inside_series(folder: Path) -> list[Path]:
    """The DICOM SEG / RTSTRUCT files directly in a series folder, among its slices (a planning system's patient
    export: ``CT.*.dcm`` and ``RS.*.dcm`` in one folder), by name."""
    from medseg.io.segmentation import is_dicom_label_file

    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_label_file(p))


def _label_inside(case_id: str, folder: Path, inside: list[Path], pattern: str) -> Path:
    """The one label of a series folder holding its own: the only one, or the only one matching the pattern."""
    matching = [p for p in inside if _matches(p.name, pattern)]
    if len(inside) == 1 or len(matching) == 1:
        return inside[0] if len(inside) == 1 else matching[0]
    raise BadCaseError(
        f"Case '{case_id}': the series folder '{folder}' holds {len(inside)} SEG / RTSTRUCT files "
        f"({', '.join(p.name for p in inside)}) and {len(matching) or 'none'} of them match(es) "
        f"data.dicom_mask_pattern '{pattern}': set the pattern to pick one"
    )


def _discover_dicom(root: Path, cfg: DataConfig, collector: BadCaseCollector, require_labels: bool) -> list[Case]:
    # A case folder is the parent of one or more DICOM series folders, or a series folder that holds its own
    # SEG / RTSTRUCT among its slices (a planning system's patient export).
    case_folders: dict[Path, list[Path]] = {}
    pairs: list[tuple[str, Path, Path | None]] = []
    visited: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        dirnames.sort()
        folder = Path(dirpath)
        real = os.path.realpath(folder)
        if real in visited:  # symlink loop
            dirnames[:] = []
            continue
        visited.add(real)
        scan_folder = is_dicom_folder(folder)  # one header read; asked once per folder
        if scan_folder and (inside := labels_inside_series(folder)):
            case_id = _dicom_case_id(root, folder)
            try:
                pairs.append((case_id, folder, _label_inside(case_id, folder, inside, cfg.dicom_mask_pattern)))
            except BadCaseError as err:
                collector.report(case_id, err)
            dirnames[:] = []
        elif scan_folder and folder != root:
            case_folders.setdefault(folder.parent, []).append(folder)
            dirnames[:] = []  # a series folder holds no further series
    if not case_folders and not pairs and not collector.skipped:
        raise ConfigError(f"data.layout dicom: no folders of DICOM files under data.root '{root}': {layout_hint(root)}")

    for case_folder, series in sorted(case_folders.items()):
        case_id = _dicom_case_id(root, case_folder)
        masks = [s for s in series if _matches(s.name, cfg.dicom_mask_pattern)]
        masks += sorted(
            p
            for p in case_folder.iterdir()
            if ((p.is_file() and is_supported_file(p.name)) or structure_files(p) is not None)
            and _matches(p.name, cfg.dicom_mask_pattern)
        )
        masks += dicom_label_files(case_folder, cfg.dicom_mask_pattern)
        if not masks and len(lone := dicom_label_files(case_folder, "*")) == 1:
            # The one SEG / RTSTRUCT beside the series (a TCIA RT collection's "RTSTRUCT" folder): it names the
            # series it was drawn on, and reading it checks that it is this one.
            masks = lone
        images = [s for s in series if not _matches(s.name, cfg.dicom_mask_pattern)]
        if cfg.dicom_image_pattern is not None:
            images = [s for s in images if _matches(s.name, cfg.dicom_image_pattern)]
        elif len(images) > 1 and len(masks) == 1:
            images = _drawn_on(images, masks[0])
        if len(images) != 1:
            what = "no" if not images else f"{len(images)} ({', '.join(s.name for s in images)})"
            pattern = cfg.dicom_image_pattern or f"not matching data.dicom_mask_pattern '{cfg.dicom_mask_pattern}'"
            if not images and not masks:
                continue  # a folder of unrelated series (e.g. only a localiser): not a case
            collector.report(
                case_id,
                BadCaseError(
                    f"Case '{case_id}' in '{case_folder}': {what} image series folders ({pattern}); "
                    "set data.dicom_image_pattern to pick one"
                ),
            )
            continue
        if len(masks) > 1:
            collector.report(
                case_id,
                BadCaseError(
                    f"Case '{case_id}' in '{case_folder}': several masks match data.dicom_mask_pattern "
                    f"'{cfg.dicom_mask_pattern}': {', '.join(m.name for m in masks)}"
                ),
            )
            continue
        if not masks and require_labels:
            collector.report(
                case_id,
                BadCaseError(
                    f"Case '{case_id}': image series '{images[0]}' has no label: nothing in '{case_folder}' "
                    f"matches data.dicom_mask_pattern '{cfg.dicom_mask_pattern}'"
                ),
            )
            continue
        pairs.append((case_id, images[0], masks[0] if masks else None))
    return _pairs_to_cases(pairs, collector, require_labels)


def _drawn_on(images: list[Path], mask: Path) -> list[Path]:
    """Of several image series folders, the one a SEG / RTSTRUCT mask names as the series it was drawn on (a
    PET/CT or multi-sequence study with one structure set); all of them when the mask is no such file or names
    none of them (the pattern must then pick one)."""
    from medseg.io.dicom import series_uid_of_folder
    from medseg.io.dicom_source import referenced_series_uids
    from medseg.io.segmentation import dicom_label_file

    label = dicom_label_file(mask)
    drawn_on = referenced_series_uids(label) if label is not None else set()
    picked = [folder for folder in images if series_uid_of_folder(folder) in drawn_on]
    return picked if len(picked) == 1 else images


def _dicom_case_id(root: Path, case_folder: Path) -> str:
    """A ``dicom``-layout case's id: its folder's path under the root, parts joined by ``_``, spaces as ``_``."""
    rel = case_folder.relative_to(root)
    return re.sub(r"\s+", "_", "_".join(rel.parts) if rel.parts else root.name)
