"""Batch prediction over folders of scans: one mask per scan, one bad scan never stops the run.

Behaviour a night run relies on:

* **Inputs**: a folder searched recursively with ``medseg.io.find_scans`` (NIfTI/NRRD/MHA files and DICOM series
  folders), a single scan, or an explicit list of scans (what a torchrun rank gets when the list is sharded).
  A folder at the bottom of the tree that holds no scan at all (e.g. an empty or non-DICOM "series" folder left
  by a failed export) is reported as a failed case, so it does not vanish silently.
* **Names**: ``<case_id>.<output_format>`` with ``case_id`` from ``medseg.io.case_id_from_path`` (a DICOM series
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
  ``medseg.inference.qc``, empty for a checkpoint without a QC reference), rewritten atomically during the run (at most
  every few seconds) and at the end, so even a killed run leaves a readable table. Rows of skipped cases carry
  the voxel counts from the previous run's table when it has them.
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
import io as _io
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from medseg.errors import ConfigError, MedsegError, UnreadableScanError
from medseg.inference.memory import HeapTrimmer
from medseg.inference.predictor import Predictor
from medseg.inference.qc import assess
from medseg.io import case_id_from_path, find_scans, load_volume, save_mask, save_volume
from medseg.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nii.gz", "nrrd", "mha")
CSV_NAME = "predictions.csv"
BASE_COLUMNS = ("case", "input", "output", "status", "error", "seconds")
#: Quality-control columns (``medseg.inference.qc``): reasons ``;``-separated, and the score (>= 1 = flagged).
QC_COLUMNS = ("qc_flags", "qc_score")
#: Minimum seconds between rewrites of the summary table during a run (it is always written at the end).
CSV_FLUSH_SECONDS = 5.0


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
    for depth in range(1, 64):
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n.lower(), []).append(i)
        clashes = [idx for idx in groups.values() if len(idx) > 1]
        if not clashes:
            return names
        for idx in clashes:
            for i in idx:
                # absolute(), not resolve(): names come from the folders the user sees, not symlink targets.
                parents = [p.name for p in Path(os.path.abspath(scans[i])).parents][:depth][::-1]
                names[i] = "_".join([*(q for q in parents if q), base[i]])
    # Same folder, same stem, different extensions (a.nii.gz + a.nrrd): the extension tells them apart.
    groups = {}
    for i, n in enumerate(names):
        groups.setdefault(n.lower(), []).append(i)
    for idx in groups.values():
        if len(idx) > 1:
            for i in idx:
                names[i] = f"{names[i]}_{_sanitize(scans[i].name[len(base[i]) :]) or i}"
    return names


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _empty_leaf_folders(root: Path, scans: Sequence[Path], exclude: Path) -> list[Path]:
    """Bottom-level folders under ``root`` that hold no scan (likely failed or non-DICOM series exports)."""
    holding = {p.resolve() for p in scans if p.is_dir()} | {p.resolve().parent for p in scans if p.is_file()}
    found = []
    # os.walk, not rglob: a DICOM tree has thousands of files and walk lists them without a stat each.
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not _is_within(Path(dirpath, d), exclude)]
        here = Path(dirpath)
        if not dirnames and here.resolve() not in holding:
            found.append(here)
    return sorted(found)


def discover(inputs: Path | str | Sequence[Path | str], out_dir: Path, output_format: str) -> list[ScanJob]:
    """Lists the scans to predict and their output paths.

    Args:
        inputs: A folder (searched recursively), a single scan file / DICOM folder, or a list of scans.
        out_dir: Output folder; it must not lie inside an input folder.
        output_format: ``nii.gz``, ``nrrd`` or ``mha``.

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
        scans = find_scans(root) if root.is_dir() else [root]
        if root.is_dir() and scans != [root]:
            for d in _empty_leaf_folders(root, scans, out_dir):
                problems[d] = "folder holds no readable scan (no NIfTI/NRRD/MHA file and no DICOM series)"
        if not scans and (not problems or list(problems) == [root]):
            raise ConfigError(f"Input folder '{root}' holds no scans (NIfTI/NRRD/MHA files or DICOM series folders)")
    else:
        scans = [Path(p) for p in inputs]
        for p in scans:
            if p.is_dir() and _is_within(out_dir, p):
                raise ConfigError(f"Output folder '{out_dir}' lies inside the input folder '{p}'; inputs are read-only")
    all_inputs = sorted({*scans, *problems})
    ids = unique_case_ids(all_inputs)
    return [
        ScanJob(case_id=cid, input=p, output=out_dir / f"{cid}.{output_format}", problem=problems.get(p))
        for cid, p in zip(ids, all_inputs, strict=True)
    ]


