"""Stage composition for ``python -m pipelines.run``: each stage calls the library and nothing else.

=========  =====================================================================================================
stage      calls
=========  =====================================================================================================
summary    :func:`medseg.training.summary.run_summary` (layer table, parameters, memory; writes ``summary.txt``)
plan       :func:`medseg.training.check_and_plan` (reads and checks every case, writes ``plan.json``; left out when
           ``train`` runs, which does the same first)
train      :func:`medseg.training.train` (writes ``checkpoints/{best,last}.pt`` and ``train/``)
predict    :meth:`medseg.inference.Predictor.from_checkpoint` (``inference.checkpoint``, else
           ``checkpoints/best.pt``), then :func:`medseg.inference.batch.predict_folder` over ``inference.input``,
           or, when that is ``None``, over the image files of the validation cases of ``data`` (the same split the
           trainer used: :func:`medseg.data.splits.split_for`: the same seed, fold and groups)
evaluate   :func:`medseg.evaluation.match_predictions` against ``evaluation.ground_truth``, or the labels of the
           predicted cases of ``data``; then :func:`medseg.evaluation.evaluate` (images are the overlay background)
=========  =====================================================================================================

Everything a run writes lives under ``output.dir`` (see :class:`RunLayout`). :func:`check_setup` finds the
configuration mistakes that can be found before any work starts (missing folders, labels that do not pair with
images, no checkpoint) and raises :class:`~medseg.errors.ConfigError` naming the key to fix.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.config import Config, Stage, save_config
from medseg.errors import ConfigError, MedsegError
from medseg.logfile import SafeFileHandler

if TYPE_CHECKING:
    from medseg.data.cases import Case, DatasetSpec
    from medseg.data.label_reading import LabelReading

log = logging.getLogger(__name__)

#: Stages in the order they always run (``--stage predict train`` still trains first).
STAGE_ORDER: tuple[Stage, ...] = ("summary", "plan", "train", "predict", "evaluate")


@dataclass(frozen=True)
class RunLayout:
    """Where a run writes each of its outputs, all under ``root`` (= ``output.dir``)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: ``best.pt`` (best validation Dice) and ``last.pt`` (for ``training.resume``)."""
        return self.root / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def train(self) -> Path:
        """``train/``: ``metrics.csv`` (one row per epoch) and ``curves.png``."""
        return self.root / "train"

    @property
    def predictions(self) -> Path:
        """``predictions/``: ``<case_id>.nii.gz`` masks and ``predictions.csv`` (one row per scan)."""
        return self.root / "predictions"

    @property
    def predictions_csv(self) -> Path:
        return self.predictions / "predictions.csv"

    @property
    def evaluation(self) -> Path:
        """``evaluation/``: ``metrics.csv``, ``summary.json`` and PNG overlays."""
        return self.root / "evaluation"

    @property
    def resolved_config(self) -> Path:
        """``config.resolved.yaml``: the config as run (defaults filled in, paths absolute, overrides applied)."""
        return self.root / "config.resolved.yaml"

    @property
    def log_file(self) -> Path:
        """``medseg.log``: the run's log, appended to by every run in this folder."""
        return self.root / "medseg.log"


@dataclass
class RunResult:
    """What a run did: per stage, the library's result; and how many scans failed to predict."""

    stages: list[Stage] = field(default_factory=list)
    summary: Any = None
    plan: Any = None
    train: Any = None
    predict: Any = None
    evaluate: dict[str, Any] | None = None
    failed_predictions: int = 0
    failed_evaluations: int = 0


def order_stages(stages: Sequence[str]) -> list[Stage]:
    """Deduplicates and orders stages as summary -> plan -> train -> predict -> evaluate (``plan`` left out
    when ``train`` runs: training plans first).

    Raises:
        ConfigError: If no stage is given or one is unknown.
    """
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"Unknown stage(s) {unknown}; accepted stages: {', '.join(STAGE_ORDER)}")
    ordered = [s for s in STAGE_ORDER if s in stages]
    if "plan" in ordered and "train" in ordered:
        ordered.remove("plan")  # the train stage reads, checks and plans first: the same work, not done twice
    if not ordered:
        raise ConfigError(f"No stage to run: 'stages' is empty; accepted stages: {', '.join(STAGE_ORDER)}")
    return ordered


# --------------------------------------------------------------------------------------------------- setup checks


