"""Which kind of scans a dataset holds (CT or not), which decides ``preprocessing.normalization: auto``.

CT intensities are calibrated (Hounsfield units), so one clip and z-score fitted on the whole dataset keeps
their meaning; any other modality (MRI, PET, ...) has arbitrary units per scan and is z-scored per volume.

``data.modality: auto`` (the default) takes what the data itself records, as nnU-Net does from its
``dataset.json``:

- ``msd`` layout: ``dataset.json``'s ``modality`` (MSD) or ``channel_names`` (nnU-Net v2): a single channel named
  ``CT`` (any case) is CT; any other names are not.
- ``dicom`` layout: the image series' Modality (0008,0060) tag, read from one file per case when the run resolves
  its modality (:func:`dataset_modality`): ``CT`` is CT, any other value (``MR``, ``PT``, ...) is not; cases that
  disagree are refused (set ``data.modality``).
- NIfTI / NRRD / MHA files record no modality (``glob`` and ``folders`` layouts): not CT, and the reason says so,
  so a CT dataset in those layouts needs ``data.modality: ct``.

A modality set in the config always wins.

Where ``auto`` decides "not CT" but the training scans' intensities look like Hounsfield units
(:func:`hounsfield_hint`: every scan reaches air, -1000 HU, or the padding value CT scanners write below it), the
plan's reason and the log say so and name the key: a hint, not a decision, as no file records the modality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.data.cases import DatasetSpec

Modality = Literal["mri", "ct"]

#: A scan whose lowest intensity is at or below this reaches air in Hounsfield units (-1000 HU; padding is -1024,
#: -2048 or -3024). Raw MRI and PET intensities are not negative, and z-scored ones stay within a few tens.
HOUNSFIELD_AIR_AT_MOST = -900.0


@dataclass(frozen=True)
class RecordedModality:
    """What a dataset's files say about their modality.

    Attributes:
        modality: ``"ct"``, ``"mri"`` (any non-CT modality), or ``None`` when the files record none.
        source: Where that came from, for the log and ``plan.json`` (e.g. ``dataset.json names its channel 'CT'``).
    """

    modality: Modality | None
    source: str


def from_channel_names(names: Sequence[str], source: str = "dataset.json") -> RecordedModality:
    """The modality an MSD / nnU-Net ``dataset.json`` records through its channel names.

    Args:
        names: The channel names in index order (``modality`` or ``channel_names`` values).
        source: The file named in the reason.

    Returns:
        ``ct`` for a single channel named ``CT`` (case-insensitive), ``mri`` for any other names, ``None`` when
        the file names no channel.
    """
    if not names:
        return RecordedModality(None, f"{source} names no channel")
    listed = ", ".join(f"'{n}'" for n in names)
    if len(names) == 1 and names[0].strip().upper() == "CT":
        return RecordedModality("ct", f"{source} names its channel {listed}")
    plural = "its channels" if len(names) > 1 else "its channel"
    return RecordedModality("mri", f"{source} names {plural} {listed}")


def from_dicom_modalities(by_case: Mapping[str, str]) -> RecordedModality:
    """The modality DICOM image series record in their Modality tag, one value per case.

    Args:
        by_case: Case id -> the Modality value of its image series (``""`` when a file carries none).

    Returns:
        ``ct`` when every case says ``CT``, ``mri`` when every case names another modality, ``None`` when no
        case records one.

    Raises:
        ConfigError: Cases record different modalities (both named), or some record one and others none.
    """
    values = {case: v.strip().upper() for case, v in by_case.items()}
    kinds = sorted(set(values.values()))
    if not kinds or kinds == [""]:
        return RecordedModality(None, "the DICOM image series carry no Modality tag")
    if len(kinds) > 1:
        examples = "; ".join(f"{k or '(none)'} in '{next(c for c, v in values.items() if v == k)}'" for k in kinds[:4])
        raise ConfigError(
            f"data.modality: auto: the DICOM image series record different modalities ({examples}); "
            "set data.modality (ct or mri) or keep one modality per dataset"
        )
    value = kinds[0]
    return RecordedModality("ct" if value == "CT" else "mri", f"the DICOM image series' Modality is '{value}'")


def resolve_modality(setting: str, recorded: RecordedModality | None) -> tuple[Modality, str]:
    """The modality a run uses, and why.

    Args:
        setting: ``data.modality``: ``auto``, ``mri`` or ``ct``.
        recorded: What discovery read from the data (``None``: nothing was read).

    Returns:
        ``(modality, reason)``.

    Raises:
        ConfigError: For a setting other than ``auto``, ``mri`` and ``ct``.
    """
    if setting in ("mri", "ct"):
        return setting, "set in the config (data.modality)"  # type: ignore[return-value]
    if setting != "auto":
        raise ConfigError(f"data.modality: expected auto, mri or ct, got {setting!r}")
    if recorded is None or recorded.modality is None:
        why = recorded.source if recorded is not None else "the scan files record no modality"
        return "mri", f"{why}; not CT unless data.modality says ct"
    return recorded.modality, recorded.source


def dataset_modality(setting: str, spec: DatasetSpec) -> tuple[Modality, str]:
    """The modality a run on a discovered dataset uses, and why (:func:`resolve_modality` on what it records).

    A ``dicom``-layout dataset's Modality tags are read here (one header per case), not during discovery, which
    runs several times per run (the set-up checks, the summary) and needs none of them; a set modality reads none.

    Raises:
        ConfigError: The DICOM cases record different modalities (:func:`from_dicom_modalities`).
    """
    recorded = spec.recorded_modality
    if setting == "auto" and recorded is None and spec.layout == "dicom":
        from medseg.io.dicom import series_modality

        recorded = from_dicom_modalities({c.id: series_modality(c.image) for c in spec.cases})
    return resolve_modality(setting, recorded)


def hounsfield_hint(scan_minima: Sequence[float]) -> str | None:
    """A hint when a dataset decided not-CT has CT-like intensities: every training scan's lowest intensity is at
    or below :data:`HOUNSFIELD_AIR_AT_MOST` (air in Hounsfield units).

    Args:
        scan_minima: Each training scan's lowest raw intensity (one channel).

    Returns:
        The hint (for the plan's normalisation reason and the log), or ``None``.
    """
    if not len(scan_minima) or max(scan_minima) > HOUNSFIELD_AIR_AT_MOST:
        return None
    return (
        f"the intensities look like CT in Hounsfield units (every training scan reaches {max(scan_minima):g} or "
        "lower, as air does): if this is CT, set data.modality: ct for CT normalisation"
    )