def shard_jobs(jobs: Sequence[ScanJob], rank: int, world_size: int) -> list[ScanJob]:
    """This rank's share of ``jobs`` (round-robin: no job done twice, none missed, sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(jobs[rank::world_size])


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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


def _describe(err: BaseException) -> str:
    if isinstance(err, MedsegError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _run_case(
    predictor: Predictor, job: ScanJob, output_format: str, overwrite: bool, save_probabilities: bool
) -> dict[str, Any]:
    volume = load_volume(job.input)
    # predict() is predict_with_proba() too: keeping the probabilities for QC costs no extra forward pass.
    mask, probs = predictor.predict_with_proba(volume)
    if save_probabilities:
        paths = probability_paths(job.output, job.case_id, predictor.classes, output_format)
        for k, prob_path in enumerate(paths, start=1):
            if overwrite or not prob_path.exists():
                save_volume(probs[k], like=volume, path=prob_path, overwrite=overwrite)
    qc = predictor.assess_quality(volume, np.asarray(mask.array), probs)
    del probs
    if overwrite or not job.output.exists():
        save_mask(mask.array, like=volume, path=job.output, overwrite=overwrite)
    row: dict[str, Any] = {}
    for name, (voxels, ml) in predictor.class_volumes(mask.array, volume.spacing).items():
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
) -> dict[str, Any]:
    """One case's table row; never raises for a bad case (only for interrupts)."""
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
    if not overwrite and all(p.exists() for p in expected):
        row["status"] = "skipped"
        old = previous.get(str(job.output), {})
        row.update({c: old[c] for c in columns[len(BASE_COLUMNS) :] if old.get(c)})
        return row
    start = time.perf_counter()
    try:
        row.update(_run_case(predictor, job, output_format, overwrite, save_probabilities))
    except Exception as err:  # per-case isolation: record and go on (KeyboardInterrupt still stops the run)
        row.update(status="failed", error=_describe(err))
        # A traceback only for unexpected errors: a MedsegError message already says what is wrong.
        log.warning("case %s failed: %s", job.case_id, row["error"], exc_info=not isinstance(err, MedsegError))
    row["seconds"] = f"{time.perf_counter() - start:.2f}"
    return row


def predict_folder(
    predictor: Predictor,
    inputs: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    *,
    output_format: str = "nii.gz",
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    csv_name: str = CSV_NAME,
    on_flush: Callable[[], None] | None = None,
) -> BatchResult:
    """Predicts a mask for every scan under ``inputs`` and writes a summary table.

    Args:
        predictor: A loaded :class:`Predictor`.
        inputs: A folder (searched recursively), one scan, or a list of scans (files / DICOM folders).
        out_dir: Where masks, probability maps and the table go (created if needed; not inside an input folder).
        output_format: ``nii.gz`` (default), ``nrrd`` or ``mha``.
        overwrite: Recompute and replace existing outputs; otherwise finished cases are skipped.
        save_probabilities: Also write float32 per-class probability maps (see module docs for names).
        progress: Show a tqdm progress bar.
        shard: ``(rank, world_size)``: predict only this rank's share of the (full, sorted) scan list, with names
            decided on the full list so all ranks agree. Combine with a per-rank ``csv_name`` and
            :func:`merge_tables`.
        csv_name: File name of the summary table in ``out_dir``.
        on_flush: Called after each rewrite of the table during the run (e.g. to refresh ``report.html``).

    Returns:
        A :class:`BatchResult`; its ``n_failed`` / ``exit_code`` say whether any case failed.

    Raises:
        ConfigError: Missing input, bad format, output folder inside an input folder. Per-case problems never
            raise; they are recorded in the table.
    """
    out_dir = Path(out_dir)
    jobs = discover(inputs, out_dir, output_format)
    if shard is not None:
        jobs = shard_jobs(jobs, *shard)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / csv_name
    columns = column_names(predictor.classes)
    previous = _previous_rows(csv_path)
    result = BatchResult(csv_path=csv_path)
    if predictor.qc_reference is None and predictor.qc_settings.enabled:
        log.warning("QC: %s", assess({}, None).note)
    last_flush = time.monotonic()
    bar = tqdm(total=len(jobs), disable=not progress, unit="scan", desc="predict")
    # Per-case warnings go through tqdm.write while the bar is shown, so they do not break the bar's line.
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    trim = HeapTrimmer()
    try:
        with redirect:
            for job in jobs:
                bar.set_postfix_str(job.case_id[-30:], refresh=False)
                row = _process(predictor, job, output_format, overwrite, save_probabilities, previous, columns)
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
                if time.monotonic() - last_flush > CSV_FLUSH_SECONDS:
                    _write_csv(csv_path, result.rows, columns)
                    last_flush = time.monotonic()
                    if on_flush is not None:
                        on_flush()
    finally:
        # Also on Ctrl-C or a crash: the table lists what was done, and the next run resumes from the files.
        bar.close()
        _write_csv(csv_path, result.rows, columns)
    return result