def _why_data(cfg: Config, stages: Sequence[Stage]) -> str | None:
    """Why the stages read ``data.root`` (for error messages), or ``None`` when they do not."""
    if "train" in stages or "plan" in stages:
        return f"the {'train' if 'train' in stages else 'plan'} stage reads the cases of the dataset"
    if "predict" in stages and cfg.inference.input is None:
        return "without inference.input (--input FOLDER), predict segments the validation cases of data.root"
    if "evaluate" in stages and cfg.evaluation.ground_truth is None:
        return "without evaluation.ground_truth, evaluate compares with the labels in data.root"
    return None


def _require_dir(path: Path | None, key: str, why: str) -> Path:
    if path is None:
        raise ConfigError(f"'{key}' is not set, but {why}. Set it in the config file or pass --set {key}=FOLDER.")
    if not path.exists():
        raise ConfigError(
            f"'{key}' points to '{path}', which does not exist ({why}). Relative paths in a config file are "
            f"relative to the config file's folder; fix '{key}' in the config or pass --set {key}=FOLDER."
        )
    if not path.is_dir():
        raise ConfigError(f"'{key}' points to '{path}', which is a file, not a folder ({why}).")
    return path


def _label_source(cfg: Config) -> tuple[str, str]:
    """Where a layout looks for labels, and how to make it find them (for the pairing error)."""
    root, layout = cfg.data.root, cfg.data.layout
    if layout == "auto":
        layout = "msd" if root is not None and (root / "dataset.json").is_file() else "glob"
    if layout == "msd":
        listed = root is not None and _lists_training(root)
        where = f"'{root}/labelsTr'" + (" (as listed in dataset.json)" if listed else "")
        return where, "add the missing label files, or fix the 'training' list of dataset.json" if listed else (
            "add the missing labelsTr/<case><file_ending> files"
        )
    if layout == "dicom":
        return f"the case folders (data.dicom_mask_pattern '{cfg.data.dicom_mask_pattern}')", (
            "fix data.dicom_mask_pattern"
        )
    if layout == "folders":
        return f"the case folders (data.label_pattern '{cfg.data.label_pattern}')", "fix data.label_pattern"
    return f"'{root}' with data.label_glob '{cfg.data.label_glob}'", "fix data.label_glob / data.case_pattern"


def _lists_training(root: Path) -> bool:
    """Whether ``root/dataset.json`` lists its training cases (MSD, nnU-Net v1) or leaves them to file names
    (nnU-Net v2)."""
    from medseg.data.cases import read_dataset_json

    try:
        return isinstance(read_dataset_json(root).get("training"), list)
    except ConfigError:
        return False


