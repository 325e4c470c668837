"""Batch prediction over folders of scans: one mask per scan, one bad scan never stops the run.

Behaviour a night run relies on:

* **Inputs**: a folder searched recursively with ``medseg.io.find_scans`` (NIfTI/NRRD/MHA files and DICOM series
  folders), a single scan, or an explicit list of scans (what a torchrun rank gets when the list is sharded).
  A folder at the bottom of the tree that holds no scan at all (e.g. an empty or non-DICOM "series" folder left
  by a failed export) is reported as a failed case, so it does not vanish silently.
* **Names**: ``<case_id>.<output_format>`` (``<case_id>.dcm`` for ``dicom-seg`` / ``rtstruct``, see
  ``medseg.inference.dicom_output``) with ``case_id`` from ``medseg.io.case_id_from_path`` (a DICOM series
  is named from its folder). When several inputs map to the same name (case-insensitively, as on macOS/Windows
  disks) each gets its parent folder names prepended until the names differ (``PGBM-001_11-T1post``), which
  keeps a name bound to its input when scans are added later (a counter suffix would not, and a resumed run
  could then skip a scan because another scan's mask carries its name).
* **Isolation**: any error while reading, predicting or writing one case is recorded with its reason
  (``MedsegError`` messages as they are; other exceptions as ``Type: message``) and the run goes on.
* **Resume**: a case whose outputs all exist is ``skipped`` unless ``overwrite``; outputs are written
  atomically by ``medseg.io``, probability maps before the mask, so an existing mask means a finished case.
* **Read-only inputs**: nothing is written under an input folder (an output folder inside it is refused).
* **Summary**: ``predictions.csv`` (case, input, output, status ``ok|skipped|failed``, error, seconds, and
  ``voxels_<class>`` / ``volume_ml_<class>`` per foreground class, then ``qc_flags`` / ``qc_score`` from
  ``medseg.inference.qc``, empty for a checkpoint without a QC reference), rewritten atomically after every case, so a
  killed run's table lists exactly the masks it finished. Rows of skipped cases carry the voxel counts from the
  previous run's table when it has them.
* **Storage faults** stop the run: when the output folder cannot take writes (disk full, over quota, read-only,
  not writable; ``medseg.io.storage``) every later case would fail the same way, so the batch stops at the
  first one with one :class:`~medseg.errors.OutputStorageError` naming the folder and the reason, after writing
  the table if it still can (the message says if it could not). Finished masks are kept.
* **Stale temp files**: hidden temp files a killed run left next to this run's own outputs are removed first.
* **Probability maps** (``save_probabilities``): one float32 3D file per foreground class,
  ``<case_id>_prob_<class>.<output_format>`` (class name reduced to letters, digits, ``-`` and ``_``), on the
  scan's grid. One file per class rather than a 4D file because every reader (Slicer, ITK-SNAP, SimpleITK)
  opens 3D maps reliably and ``medseg.io.save_volume`` writes 3D.
* **Memory**: nothing is kept per case except its CSV row; each volume and probability map is released before
  the next case is read, and heap memory the C library keeps after that is handed back to the OS whenever it
  has piled up (``medseg.inference.memory``), so the resident set does not creep up over a long folder.
* **One case at a time**: reading the next scan and writing the previous mask in background threads was tried
  and measured slower on 2 cores (91 hippocampus scans: 14.1 s in turn vs 16.1 s overlapped), as the threads
  compete with PyTorch's own for the same cores; file I/O is a few ms of a scan's ~150 ms.
* **Sharding** (torchrun): ``shard=(rank, world_size)`` names every scan on the full sorted list, then keeps
  this rank's round-robin share; each rank writes its own table (``csv_name``) and rank 0 joins them with
  :func:`merge_tables`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io as _io
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from medseg.errors import ConfigError, MedsegError, OutputStorageError, UnreadableScanError
from medseg.inference.dicom_output import (
    DICOM_FORMATS,
    NIFTI_FORMAT,
    file_suffix,
    non_dicom_reason,
    write_dicom_mask,
)
from medseg.inference.memory import HeapTrimmer
from medseg.inference.predictor import Predictor
from medseg.inference.qc import assess
from medseg.io import case_id_from_path, find_scans, save_mask, save_volume
from medseg.io.atomic import atomic_write_text, remove_stale_temp_files
from medseg.io.channels import ChannelStack
from medseg.io.dicom_seg import DicomWriteOptions
from medseg.io.scans import is_later_channel_file, walk_scan_tree
from medseg.io.slicer_seg import save_slicer_segmentation
from medseg.io.storage import output_storage

log = logging.getLogger(__name__)

#: ``seg.nrrd``: a 3D Slicer segmentation (named segments), on the scan's grid like the NRRD label map.
SLICER_FORMAT = "seg.nrrd"
OUTPUT_FORMATS = ("nii.gz", "nrrd", "mha", SLICER_FORMAT, *DICOM_FORMATS)
CSV_NAME = "predictions.csv"
# What predict_folder takes: a folder or scan, a list of scans, or {case_id: scan} (the caller names the outputs).
ScanInputs = Path | str | Sequence[Path | str] | Mapping[str, Path | str]
BASE_COLUMNS = ("case", "input", "output", "status", "error", "seconds")
#: Quality-control columns (``medseg.inference.qc``): reasons ``;``-separated, and the score (>= 1 = flagged).
QC_COLUMNS = ("qc_flags", "qc_score")


@dataclass(frozen=True)
class ScanJob:
    """One scan to predict and where its outputs go.

    Attributes:
        case_id: Unique output name stem.
        input: Scan file or DICOM series folder (or, with ``problem`` set, the folder that holds no scan).
        output: Mask path.
        problem: Set when discovery already knows the input cannot be predicted (recorded as failed).
    """

    case_id: str
    input: Path
    output: Path
    problem: str | None = None


@dataclass
class BatchResult:
    """Outcome of :func:`predict_folder`.

    Attributes:
        csv_path: The summary table.
        rows: One dict per case, as written to the table.
        n_ok, n_skipped, n_failed: Case counts per status.
    """

    csv_path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_ok: int = 0
    n_skipped: int = 0
    n_failed: int = 0

    @property
    def exit_code(self) -> int:
        """Process exit status: 0 when every case succeeded or was already done, 1 if any failed."""
        return 1 if self.n_failed else 0


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def column_names(classes: Sequence[str]) -> list[str]:
    """Summary-table columns for these classes (background at index 0 is not counted)."""
    per_class = [f"{kind}_{name}" for name in classes[1:] for kind in ("voxels", "volume_ml")]
    return [*BASE_COLUMNS, *per_class, *QC_COLUMNS]


def probability_paths(mask_path: Path, case_id: str, classes: Sequence[str], output_format: str) -> list[Path]:
    """Paths of the per-class probability maps next to ``mask_path`` (foreground classes, in class order)."""
    # Probabilities are plain float maps: next to a DICOM output as NIfTI, next to a Slicer segmentation as NRRD.
    if output_format in DICOM_FORMATS:
        output_format = NIFTI_FORMAT
    elif output_format == SLICER_FORMAT:
        output_format = "nrrd"
    stems = [_sanitize(c) for c in classes[1:]]
    # Two class names reduced to the same text would overwrite each other: fall back to indices.
    if len(set(stems)) != len(stems):
        stems = [str(i) for i in range(1, len(classes))]
    return [mask_path.parent / f"{case_id}_prob_{s}.{output_format}" for s in stems]


def unique_case_ids(scans: Sequence[Path]) -> list[str]:
    """Output name stems for ``scans``: ``case_id_from_path``, with parent folders prepended where names collide.

    Args:
        scans: Scan files / DICOM folders (the full list, before any sharding, so every rank agrees).

    Returns:
        One unique stem per scan, same order.
    """
    base = [case_id_from_path(p) for p in scans]
    names = list(base)
    # Within one folder folders cannot tell names apart: the endings do (a.nii.gz + a.nrrd), else the position
    # (A.nii.gz + a.nii.gz on a case-sensitive file system).
    for idx in _groups(names).values():
        by_folder: dict[str, list[int]] = {}
        for i in idx:
            by_folder.setdefault(os.path.abspath(scans[i].parent), []).append(i)
        for members in (m for m in by_folder.values() if len(m) > 1):
            endings = [scans[i].name[len(base[i]) :] for i in members]
            if len({e.lower() for e in endings}) == len(members):
                for i, ending in zip(members, endings, strict=True):
                    names[i] = f"{names[i]}_{_sanitize(ending) or i}"
            else:
                for k, i in enumerate(members[1:], start=2):
                    names[i] = f"{names[i]}_{k}"
    base = list(names)  # across folders: parent folders are prepended until the names differ
    for depth in range(1, 64):
        clashes = [idx for idx in _groups(names).values() if len(idx) > 1]
        if not clashes:
            return names
        for idx in clashes:
            for i in idx:
                # absolute(), not resolve(): names come from the folders the user sees, not symlink targets.
                parents = [p.name for p in Path(os.path.abspath(scans[i])).parents][:depth][::-1]
                names[i] = "_".join([*(q for q in parents if q), base[i]])
    # Names that still clash (case-insensitively): their position in the list tells them apart.
    for idx in _groups(names).values():
        for k, i in enumerate(idx[1:], start=2):
            names[i] = f"{names[i]}_{k}"
    return names


def _groups(names: Sequence[str]) -> dict[str, list[int]]:
    """Positions of each name, compared case-insensitively (as on macOS and Windows file systems)."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n.lower(), []).append(i)
    return groups


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _empty_leaf_folders(root: Path, scans: Sequence[Path], exclude: Path) -> list[Path]:
    """Bottom-level folders under ``root`` that hold no scan (likely failed or non-DICOM series exports)."""
    # Paths as find_scans spells them (links not resolved): a folder of symbolic links to scans holds them,
    # although the targets live elsewhere, and a linked DICOM folder is the scan itself.
    holding = {os.path.normpath(p) for p in scans if p.is_dir()}
    holding |= {os.path.normpath(p.parent) for p in scans if not p.is_dir()}
    found = []
    seen: set[str] = set()
    # os.walk, not rglob: a DICOM tree has thousands of files and walk lists them without a stat each.
    for dirpath, dirnames, _ in walk_scan_tree(root):
        real = os.path.realpath(dirpath)
        if real in seen:  # find_scans does not list a folder twice either
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not _is_within(Path(dirpath, d), exclude)]
        if not dirnames and os.path.normpath(dirpath) not in holding:
            found.append(Path(dirpath))
    return sorted(found)


