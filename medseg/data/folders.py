"""``data.layout: folders``: one folder per case under ``data.root``, one file per channel plus a label file.

::

    root/
      brats_2013_pat0001_1/  Flair_subtrMeanDivStd.nii.gz  T1c_subtrMeanDivStd.nii.gz  OTMultiClass.nii.gz
      brats_2013_pat0002_1/  ...

``data.channel_patterns`` (fnmatch, case-insensitive, one per channel, in input order) pick the channel files
and ``data.label_pattern`` the label (a mask file, or a structure folder holding one mask file per class named
after it, as TotalSegmentator's ``segmentations/``); the case id is the folder's name. A folder lacking a channel
is a bad case (:class:`~medseg.io.channels.MissingChannelError` naming the folder and the pattern). Prediction
reads a folder of such case folders the same way (:func:`case_folders`).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from medseg.config import DataConfig
from medseg.errors import BadCaseError, ConfigError
from medseg.io.channels import match_channel_files
from medseg.io.scans import is_hidden
from medseg.io.structure_masks import structure_files


def channel_names(cfg: DataConfig) -> list[str]:
    """The channel names: ``data.channel_names``, else the patterns without their wildcards."""
    patterns = _patterns(cfg)
    if cfg.channel_names is not None:
        if len(cfg.channel_names) != len(patterns):
            raise ConfigError(
                f"data.channel_names has {len(cfg.channel_names)} names for {len(patterns)} data.channel_patterns"
            )
        return [str(n) for n in cfg.channel_names]
    return [p.strip("*?").rstrip(".") or p for p in patterns]


def _patterns(cfg: DataConfig) -> list[str]:
    if not cfg.channel_patterns:
        raise ConfigError(
            "data.layout folders needs data.channel_patterns: one file-name pattern per channel, in input order "
            "(e.g. ['*flair*', '*t1c*'])"
        )
    return list(cfg.channel_patterns)


def case_folders(root: Path) -> list[Path]:
    """The case folders under ``root`` (its non-hidden sub-folders), sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))


def discover_folders(root: Path, cfg: DataConfig, collector: object, require_labels: bool) -> list:
    """The cases of a ``folders`` dataset.

    Args:
        root: ``data.root``.
        cfg: The ``data`` section (``channel_patterns``, ``label_pattern``).
        collector: A ``BadCaseCollector`` (raises or records bad cases).
        require_labels: A folder without a label file is a bad case.

    Returns:
        ``Case`` objects with ``channel_files`` in pattern order.

    Raises:
        ConfigError: No channel patterns, or no case folder.
        BadCaseError: A folder lacks a channel or its label (unless ``data.skip_bad_cases``).
    """
    from medseg.data.cases import Case

    patterns = _patterns(cfg)
    folders = case_folders(root)
    if not folders:
        raise ConfigError(f"data.layout folders: '{root}' holds no case folders")
    cases = []
    for folder in folders:
        try:
            files = match_channel_files(folder, patterns, exclude=[cfg.label_pattern])
        except BadCaseError as err:
            collector.report(folder.name, err)  # type: ignore[attr-defined]
            continue
        # The label: a mask file, or a structure folder (one mask file per class, named after it).
        labels = sorted(
            p
            for p in folder.iterdir()
            if (p.is_file() or structure_files(p) is not None)
            and fnmatch.fnmatch(p.name.lower(), cfg.label_pattern.lower())
        )
        if len(labels) > 1:
            collector.report(  # type: ignore[attr-defined]
                folder.name,
                BadCaseError(
                    f"Case '{folder.name}' in '{folder}': {len(labels)} files match data.label_pattern "
                    f"'{cfg.label_pattern}' ({', '.join(p.name for p in labels)})"
                ),
            )
            continue
        if not labels and require_labels:
            collector.report(  # type: ignore[attr-defined]
                folder.name,
                BadCaseError(
                    f"Case '{folder.name}' in '{folder}' has no label: no file matches data.label_pattern "
                    f"'{cfg.label_pattern}'"
                ),
            )
            continue
        cases.append(Case(folder.name, files[0], labels[0] if labels else None, tuple(files)))
    return cases