def _id_list(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    # Setup checks run before the run's logging exists: per-file warnings from discovery would reach the console
    # as unformatted lines ahead of the one-paragraph error. The stages repeat discovery with logging on.
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def discover_labelled_cases(
    cfg: Config, *, quiet: bool = False, why: str = "the stages to run read the cases of the dataset"
) -> tuple[list[Case], DatasetSpec]:
    """The cases of ``data`` and what discovery found (class names, stored label values); every case must have
    a label.

    Args:
        cfg: The run's config.
        quiet: Silence discovery's per-file warnings (used before logging is set up).
        why: What needs the data, for the message when ``data.root`` is missing.

    Returns:
        ``(cases, spec)``: the labelled cases and the :class:`DatasetSpec` (``spec.classes`` include background).
        With ``data.skip_bad_cases``, cases without a label are left out; otherwise there are none.

    Raises:
        ConfigError: ``data.root`` is missing, no case is found, or images do not pair with labels.
    """
    from medseg.data.cases import discover_cases

    root = _require_dir(cfg.data.root, "data.root", why)
    with _quiet("medseg.data") if quiet else nullcontext():
        spec = discover_cases(cfg.data, require_labels=False)
    unlabelled = [c.id for c in spec.cases if c.label is None]
    if unlabelled and (not cfg.data.skip_bad_cases or len(unlabelled) == len(spec.cases)):
        where, fix = _label_source(cfg)
        skip = "." if cfg.data.skip_bad_cases else ", or set data.skip_bad_cases: true to train without them."
        if spec.layout in ("folders", "dicom"):
            # One folder per case: the label is looked for inside it, so show what the first such folder holds.
            first = next(c for c in spec.cases if c.label is None)
            folder = first.image.parent
            held = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
            raise ConfigError(
                f"{len(unlabelled)} of {len(spec.cases)} case folders under '{root}' have no label in {where} "
                f"(e.g. {_id_list(unlabelled)}; '{folder.name}' holds {', '.join(held[:8])}"
                f"{', ...' if len(held) > 8 else ''}): {fix}, or add the missing label files{skip}"
            )
        raise ConfigError(
            f"The label folder does not match the images: {len(unlabelled)} of {len(spec.cases)} images under "
            f"'{root}' have no label with the same case id in {where} (e.g. {_id_list(unlabelled)}). "
            "Labels pair with images by case id (the file name without extension and without a _0000 channel "
            f"suffix): rename the files, or {fix}{skip}"
        )
    return [c for c in spec.cases if c.label is not None], spec


def check_setup(cfg: Config, stages: Sequence[Stage]) -> None:
    """Finds configuration mistakes before any work starts.

    Checks that each folder the stages read exists, that the data's images and labels pair up, and that
    ``predict`` has a checkpoint and ``evaluate`` predictions (unless an earlier stage in this run makes them).

    Raises:
        ConfigError: Naming the config key to fix and the path it points to.
    """
    layout = RunLayout(cfg.output.dir)
    if cfg.output.dir.exists() and not cfg.output.dir.is_dir():
        raise ConfigError(f"'output.dir' points to '{cfg.output.dir}', which is a file, not a folder.")
    why = _why_data(cfg, stages)
    if why is not None:
        spec = discover_labelled_cases(cfg, quiet=True, why=why)[1]
        if spec.regions is not None:
            _check_region_settings(cfg, stages)
    if "predict" in stages:
        if cfg.inference.input is not None:
            path = cfg.inference.input
            if not path.exists():
                raise ConfigError(
                    f"'inference.input' (--input) points to '{path}', which does not exist; give a folder of "
                    "scans (NIfTI/NRRD/MHA files or DICOM series folders) or a single scan."
                )
        ckpt = cfg.inference.checkpoint
        if ckpt is not None and not ckpt.is_file():
            raise ConfigError(f"'inference.checkpoint' (--checkpoint) points to '{ckpt}', which is not a file.")
        if ckpt is None and "train" not in stages and not layout.best_checkpoint.is_file():
            raise ConfigError(
                f"The predict stage needs a checkpoint, but '{layout.best_checkpoint}' does not exist: run the "
                "train stage first (same output.dir) or pass --checkpoint FILE (inference.checkpoint)."
            )
    if "evaluate" in stages:
        if cfg.evaluation.ground_truth is not None:
            _require_dir(cfg.evaluation.ground_truth, "evaluation.ground_truth", "the evaluate stage reads it")
        if "predict" not in stages and not layout.predictions_csv.is_file():
            raise ConfigError(
                f"The evaluate stage scores the masks listed in '{layout.predictions_csv}', which does not exist: "
                "run the predict stage first (same output.dir)."
            )


def _check_region_settings(cfg: Config, stages: Sequence[Stage]) -> None:
    # What a region model refuses at prediction, refused before training spends its time.
    from medseg.inference.batch import region_output_problem

    problem = region_output_problem(cfg.inference.output_format) if "predict" in stages else None
    if problem:
        raise ConfigError(problem)


# --------------------------------------------------------------------------------------------------------- logging


@contextmanager
def run_logging(log_file: Path | None, *, verbose: bool = False, rank: int | None = None) -> Iterator[None]:
    """Sends the ``medseg`` and ``pipelines`` loggers to the console (stderr) and, if given, appends to ``log_file``.

    Python warnings are captured into the log as well. Handlers are removed on exit, so calling a run twice in
    one process (tests, notebooks) does not duplicate lines.

    Args:
        log_file: File to append to (``None``: console only; what ranks other than 0 get under torchrun).
        verbose: Also show debug messages on the console.
        rank: Under torchrun, this process's rank: console lines are prefixed ``[rank N]`` and ranks other than 0
            only show warnings and errors (rank 0 reports progress once for the whole job).
    """
    loggers = [logging.getLogger("medseg"), logging.getLogger("pipelines"), logging.getLogger("py.warnings")]
    console = logging.StreamHandler()
    tag = "" if rank is None else f"[rank {rank}] "
    console.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(message)s", "%H:%M:%S"))
    console.setLevel(logging.DEBUG if verbose else logging.INFO if not rank else logging.WARNING)
    # Records marked ``extra={"file_only": True}`` (an error the caller prints itself) skip the console.
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = SafeFileHandler(log_file, encoding="utf-8")  # a full disk: one line, not a traceback per record
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        to_file.setLevel(logging.DEBUG)
        handlers.append(to_file)
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.propagate = False  # the run's handlers are the only ones: no duplicate lines through the root logger
        for h in handlers:
            lg.addHandler(h)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for lg, level, propagate in saved:
            for h in handlers:
                lg.removeHandler(h)
            lg.setLevel(level)
            lg.propagate = propagate
        for h in handlers:
            h.close()


# ---------------------------------------------------------------------------------------------------------- stages


def validation_cases(cfg: Config) -> list[Case]:
    """The validation cases of ``data``, recomputed exactly as the trainer splits them (same seed and fold).

    As in the trainer, ``data.val_fraction: 0`` (no folds) validates on the training cases.
    """
    from medseg.data.splits import split_for

    cases, _ = discover_labelled_cases(cfg)
    train, val = split_for(cases, cfg.data)
    if not val:
        why = "data.val_fraction is 0" if cfg.data.val_fraction == 0 else f"{len(train)} case(s): none held out"
        log.warning("%s: predicting the training cases (their Dice is not a held-out estimate)", why)
        return list(train)
    return list(val)


def run_plan(cfg: Config) -> Any:
    """The ``plan`` stage: :func:`medseg.training.check_and_plan`; returns its ``PlanResult``."""
    from medseg.training import check_and_plan

    return check_and_plan(cfg)


def run_train(cfg: Config) -> Any:
    """The ``train`` stage: :func:`medseg.training.train`; returns its ``TrainResult``."""
    from medseg.training import train

    return train(cfg)


def run_predict(cfg: Config, val_cases: Sequence[Case] | None = None, *, retrained: bool = False) -> Any:
    """The ``predict`` stage: masks for ``inference.input``, or for the validation cases, in ``predictions/``.

    Args:
        cfg: The run's config.
        val_cases: The validation cases when the train stage ran in this process (its authoritative split);
            ``None`` recomputes them with :func:`validation_cases`.
        retrained: The train stage ran in this process, so masks already in ``predictions/`` came from another
            model: they are replaced even without ``inference.overwrite`` (so are masks older than the
            checkpoint file). Otherwise finished masks are kept and only missing ones are predicted (resume).

    Returns:
        The batch predictor's :class:`~medseg.inference.batch.BatchResult` (``n_failed`` counts scans that could
        not be predicted; each is a ``failed`` row in ``predictions.csv``).
    """
    import sys

    from medseg.evaluation.html_report import ReportUpdater
    from medseg.inference import Predictor
    from medseg.inference.batch import predict_folder
    from medseg.inference.dicom_output import dicom_write_options
    from medseg.training.distributed import get_rank, get_world_size

    layout = RunLayout(cfg.output.dir)
    rank, world_size = get_rank(), get_world_size()
    inf = cfg.inference
    checkpoint = inf.checkpoint or layout.best_checkpoint
    predictor = Predictor.from_config(checkpoint, inf)
    if inf.input is not None:
        inputs: Path | dict[str, Path] = inf.input
        log.info("Predicting the scans in '%s' with '%s'", inputs, checkpoint)
    else:
        cases = list(val_cases) if val_cases is not None else validation_cases(cfg)
        if not cases:
            raise ConfigError(
                "The predict stage has no scans: inference.input is not set and data has no validation cases "
                f"(data.val_fraction = {cfg.data.val_fraction}); set inference.input (--input FOLDER)."
            )
        # Each mask is named by its case id, so the evaluate stage pairs it with its label whatever the layout
        # (a DICOM case is a folder of series, named after the case folder, not the image series). Cases stored
        # as one folder per case (layout folders) are predicted from their folder.
        inputs = {c.id: c.image.parent if c.channel_files and cfg.data.layout == "folders" else c.image for c in cases}
        log.info("Predicting the %d validation case(s) of '%s' with '%s'", len(inputs), cfg.data.root, checkpoint)
    # Masks already in the folder were made by another model if training ran since they were written; keeping
    # them (the resume behaviour of predict_folder) would mix two models' masks in one table.
    table = layout.predictions_csv
    retrained = retrained or (table.is_file() and Path(checkpoint).stat().st_mtime > table.stat().st_mtime)
    if retrained and not inf.overwrite and _has_masks(layout.predictions, inf.output_format):
        log.info("Masks already in '%s' are replaced: the checkpoint is newer than them", layout.predictions)
    # Under torchrun each rank predicts its round-robin share of the full sorted scan list (names are decided on
    # the full list, so ranks agree) and writes its own table; rank 0 merges them after a barrier.
    sharded = world_size > 1
    result = predict_folder(
        predictor,
        inputs,
        layout.predictions,
        output_format=inf.output_format,
        overwrite=inf.overwrite or retrained,
        save_probabilities=inf.save_probabilities,
        progress=sys.stderr.isatty() and rank == 0,
        shard=(rank, world_size) if sharded else None,
        csv_name=_rank_table_name(rank, world_size) if sharded else layout.predictions_csv.name,
        dicom=dicom_write_options(cfg, checkpoint),
        also_nifti=inf.also_nifti,
        on_flush=None if sharded else ReportUpdater(layout.root),
    )
    if sharded:
        result = _merge_rank_tables(layout, result, world_size)
    log.info(
        "Predicted %d scan(s), skipped %d already done, %d failed; table in '%s'",
        result.n_ok,
        result.n_skipped,
        result.n_failed,
        result.csv_path,
    )
    for row in result.rows:
        if row.get("status") == "failed":
            log.error("Scan '%s' not predicted: %s", row.get("input"), row.get("error"))
    return result


def _has_masks(folder: Path, output_format: str) -> bool:
    # Only worth saying "replaced" when there is something to replace (a fresh run has an empty folder).
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.glob(f"*.{output_format}"))