def discover(inputs: ScanInputs, out_dir: Path, output_format: str) -> list[ScanJob]:
    """Lists the scans to predict and their output paths.

    Args:
        inputs: A folder (searched recursively), a single scan file / DICOM folder, a list of scans (named by
            :func:`unique_case_ids`), or a mapping ``{case_id: scan}`` whose keys are the output names (the
            validation cases of a run, named by their case id whatever the layout).
        out_dir: Output folder; it must not lie inside an input folder.
        output_format: ``nii.gz``, ``nrrd``, ``mha``, ``dicom-seg`` or ``rtstruct`` (NIfTI/NRRD/MHA inputs then
            become failed jobs, or a ConfigError when no input is a DICOM series).

    Returns:
        Jobs in a deterministic order (sorted inputs), including folders that hold no scan as failed jobs.

    Raises:
        ConfigError: Missing input, unknown format, an input folder without any scan, or an output folder
            inside an input folder.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output_format: expected one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    problems: dict[Path, str] = {}
    if isinstance(inputs, (str, Path)):
        root = Path(inputs)
        if not root.exists():
            raise ConfigError(f"Input '{root}' does not exist")
        if _is_within(out_dir, root) and root.is_dir():
            raise ConfigError(f"Output folder '{out_dir}' lies inside the input folder '{root}'; inputs are read-only")
        not_scans: list[Path] = []
        scans = find_scans(root, not_scans=not_scans) if root.is_dir() else [root]
        if not_scans:
            shown = ", ".join(str(p.relative_to(root)) for p in not_scans[:5])
            log.info(
                "Not predicted: %d DICOM folder(s) holding no scan, only structure sets, segmentations, RT plans or "
                "dose grids (%s%s)",
                len(not_scans),
                shown,
                ", ..." if len(not_scans) > 5 else "",
            )
        if root.is_dir() and scans != [root]:
            for d in _empty_leaf_folders(root, [*scans, *not_scans], out_dir):
                problems[d] = "folder holds no readable scan (no NIfTI/NRRD/MHA file and no DICOM series)"
        if not scans and (not problems or list(problems) == [root]):
            raise ConfigError(f"Input folder '{root}' holds no scans (NIfTI/NRRD/MHA files or DICOM series folders)")
    else:
        if isinstance(inputs, Mapping):
            named = {Path(p): str(cid) for cid, p in inputs.items()}
            if len(named) != len(inputs):
                raise ConfigError("predict: two case ids name the same scan")
        scans = list(named) if isinstance(inputs, Mapping) else [Path(p) for p in inputs]
        for p in scans:
            if p.is_dir() and _is_within(out_dir, p):
                raise ConfigError(f"Output folder '{out_dir}' lies inside the input folder '{p}'; inputs are read-only")
    if output_format in DICOM_FORMATS:
        refused = {p: r for p in scans if (r := non_dicom_reason(p, output_format)) is not None}
        if refused and len(refused) == len(scans):
            raise ConfigError(f"inference.{next(iter(refused.values()))}")  # the reason names the key's value
        problems.update(refused)
    all_inputs = sorted({*scans, *problems})
    ids = [named[p] for p in all_inputs] if isinstance(inputs, Mapping) else unique_case_ids(all_inputs)
    suffix = file_suffix(output_format)
    return [
        ScanJob(case_id=cid, input=p, output=out_dir / f"{cid}.{suffix}", problem=problems.get(p))
        for cid, p in zip(ids, all_inputs, strict=True)
    ]


def discover_case_folders(root: Path, out_dir: Path, output_format: str) -> list[ScanJob]:
    """One job per case folder under ``root`` (``data.layout: folders`` models); masks are named after the folders."""
    from medseg.data.folders import case_folders

    folders = [f for f in case_folders(root) if not _is_within(f, out_dir) and not _is_within(out_dir, f)]
    if not folders:
        raise ConfigError(f"Input folder '{root}' holds no case folders (the model reads one folder per case)")
    return [ScanJob(case_id=f.name, input=f, output=out_dir / f"{f.name}.{output_format}") for f in folders]


def region_output_problem(output_format: str) -> str | None:
    """Why a region model (``medseg.data.regions``) cannot write ``output_format``, or ``None``.

    DICOM SEG segments and RTSTRUCT ROIs may overlap, so each is a region's whole mask
    (:func:`medseg.inference.dicom_output.write_dicom_mask`). A Slicer segment per painted class would call
    "tumour core minus enhancing" the tumour core; overlapping Slicer segments (layers) are not written.
    """
    if output_format == SLICER_FORMAT:
        return (
            f"inference.output_format {output_format}: the model predicts overlapping regions (data.regions or "
            "dataset.json), whose Slicer segments would be painted classes; use dicom-seg or rtstruct (a segment "
            "per region) or nii.gz, nrrd or mha (the painted label map)"
        )
    return None


def shard_jobs(jobs: Sequence[ScanJob], rank: int, world_size: int) -> list[ScanJob]:
    """This rank's share of ``jobs`` (round-robin: no job done twice, none missed, sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(jobs[rank::world_size])


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, header: bool = True) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    atomic_write_text(path, _csv_text(rows, columns))


