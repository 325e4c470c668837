"""What a dataset folder looks like, said in the words of ``data.layout``, for errors about the wrong layout.

A copy of ``configs/hippocampus.yaml`` (``layout: msd``) pointed at a folder of case folders used to stop with
"dataset.json does not exist" and nothing more. :func:`layout_hint` looks at the folder (its entries and one level
of sub-folders, no file is opened beyond DICOM's 132-byte marker) and names the layout and keys that would read
it, with the file names it saw, so the next try can work.
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.data.name_patterns import shared_label_suffix, suffix_case_pattern, suffixed_labels
from medseg.io.scans import SUPPORTED_SUFFIXES, image_suffix, is_dicom_file, is_hidden
from medseg.io.structure_masks import structure_files

#: Names shown of a folder's files (enough to write the patterns from, short enough for one message).
_SHOWN = 6
#: Files looked at per folder when looking for DICOM (a series folder may hold thousands).
_PROBE = 20
#: Sub-folder levels searched for DICOM below a case folder (TCIA: case / study / series).
_DICOM_DEPTH = 3
#: Folder names that hold the labels of an image folder beside them (``images/`` + ``labels/``, ``imagesTr/`` +
#: ``labelsTr/`` without a dataset.json, ``img/`` + ``masks/``), compared case-insensitively.
_LABEL_FOLDER_WORDS = ("label", "mask", "seg", "gt", "ground", "annotation", "truth")


def _is_label_folder(name: str) -> bool:
    # By word, not substring ('gt' is no word of 'length'): labels, labelsTr, masks, seg, ground_truth ...
    words = [w for w in re.split(r"[_\-. ]+|(?<=[a-z])(?=[A-Z])", name) if w]
    return any(w.lower().rstrip("s").startswith(_LABEL_FOLDER_WORDS) for w in words)


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not is_hidden(p.name))
    except OSError:
        return []


def _scan_files(entries: list[Path]) -> list[Path]:
    return [p for p in entries if p.is_file() and image_suffix(p) is not None]


def _holds_dicom(folder: Path, depth: int = _DICOM_DEPTH) -> bool:
    """DICOM files in ``folder`` or in its sub-folders down to ``depth`` levels (case / study / series)."""
    entries = _visible(folder)
    if any(is_dicom_file(p) for p in [e for e in entries if e.is_file()][:_PROBE]):
        return True
    return depth > 0 and any(_holds_dicom(sub, depth - 1) for sub in entries if sub.is_dir())


def _names(paths: list[Path]) -> str:
    shown = ", ".join(p.name for p in paths[:_SHOWN])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > _SHOWN else "")


def _label_suffix(files: list[Path]) -> str | None:
    """The suffix that names labels after their images in one folder (``_gt`` for ``x.nii.gz`` beside
    ``x_gt.nii.gz``), when at least two files are such labels and all share it; else ``None``."""
    stems = [p.name[: -len(image_suffix(p) or "")] for p in files]
    labels = suffixed_labels(stems)
    return shared_label_suffix(labels, stems) if len(labels) >= 2 else None


def layout_hint(root: Path) -> str:
    """One sentence on what ``root`` holds and which ``data.layout`` (with which keys) reads it.

    Args:
        root: ``data.root`` (an existing folder).

    Returns:
        The hint, e.g. "it holds 6 case folders ('brats_2013_pat0001_1' has Flair.nii.gz, OT.nii.gz, T1c.nii.gz):
        for one folder per case set data.layout: folders with data.channel_patterns ...".
    """
    entries = _visible(root)
    folders = [p for p in entries if p.is_dir()]
    loose = _scan_files(entries)
    # Every reading that fits, folders first: a folder can hold both (TotalSegmentator's examples: a DICOM series
    # folder beside NIfTI files), and the user knows which of them are the cases.
    hints: list[str] = []
    with_scans = [(f, _scan_files(_visible(f))) for f in folders]
    with_scans = [(f, files) for f, files in with_scans if files]
    labels = [(f, files) for f, files in with_scans if _is_label_folder(f.name)]
    images = [(f, files) for f, files in with_scans if (f, files) not in labels]
    if labels and images:  # an image folder and a label folder beside it: the glob layout's own shape
        (img, img_files), (lab, lab_files) = images[0], labels[0]
        hints.append(
            f"it holds an image folder and a label folder ('{img.name}' has {_names(img_files)}; '{lab.name}' has "
            f"{_names(lab_files)}): set data.layout: glob with data.image_glob: '{img.name}/*"
            f"{image_suffix(img_files[0])}' and data.label_glob: '{lab.name}/*{image_suffix(lab_files[0])}' "
            "(paired by file name) and data.classes (background first)"
        )
    for folder in folders if not hints else []:
        inside = _visible(folder)
        files = _scan_files(inside)
        if files:
            # A sub-folder of mask files (TotalSegmentator's segmentations/) is the case's label, by structure.
            structures = [p for p in inside if p.is_dir() and structure_files(p) is not None]
            label = (
                f"data.label_pattern (e.g. '{structures[0].name}': its {len(structure_files(structures[0]) or [])} "
                "mask files are matched to data.classes by name)"
                if structures
                else "data.label_pattern (e.g. '*label*')"
            )
            suffix = _label_suffix(files)
            if suffix is not None:  # several cases per folder, each beside its label (ACDC: frame01, frame01_gt)
                ending = image_suffix(files[0])
                hints.append(
                    f"it holds {len(folders)} folder(s) with several cases each, every image beside its label "
                    f"('{folder.name}' has {_names(files)}): set data.layout: glob with data.image_glob (e.g. "
                    f"'*/*{ending}'; a file the label glob matches is a label), data.label_glob: "
                    f"'*/*{suffix}{ending}', data.case_pattern: '{suffix_case_pattern(suffix)}' and "
                    "data.classes (background first)"
                )
                break
            hints.append(
                f"it holds {len(folders)} folder(s) with scan files ('{folder.name}' has {_names(files)}): for one "
                "folder per case set data.layout: folders, data.channel_patterns (one file-name pattern per input "
                f"channel, in order, e.g. ['*flair*', '*t1c*']), {label} and data.classes (background first)"
            )
            break
    if not hints and folders and any(_holds_dicom(f) for f in folders[:3]):
        hints.append(
            f"it holds {len(folders)} folder(s) with DICOM files (e.g. '{folders[0].name}'): for one folder per case "
            "with its image series and mask set data.layout: dicom, data.dicom_image_pattern / "
            "data.dicom_mask_pattern (folder-name patterns) and data.classes (background first, unless SEG / "
            "RTSTRUCT labels name them)"
        )
    if loose:
        hints.append(
            f"{'it also' if hints else 'it'} holds {len(loose)} scan file(s) ({_names(loose)}): set data.layout: "
            "glob with data.image_glob and data.label_glob (file patterns relative to data.root, e.g. "
            "'*_img.nii.gz' and '*_label.nii.gz'), data.case_pattern where image and label names differ (e.g. "
            "'(?P<case>.+)_(img|label)'), and data.classes (background first)"
        )
    if hints:
        return "; ".join(hints)
    return (
        "it holds no scan files, case folders or DICOM series that medseg recognises (scan endings: "
        f"{', '.join(SUPPORTED_SUFFIXES)}; DICOM series folders)"
    )