def _rank_table_name(rank: int, world_size: int) -> str:
    return f".predictions.rank{rank}-of-{world_size}.csv"


def _merge_rank_tables(layout: RunLayout, result: Any, world_size: int) -> Any:
    """After every rank predicted its share: rank 0 merges the per-rank tables into ``predictions.csv``.

    Every rank returns a result whose ``n_ok``/``n_skipped``/``n_failed`` count the whole job (summed over
    ranks), so every rank ends with the same exit status.
    """
    from medseg.inference.batch import merge_tables
    from medseg.training.distributed import all_reduce_sum, barrier, get_rank

    barrier()  # every rank's table is complete
    if get_rank() == 0:
        parts = [layout.predictions / _rank_table_name(r, world_size) for r in range(world_size)]
        merge_tables(parts, layout.predictions_csv)
        for part in parts:
            part.unlink(missing_ok=True)
    barrier()  # nobody reads predictions.csv (evaluate) before it is merged
    result.n_ok, result.n_skipped, result.n_failed = (
        all_reduce_sum(result.n_ok),
        all_reduce_sum(result.n_skipped),
        all_reduce_sum(result.n_failed),
    )
    result.csv_path = layout.predictions_csv
    return result


def _predicted_masks(layout: RunLayout) -> dict[str, tuple[Path, Path | None]]:
    """Case id -> (mask, input scan) from ``predictions.csv``: the masks of the last predict run, no stale files.

    A mask is the file of that name in this run's ``predictions/`` (the batch predictor writes them there, flat):
    ``predictions.csv`` records absolute paths, which in a copied or moved run folder name the original's masks.
    """
    if not layout.predictions_csv.is_file():
        raise MedsegError(f"'{layout.predictions_csv}' does not exist: run the predict stage first (same output.dir).")
    with layout.predictions_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, tuple[Path, Path | None]] = {}
    for row in rows:
        if row.get("status") in ("ok", "skipped") and row.get("case") and row.get("output"):
            scan = row.get("input")
            out[row["case"]] = (layout.predictions / Path(row["output"]).name, Path(scan) if scan else None)
    return out