def _append_csv_row(path: Path, row: dict[str, Any], columns: Sequence[str]) -> None:
    """Appends one row to a table :func:`_write_csv` started, in one ``write`` call on an ``O_APPEND`` file, so a
    killed run leaves whole rows only (a row is a few hundred bytes). Rewriting the whole table after every case
    instead costs time growing with the rows done: 65 ms per case at 10,000 rows, quadratic over a batch."""
    data = _csv_text([row], columns, header=False).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
        except OSError:
            os.ftruncate(fd, size)  # no half row left behind (a full disk can fail a write part-way)
            raise
        if written != len(data):
            os.ftruncate(fd, size)
            raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes of a table row were written")
    finally:
        os.close(fd)


def _count_rows(path: Path) -> int:
    try:
        with path.open(newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return 0


def _previous_rows(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an earlier run's table by output path (to carry voxel counts over to skipped cases)."""
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            return {r["output"]: r for r in csv.DictReader(f) if r.get("status") in ("ok", "skipped")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError):
        return {}


def merge_tables(parts: Sequence[Path], out_path: Path) -> Path:
    """Merges per-rank summary tables into one, sorted by case (rank 0 does this after a sharded run).

    Args:
        parts: Tables written by :func:`predict_folder` with different ``csv_name``.
        out_path: Merged table (written atomically).
    """
    rows: list[dict[str, str]] = []
    columns: list[str] = []
    for part in parts:
        with Path(part).open(newline="") as f:
            reader = csv.DictReader(f)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            rows.extend(reader)
    rows.sort(key=lambda r: r.get("case", ""))
    _write_csv(Path(out_path), rows, columns)
    return Path(out_path)


class _StorageStop(Exception):
    """Carries the failed row of the case whose write hit a storage fault up to the batch loop."""

    def __init__(self, row: dict[str, Any], error: OutputStorageError) -> None:
        super().__init__(str(error))
        self.row = row
        self.error = error


def _describe(err: BaseException) -> str:
    if isinstance(err, MedsegError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _nifti_copy(job: ScanJob, output_format: str, also_nifti: bool) -> Path | None:
    """Where the NIfTI copy of a DICOM output goes (``inference.also_nifti``), or ``None``."""
    if output_format not in DICOM_FORMATS or not also_nifti:
        return None
    return job.output.with_name(f"{job.case_id}.{NIFTI_FORMAT}")


def _run_case(
    predictor: Predictor,
    job: ScanJob,
    output_format: str,
    overwrite: bool,
    save_probabilities: bool,
    dicom: DicomWriteOptions | None = None,
    also_nifti: bool = False,
) -> dict[str, Any]:
    read = predictor.read_input(job.input)  # a scan, or a multi-channel case's channels
    volume = read.reference if isinstance(read, ChannelStack) else read
    dicom = dicom or DicomWriteOptions()
    # Only the writes are examined for storage faults: an unreadable input is this case's problem.
    folder = job.output.parent
    # Saved and fractional outputs need the probabilities (kept from the same forward pass); otherwise labels are
    # taken slab by slab, so memory follows the batch, not the scan; QC then keeps only two per-voxel confidence
    # maps (float16) for its confidence checks.
    confidence = None
    if save_probabilities or (output_format in DICOM_FORMATS and dicom.fractional):
        mask, probs = predictor.predict_with_proba(read)
    elif predictor.qc_active:
        (mask, confidence), probs = predictor.predict_with_confidence(read), None
    else:
        mask, probs = predictor.predict(read), None
    if save_probabilities:
        assert probs is not None
        paths = probability_paths(job.output, job.case_id, predictor.classes, output_format)
        for k, prob_path in enumerate(paths, start=1):
            if overwrite or not prob_path.exists():
                with output_storage(folder):
                    save_volume(probs[k], like=volume, path=prob_path, overwrite=overwrite)
    qc = predictor.assess_quality(volume, np.asarray(mask.array), probs, confidence=confidence)
    del confidence
    nifti = _nifti_copy(job, output_format, also_nifti)
    if nifti is not None and (overwrite or not nifti.exists()):
        with output_storage(folder):
            save_mask(predictor.stored_labels(mask.array), like=volume, path=nifti, overwrite=overwrite)
    if overwrite or not job.output.exists():
        with output_storage(folder):
            if output_format in DICOM_FORMATS:
                write_dicom_mask(
                    output_format,
                    mask.array,
                    volume,
                    job.output,
                    predictor.classes,
                    probabilities=probs if dicom.fractional else None,
                    options=dicom,
                    overwrite=overwrite,
                    membership=predictor.membership,
                )
            elif output_format == SLICER_FORMAT:
                save_slicer_segmentation(
                    predictor.stored_labels(mask.array),
                    volume,
                    job.output,
                    predictor.classes,
                    label_values=predictor.spec.label_values,
                    class_codes=dicom.class_codes,
                    overwrite=overwrite,
                )
            else:
                save_mask(predictor.stored_labels(mask.array), like=volume, path=job.output, overwrite=overwrite)
    del probs
    row: dict[str, Any] = {}
    volumes = predictor.class_volumes(mask.array, voxel_mm3=volume.voxel_volume)  # |det|: right on a sheared grid
    for name, (voxels, ml) in volumes.items():
        row[f"voxels_{name}"] = voxels
        row[f"volume_ml_{name}"] = f"{ml:.4f}"
    row.update(qc.row())
    return row


def _process(
    predictor: Predictor,
    job: ScanJob,
    output_format: str,
    overwrite: bool,
    save_probabilities: bool,
    previous: dict[str, dict[str, str]],
    columns: Sequence[str],
    dicom: DicomWriteOptions | None = None,
    also_nifti: bool = False,
) -> dict[str, Any]:
    """One case's table row; never raises for a bad case (only for interrupts and storage faults).

    Raises:
        _StorageStop: The output folder cannot take writes (with this case's failed row).
    """
    row: dict[str, Any] = {
        "case": job.case_id,
        "input": str(job.input),
        "output": str(job.output),
        "status": "ok",
        "error": "",
        "seconds": "",
    }
    if job.problem is not None:
        row.update(status="failed", error=str(UnreadableScanError(job.input, job.problem)))
        return row
    expected = [job.output]
    if save_probabilities:
        expected += probability_paths(job.output, job.case_id, predictor.classes, output_format)
    nifti = _nifti_copy(job, output_format, also_nifti)
    expected += [nifti] if nifti is not None else []
    if not overwrite and all(p.exists() for p in expected):
        row["status"] = "skipped"
        old = previous.get(str(job.output), {})
        row.update({c: old[c] for c in columns[len(BASE_COLUMNS) :] if old.get(c)})
        return row
    start = time.perf_counter()
    try:
        row.update(_run_case(predictor, job, output_format, overwrite, save_probabilities, dicom, also_nifti))
    except OutputStorageError as err:  # the run's problem, not this case's: the caller stops the batch
        row.update(status="failed", error=str(err), seconds=f"{time.perf_counter() - start:.2f}")
        raise _StorageStop(row, err) from err
    except Exception as err:  # per-case isolation: record and go on (KeyboardInterrupt still stops the run)
        row.update(status="failed", error=_describe(err))
        # A traceback only for unexpected errors: a MedsegError message already says what is wrong.
        log.warning("case %s failed: %s", job.case_id, row["error"], exc_info=not isinstance(err, MedsegError))
    row["seconds"] = f"{time.perf_counter() - start:.2f}"
    return row


def predict_folder(
    predictor: Predictor,
    inputs: ScanInputs,
    out_dir: Path | str,
    *,
    output_format: str = "nii.gz",
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    csv_name: str = CSV_NAME,
    dicom: DicomWriteOptions | None = None,
    also_nifti: bool = False,
    on_flush: Callable[[], None] | None = None,
) -> BatchResult:
    """Predicts a mask for every scan under ``inputs`` and writes a summary table.

    Args:
        predictor: A loaded :class:`Predictor`.
        inputs: A folder (searched recursively), one scan, a list of scans (files / DICOM folders), or a mapping
            ``{case_id: scan}`` that names each output.
        out_dir: Where masks, probability maps and the table go (created if needed; not inside an input folder).
        output_format: ``nii.gz`` (default), ``nrrd``, ``mha``, or for DICOM-series inputs ``dicom-seg`` /
            ``rtstruct`` (``<case_id>.dcm``; probability maps then as ``.nii.gz``).
        overwrite: Recompute and replace existing outputs; otherwise finished cases are skipped.
        save_probabilities: Also write float32 per-class probability maps (see module docs for names).
        progress: Show a tqdm progress bar.
        shard: ``(rank, world_size)``: predict only this rank's share of the (full, sorted) scan list, with names
            decided on the full list so all ranks agree. Combine with a per-rank ``csv_name`` and
            :func:`merge_tables`.
        csv_name: File name of the summary table in ``out_dir``.
        dicom: Codes and header fields of ``dicom-seg`` / ``rtstruct`` outputs (defaults: generic codes).
        also_nifti: With a DICOM ``output_format``, also write ``<case_id>.nii.gz``.
        on_flush: Called after each rewrite of the table during the run (e.g. to refresh ``report.html``).

    Returns:
        A :class:`BatchResult`; its ``n_failed`` / ``exit_code`` say whether any case failed.

    Raises:
        ConfigError: Missing input, bad format, output folder inside an input folder. Per-case problems never
            raise; they are recorded in the table.
        OutputStorageError: The output folder cannot take writes (disk full, read-only, ...): the batch stopped
            at the first such case; the message names the folder, the reason, what was kept and the table.
    """
    out_dir = Path(out_dir)
    problem = region_output_problem(output_format) if predictor.spec.regions is not None else None
    if problem:
        raise ConfigError(problem)
    if predictor.spec.channel_patterns and isinstance(inputs, (str, Path)) and Path(inputs).is_dir():
        jobs = discover_case_folders(Path(inputs), out_dir, output_format)  # a folder of case folders
    else:
        jobs = discover(inputs, out_dir, output_format)
        if len(predictor.spec.channels) > 1:
            # nnU-Net naming: <case>_0001... are read with their <case>_0000 (Predictor.read_input), not alone.
            jobs = [j for j in jobs if not is_later_channel_file(j.input)]
    if shard is not None:
        jobs = shard_jobs(jobs, *shard)
    with output_storage(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / csv_name
    columns = column_names(predictor.classes)
    # A run killed mid-write leaves hidden temp files; only this run's own destinations are matched (under
    # torchrun the other ranks' jobs are theirs to clean).
    outputs = [csv_path, *(j.output for j in jobs)]
    if save_probabilities:
        outputs += [p for j in jobs for p in probability_paths(j.output, j.case_id, predictor.classes, output_format)]
    remove_stale_temp_files(outputs)
    previous = _previous_rows(csv_path)
    result = BatchResult(csv_path=csv_path)
    fault: OutputStorageError | None = None
    if predictor.qc_reference is None and predictor.qc_settings.enabled:
        log.warning("QC: %s", assess({}, None).note)
    bar = tqdm(total=len(jobs), disable=not progress, unit="scan", desc="predict")
    # Per-case warnings go through tqdm.write while the bar is shown, so they do not break the bar's line.
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    trim = HeapTrimmer()
    try:
        with redirect:
            for job in jobs:
                bar.set_postfix_str(job.case_id[-30:], refresh=False)
                try:
                    row = _process(
                        predictor,
                        job,
                        output_format,
                        overwrite,
                        save_probabilities,
                        previous,
                        columns,
                        dicom,
                        also_nifti,
                    )
                except _StorageStop as stop:
                    result.rows.append(stop.row)
                    result.n_failed += 1
                    fault = stop.error
                    break
                result.rows.append(row)
                if row["status"] == "ok":
                    result.n_ok += 1
                elif row["status"] == "skipped":
                    result.n_skipped += 1
                else:
                    result.n_failed += 1
                    bar.set_description(f"predict ({result.n_failed} failed)", refresh=False)
                bar.update(1)
                trim()
                # After every case: a killed run's table lists exactly the masks it finished. The first row replaces
                # an earlier run's table (atomically); later rows are appended, so the cost stays flat per case.
                with output_storage(out_dir):
                    if len(result.rows) == 1 or not csv_path.is_file():
                        _write_csv(csv_path, result.rows, columns)
                    else:
                        _append_csv_row(csv_path, row, columns)
                if on_flush is not None:  # e.g. report.html, rewritten at most every 30 s
                    on_flush()
    except OutputStorageError as err:  # the table itself could not be written
        fault = fault or err
    finally:
        # Also on Ctrl-C or a crash: the table lists what was done, and the next run resumes from the files.
        bar.close()
        table_note = _final_table(csv_path, result.rows, columns)
    if fault is not None:
        raise _stopped(fault, result, len(jobs), table_note) from fault
    if table_note is not None:
        log.warning("%s", table_note)
    return result


def _final_table(csv_path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str | None:
    """Writes the table; returns None, or why it could not be written (never raises for a storage fault)."""
    try:
        with output_storage(csv_path.parent):
            _write_csv(csv_path, rows, columns)
    except OutputStorageError as err:
        if not csv_path.is_file():
            return f"the table '{csv_path}' could not be written ({err.reason})"
        # The copy from after an earlier case is still there (atomic rewrites): say how far it goes.
        on_disk = _count_rows(csv_path)
        return (
            f"the table '{csv_path}' could not be updated ({err.reason}); the copy on disk lists {on_disk} of the "
            f"{len(rows)} scan(s) attempted"
        )
    return None


def _stopped(fault: OutputStorageError, result: BatchResult, n_jobs: int, table_note: str | None) -> OutputStorageError:
    """The one message of a batch stopped by a storage fault: where, why, what was kept, what the table holds."""
    done = result.n_ok + result.n_skipped
    attempted = len(result.rows)
    kept = f"{done} finished mask(s) are complete and kept" if done else "no mask was finished"
    table = table_note or f"'{result.csv_path}' lists the {attempted} scan(s) attempted"
    detail = (
        f"Batch prediction stopped at case '{result.rows[-1]['case'] if result.rows else '?'}': {kept}; "
        f"{n_jobs - attempted} scan(s) not attempted; {table}. Free space or fix the folder, then run again: "
        "finished masks are skipped"
    )
    return OutputStorageError(fault.folder, fault.reason, detail)