def _overlay_scan(scan: Path | None, cfg: Config) -> Path | None:
    """The file to draw a case's overlay on: the predicted input, or for a folders-layout case folder its first
    channel's file (a DICOM series folder is a scan itself)."""
    from medseg.data.cases import is_dicom_folder
    from medseg.io.channels import match_channel_files

    if scan is None or not scan.is_dir() or not cfg.data.channel_patterns or is_dicom_folder(scan):
        return scan
    try:
        return match_channel_files(scan, cfg.data.channel_patterns[:1], exclude=[cfg.data.label_pattern])[0]
    except MedsegError:
        return scan  # the overlay says why it is drawn on the labels


def evaluation_pairs(cfg: Config) -> tuple[list[Any], list[str], LabelReading]:
    """The (case, prediction, ground truth, image) pairs to score, the class names, and how the mask files are
    read (``LabelReading``: the value each class is stored as, the value of unannotated voxels, the regions).

    The predictions are the masks listed in ``predictions/predictions.csv`` (so stale files and probability maps
    in the folder are not scored). With ``evaluation.ground_truth`` they are matched to its files by case id;
    otherwise to the labels of the cases of ``data`` with the same id.
    """
    from medseg.data.label_reading import LabelReading
    from medseg.evaluation import EvalPair, match_predictions

    layout = RunLayout(cfg.output.dir)
    masks = _predicted_masks(layout)
    if cfg.evaluation.ground_truth is not None:
        pairs = [
            p._replace(image=p.image or _overlay_scan(masks[p.case_id][1], cfg))
            for p in match_predictions(layout.predictions, cfg.evaluation.ground_truth)
            if p.case_id in masks and p.pred.resolve() == masks[p.case_id][0].resolve()
        ]
        return pairs, *_classes_for_evaluation(cfg)
    cases, spec = discover_labelled_cases(cfg)
    by_id = {c.id: c for c in cases}
    pairs = []
    for cid, (mask, _scan) in sorted(masks.items()):
        case = by_id.get(cid)
        if case is None or case.label is None:
            log.warning(
                "Mask '%s' has no labelled case '%s' in data.root '%s'; not evaluated", mask, cid, cfg.data.root
            )
            continue
        # The case's own image under its label (a folders-layout prediction input is the case folder, not a scan).
        pairs.append(EvalPair(cid, mask, case.label, case.image))
    reading = LabelReading.of(cfg.data, spec.label_values, spec.ignore_label, spec.regions)
    return pairs, list(spec.classes), reading


def _classes_for_evaluation(cfg: Config) -> tuple[list[str], LabelReading]:
    # Class names (and the values they and unannotated voxels are stored as, and the regions they are) come from
    # the model that made the predictions; failing that, from the config or the data.
    from medseg.data.label_reading import LabelReading
    from medseg.data.regions import Regions
    from medseg.training.checkpoint import load_checkpoint

    ckpt = cfg.inference.checkpoint or RunLayout(cfg.output.dir).best_checkpoint
    if ckpt.is_file():
        stored = load_checkpoint(ckpt)
        ignore = cfg.data.ignore_label if cfg.data.ignore_label is not None else stored.get("ignore_label")
        regions = Regions.from_stored(stored.get("regions"))
        reading = LabelReading.of(cfg.data, stored.get("label_values"), ignore, regions)
        return list(stored["classes"]), reading
    if cfg.data.regions is not None:
        regions = Regions.of(cfg.data.regions, cfg.data.regions_class_order or [])
        return regions.classes, LabelReading.of(cfg.data, regions.label_values, None, regions)
    if cfg.data.classes:
        return list(cfg.data.classes), LabelReading.of(cfg.data, cfg.data.label_values, cfg.data.ignore_label)
    if cfg.data.root is not None and cfg.data.root.is_dir():
        spec = discover_labelled_cases(cfg)[1]
        return list(spec.classes), LabelReading.of(cfg.data, spec.label_values, spec.ignore_label, spec.regions)
    raise ConfigError(
        "The evaluate stage needs the class names: set data.classes (background first) or data.regions, or keep the "
        "checkpoint (inference.checkpoint) that made the predictions."
    )


def run_evaluate(cfg: Config) -> dict[str, Any]:
    """The ``evaluate`` stage: scores ``predictions/`` and writes ``evaluation/``; returns the summary."""
    from medseg.evaluation import evaluate

    layout = RunLayout(cfg.output.dir)
    pairs, classes, reading = evaluation_pairs(cfg)
    if not pairs:
        where = (
            f"evaluation.ground_truth '{cfg.evaluation.ground_truth}' (a flat folder of masks named <case id> plus a "
            "scan ending, not searched recursively)"
            if cfg.evaluation.ground_truth is not None
            else f"the labelled cases of data.root '{cfg.data.root}' (read in data.layout '{cfg.data.layout}')"
        )
        other = (
            "or point data.root at the labelled test set (read in the data.layout the model was trained with) and "
            "leave evaluation.ground_truth unset"
            if cfg.evaluation.ground_truth is not None
            else "or set evaluation.ground_truth to a flat folder of masks named by case id"
        )
        masks = sorted(p.name for p in layout.predictions.iterdir() if p.is_file() and not p.name.endswith(".csv"))
        raise MedsegError(
            f"Nothing to evaluate: no mask in '{layout.predictions}' ({', '.join(masks[:3]) or 'none'}"
            f"{', ...' if len(masks) > 3 else ''}) has a ground truth with the same case id in {where}; rename the "
            f"ground-truth files after the masks' case ids, {other}."
        )
    log.info("Evaluating %d case(s) against %s", len(pairs), cfg.evaluation.ground_truth or "the data's labels")
    summary = evaluate(
        pairs,
        classes,
        layout.evaluation,
        overlays=cfg.evaluation.overlays,
        labels=reading,
        skip_both_empty=cfg.evaluation.both_empty == "skip",
        nsd_tolerance_mm=cfg.evaluation.surface_tolerance_mm,
    )
    if summary.get("n_failed") and not summary.get("n_evaluated"):
        log.warning(
            "None of the %d case(s) could be evaluated; the first: %s",
            summary["n_failed"],
            summary["failed_cases"][0]["error"] if summary.get("failed_cases") else "see metrics.csv",
        )
    mean = summary.get("mean_dice")
    log.info(
        "Mean Dice %s over %d case(s)%s; details in '%s'",
        f"{mean:.3f}" if mean is not None else "n/a",
        summary["n_in_mean_dice"],
        "" if cfg.evaluation.both_empty == "one" else " (classes absent from both masks left out)",
        layout.evaluation,
    )
    return summary


def prepare_output(cfg: Config, stages: Sequence[Stage], *, source: str | Path | None = None) -> RunLayout:
    """Creates ``output.dir`` and writes ``config.resolved.yaml`` (the config exactly as run)."""
    layout = RunLayout(cfg.output.dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_copy(update={"stages": list(stages)})
    note = "The configuration as run: defaults filled in, --set overrides applied, paths absolute."
    if source is not None:
        note += f"\nFrom: {source}"
    save_config(resolved, layout.resolved_config, comment=note)
    return layout


def run_stages(cfg: Config, stages: Sequence[Stage]) -> RunResult:
    """Runs the stages in order (train -> predict -> evaluate); see the module docstring for what each calls.

    Under torchrun (a process group initialised by the caller, see ``pipelines.run``) every rank calls this:
    ``train`` runs DistributedDataParallel (rank 0 writes), ``predict`` shards the scans over ranks and rank 0
    merges the tables, ``evaluate`` runs on rank 0 only.
    """
    from medseg.evaluation.html_report import command_line, record_stage, write_report
    from medseg.io.read_options import ReadOptions, set_read_options
    from medseg.training.distributed import barrier, is_main_process

    # data.channel / data.series / data.nan_as_zero: how every stage reads every scan.
    set_read_options(ReadOptions(channel=cfg.data.channel, series=cfg.data.series, nan_as_zero=cfg.data.nan_as_zero))
    result = RunResult(stages=order_stages(stages))
    val_cases = None
    for stage in result.stages:
        start = time.perf_counter()
        log.info("== stage %s", stage)
        if stage == "summary":
            from medseg.training.summary import run_summary

            result.summary = run_summary(cfg) if is_main_process() else None
        elif stage == "plan":
            result.plan = run_plan(cfg)
        elif stage == "train":
            result.train = run_train(cfg)
            val_cases = getattr(result.train, "val_cases", None)
        elif stage == "predict":
            retrained = result.train is not None
            result.predict = run_predict(cfg, val_cases if cfg.inference.input is None else None, retrained=retrained)
            result.failed_predictions = int(getattr(result.predict, "n_failed", 0))
        elif is_main_process():
            result.evaluate = run_evaluate(cfg)  # cheap, and it writes files: rank 0 only under torchrun
            result.failed_evaluations = int(result.evaluate.get("n_failed", 0))
        log.info("== stage %s done in %.1f s", stage, time.perf_counter() - start)
        if is_main_process():  # report.html grows stage by stage (medseg.evaluation.html_report)
            record_stage(cfg.output.dir, stage, time.perf_counter() - start, command=command_line())
            log.info("Report: '%s'", write_report(cfg.output.dir))
        barrier()  # under torchrun: no rank starts the next stage (or exits) before the others finish this one
    return result
