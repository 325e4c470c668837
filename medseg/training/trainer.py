"""The trainer: data, model, loop, validation on volumes, checkpoints, resume.

``train(cfg)`` runs one training job described by a :class:`medseg.config.Config`:

1. Discover the cases, split them by case (``data.val_fraction`` with ``data.seed``, or k-fold), read every file
   once, normalise (fitted on the training cases), cut slices along one axis (``medseg.data.prepare``).
2. Class weights (``loss.class_weights``: auto / none / explicit), logged and stored in the checkpoint.
3. The network of ``model`` (``medseg.models.build_model``: ``2k+1`` channels, ``n_outputs``) with its output bias
   set to the class prior (``medseg.training.init``), AdamW, a progress-driven LR schedule
   (``medseg.training.schedule``), bf16/fp16 autocast and ``channels_last`` where they pay off
   (``medseg.inference.precision``).
4. Epochs of foreground-oversampled, augmented batches; every ``val_every`` epochs (and after the last)
   the validation volumes are predicted slice by slice and scored with Dice per class per case. The best mean
   Dice is ``checkpoints/best.pt``; ``checkpoints/last.pt`` is written after every epoch.
5. After the last epoch the best weights decide the postprocessing (largest component / hole filling per
   class, kept where it raised validation Dice), stored in ``best.pt``.

Budget: ``training.epochs`` and, optionally, ``training.max_minutes`` (training-loop wall clock including
validation, data preparation excluded): the budget is checked before every optimiser step, so a run stops at
the batch that crosses it (that partial epoch counts as an epoch, and the final validation follows), and the LR
schedule anneals over whichever runs out first.

Resume (``training.resume: true``, ``medseg.training.resume``) continues from ``last.pt``: weights, optimiser,
schedule, scaler, RNG states, epoch, elapsed time, early-stopping counter and history are restored, and the
augmentation of each sample is a function of (seed, epoch, position) (``medseg.training.loader``), so a
killed-and-resumed deterministic run ends with the same weights as an uninterrupted one. A finished run resumed with
a larger ``epochs`` is extended: the schedule is re-planned for the new total (see ``medseg.training.schedule``) and
an early stop is lifted.

With ``data.val_fraction: 0`` (and no folds) there is no held-out case: validation runs on the training cases
(useful for overfitting checks; a warning says so).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medseg.allocator import keep_freed_buffers
from medseg.class_display import class_weights_text, per_class_text
from medseg.config import Config
from medseg.data.cases import Case, SkippedCase, discover_cases
from medseg.data.class_weights import resolve_class_weights
from medseg.data.dataset import SliceDataset
from medseg.data.foreground import check_foreground
from medseg.data.label_reading import LabelReading
from medseg.data.memory import choose_cache_dir
from medseg.data.modality import dataset_modality
from medseg.data.plan import Plan, label_plan, write_plan
from medseg.data.prepare import PreparedData, Reader, default_reader, prepare_training_data
from medseg.data.sampling import foreground_sampler
from medseg.data.splits import split_for
from medseg.data.transforms import train_transforms
from medseg.errors import CheckpointError, ConfigError
from medseg.inference.budget import available_memory_bytes
from medseg.inference.postprocess import decide_postprocessing
from medseg.inference.precision import (
    autocast,
    needs_grad_scaler,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
)
from medseg.inference.settings import InferenceSettings
from medseg.io.atomic import remove_stale_temp_files
from medseg.losses import SegLoss
from medseg.models import NetworkSpec, SegmentationNet, build_model, n_outputs, resolve_mode, spec_from_config
from medseg.models.checkpoint import CHECKPOINT_FORMAT, library_versions, load_checkpoint, save_checkpoint
from medseg.training.distributed import (
    all_ranks,
    all_reduce_mean,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    unwrap_model,
    wrap_model,
)
from medseg.training.history import TrainingLog, seconds_left
from medseg.training.init import init_output_bias
from medseg.training.loader import SeededSampler, build_train_loader
from medseg.training.qc_reference import RecordingReader, qc_reference, validation_outputs
from medseg.training.resume import (
    RESUME_MUST_MATCH,
    capture_rng_state,
    load_resume_checkpoint,
    restore_rng_state,
)
from medseg.training.runtime import resolve_num_workers, seed_everything, set_deterministic
from medseg.training.schedule import LRSchedule
from medseg.training.validation import ValidationResult, validate_volumes
from medseg.training.validation_schedule import ValidationSchedule

log = logging.getLogger(__name__)

_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

__all__ = ["RESUME_MUST_MATCH", "TrainResult", "Trainer", "train"]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        best: ``checkpoints/best.pt`` (best mean validation Dice; holds the postprocessing decision).
        last: ``checkpoints/last.pt`` (the state after the last finished epoch; resume continues from it).
        val_cases: The validation cases (the training cases when ``data.val_fraction`` is 0).
        classes: Class names, background first.
        history: One dict per epoch (the rows of ``train/metrics.csv``).
        best_dice: Best mean validation Dice (over cases and foreground classes).
        best_epoch: The epoch (1-based) of ``best_dice``.
        epochs: Epochs finished in total (including earlier sessions of a resumed run).
        stop_reason: ``epochs``, ``max_minutes``, ``early_stopping`` or ``interrupted``.
        postprocessing: ``{"largest_component": [class idx], "fill_holes": [class idx]}`` decided on validation.
    """

    best: Path
    last: Path
    val_cases: list[Case]
    classes: list[str]
    history: list[dict[str, Any]]
    best_dice: float
    best_epoch: int
    epochs: int
    stop_reason: str
    postprocessing: dict[str, list[int]] = field(default_factory=lambda: {"largest_component": [], "fill_holes": []})


@dataclass
class PlanResult:
    """What the ``plan`` stage found (:func:`check_and_plan`).

    Attributes:
        plan: The plan, as written to ``plan.json``.
        classes: Class names, background first.
        train_cases: The training cases, every one read and checked.
        val_cases: The validation cases, read and checked too.
        skipped: Cases left out with ``data.skip_bad_cases`` (in discovery or on reading), with the reason.
    """

    plan: Plan
    classes: list[str]
    train_cases: list[Case]
    val_cases: list[Case]
    skipped: list[SkippedCase]


def check_and_plan(cfg: Config, *, reader: Reader | None = None) -> PlanResult:
    """The ``plan`` stage: everything the train stage does before its first step, and nothing after.

    Discovers the cases, splits them, reads every case (images, labels, channels: each on its own grid, each
    label's values or segment names checked, as training reads them), fits the normalisation and decides the plan;
    writes ``plan.json`` and logs the plan. A data set's problems and the plan in minutes, before a long run.
    No model is built and nothing of a training run is written.

    Raises:
        ConfigError, BadCaseError, EmptyLabelsError: As :func:`train` raises them before training.
    """
    trainer = Trainer(cfg, reader=reader, plan_only=True)
    result = PlanResult(
        plan=trainer.plan,
        classes=trainer.classes,
        train_cases=trainer.train_cases,
        val_cases=trainer.val_cases,
        skipped=trainer.skipped,
    )
    log.info(
        "Plan stage: %d training and %d validation case(s) read and checked%s; plan in '%s'",
        len(result.train_cases),
        len(result.val_cases),
        f", {len(result.skipped)} skipped ({', '.join(s.id for s in result.skipped)})" if result.skipped else "",
        Path(cfg.output.dir) / "plan.json",
    )
    return result


def train(
    cfg: Config,
    *,
    stop_after_epoch: int | None = None,
    reader: Reader | None = None,
    clock: Callable[[], float] | None = None,
) -> TrainResult:
    """Trains a UNet as ``cfg`` describes and writes checkpoints, ``metrics.csv`` and ``curves.png``.

    Args:
        cfg: The validated config (``data``, ``preprocessing``, ``augmentation``, ``model``, ``loss``,
            ``training``, ``output.dir``).
        stop_after_epoch: Stop after this epoch as if the process were killed there (no final validation, no
            postprocessing decision); the schedule stays planned for ``training.epochs``. For tests of resume
            and for splitting a long run over several sessions.
        reader: Scan reader (``medseg.io.load_volume`` by default).
        clock: The clock ``training.max_minutes`` is measured on (seconds, monotonic; ``time.perf_counter``
            by default). Tests pass a clock they advance per step, so budget tests do not depend on speed.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: Inconsistent options (e.g. no training case).
        CheckpointError: ``resume`` with a checkpoint that does not fit the config.
        BadCaseError: A case fails its checks (unless ``data.skip_bad_cases``).
        EmptyLabelsError: Every training label is empty (background only).
        OutputStorageError: A checkpoint cannot be saved (disk full or read-only); the earlier ones are intact.
    """
    return Trainer(cfg, reader=reader, clock=clock).fit(stop_after_epoch=stop_after_epoch)


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.5 h``: a duration as a person reads it in a log line."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _no_validation_reason(val_fraction: float, n_train: int, held_out: bool = False) -> str:
    # Why no case was held out: the setting, a dataset too small to spare one, or held-out labels with no
    # annotated voxel.
    if held_out:
        return "the held-out cases annotate no voxel"
    if val_fraction == 0:
        return "data.val_fraction is 0"
    return f"with {n_train} case(s) none can be held out for validation (data.val_fraction {val_fraction:g})"


def _empty_plan() -> dict[str, list[int]]:
    return {"largest_component": [], "fill_holes": []}


class Trainer:
    """One training run; ``fit`` does the work. See the module docstring.

    The builders :meth:`build_model`, :meth:`build_loss`, :meth:`build_optimizer` and :meth:`build_scheduler`
    are the hooks for an experiment: subclass, override one, and call ``MyTrainer(cfg).fit()``.

    Args:
        cfg: The run's config.
        reader: Scan reader (``medseg.io.load_volume`` by default).
        clock: The clock the time budget (``training.max_minutes``) is measured on; ``time.perf_counter`` by
            default. Throughput figures (seconds per epoch, slices/s) always use ``time.perf_counter``.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        reader: Reader | None = None,
        clock: Callable[[], float] | None = None,
        plan_only: bool = False,
    ) -> None:
        self.cfg = cfg
        self.clock: Callable[[], float] = clock if clock is not None else time.perf_counter
        tc = cfg.training
        self.out_dir = Path(cfg.output.dir)
        self.best_path = self.out_dir / "checkpoints" / "best.pt"
        self.last_path = self.out_dir / "checkpoints" / "last.pt"
        self.rank, self.world_size, self.main = get_rank(), get_world_size(), is_main_process()

        seed_everything(tc.seed)
        set_deterministic(tc.deterministic)
        self.device = resolve_device(tc.device)
        self.amp_dtype = resolve_precision(tc.precision, self.device)
        self.channels_last = resolve_channels_last(tc.channels_last, self.device)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        resume = None if plan_only else self._load_resume_checkpoint()
        self._setup_data(reader, resume)
        if plan_only:  # the plan stage (check_and_plan): data read and checked, plan.json written
            return
        # From here on every step allocates the same activations: keep freed buffers for reuse (medseg.allocator).
        # Not before the data setup, whose one-off temporaries would then stay in the heap.
        keep_freed_buffers()
        self._setup_model(resume)

        self.epoch = 0
        self.elapsed = 0.0
        self.best_dice = -1.0
        self.best_epoch = 0
        self.val_dice: float | None = None
        self.stale = 0
        self.stop_reason = ""
        history: list[dict[str, Any]] = []
        if resume is not None:
            history = self._restore(resume)
        self.log_writer = (
            TrainingLog(self.out_dir / "train", self.classes, history)
            if self.main
            else None  # only rank 0 writes files
        )
        self.history = history
        self._log_setup()

    # ------------------------------------------------------------------ setup

    def _load_resume_checkpoint(self) -> dict[str, Any] | None:
        if self.main:
            # A run killed while saving leaves its temp file (atomic_path cannot clean up after SIGKILL).
            remove_stale_temp_files([self.best_path, self.last_path])
        return load_resume_checkpoint(self.cfg, self.last_path, main=self.main)

    def _setup_data(self, reader: Reader | None, resume: dict[str, Any] | None) -> None:
        cfg = self.cfg
        spec = discover_cases(cfg.data)
        modality, modality_reason = dataset_modality(cfg.data.modality, spec)
        self.classes = list(spec.classes)
        self.n_classes = len(self.classes)
        self.mode, self.mode_reason = resolve_mode(cfg.loss.mode, self.n_classes, regions=spec.regions is not None)
        self.label_values = spec.label_values  # how the label files store the classes; masks are written so
        self.label_reading = LabelReading.of(cfg.data, spec.label_values, spec.ignore_label, spec.regions)
        # Overlapping regions (data.regions): which painted classes each region holds; None for plain classes.
        self.membership = None if spec.regions is None else spec.regions.membership()
        self.channels = list(spec.channels)
        train_cases, val_cases = split_for(spec.cases, cfg.data)
        if not train_cases:
            raise ConfigError(f"No training case left after the split of {len(spec.cases)} case(s) in data.root")
        # Before anything is read: data that cannot fit in memory goes to disk or stops the run with a message,
        # instead of being killed by the OS minutes later.
        cache_dir = choose_cache_dir(
            [*train_cases, *val_cases],
            cfg.data.cache_dir,
            available_memory_bytes(),
            output_dir=Path(cfg.output.dir),
            copies=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )
        self.validate_on_train = not val_cases
        self.split_ids = {"train": [c.id for c in train_cases], "val": [c.id for c in val_cases]}
        if resume is not None:
            split = resume.get("split", {})
            if self.split_ids != {"train": split.get("train"), "val": split.get("val")}:
                raise CheckpointError(
                    f"Cannot resume from '{self.last_path}': the cases under data.root changed since the checkpoint "
                    "(train/validation split differs)"
                )
            if resume["classes"] != self.classes:
                raise CheckpointError(
                    f"Cannot resume from '{self.last_path}': classes {resume['classes']} != {self.classes}"
                )
            if resume["mode"] != self.mode:
                raise CheckpointError(
                    f"Cannot resume from '{self.last_path}': loss mode {resume['mode']} != {self.mode} "
                    f"({self.mode_reason})"
                )
            if resume.get("label_values") != self.label_values:
                raise CheckpointError(
                    f"Cannot resume from '{self.last_path}': the labels' stored values "
                    f"{resume.get('label_values')} != {self.label_values} (data.label_values or dataset.json)"
                )
            if resume.get("ignore_label") != spec.ignore_label:
                raise CheckpointError(
                    f"Cannot resume from '{self.last_path}': the value of unannotated voxels "
                    f"{resume.get('ignore_label')} != {spec.ignore_label} (data.ignore_label or dataset.json)"
                )
            regions = None if spec.regions is None else spec.regions.to_stored()
            if resume.get("regions") != regions:
                raise CheckpointError(
                    f"Cannot resume from '{self.last_path}': the regions {resume.get('regions')} != {regions} "
                    "(data.regions or dataset.json)"
                )
        # The QC reference's training statistics are noted while the data stage reads each file (no second read).
        self.qc_recorder = RecordingReader(reader or default_reader(), self.classes, self.label_reading)
        self.qc_recorder.expect_labels(spec.cases)
        # The network is known once discovery fixed the input channels (each brings its own 2k+1 context
        # slices); slices and the planned patch are padded to a multiple its depth accepts.
        in_channels = len(self.channels) * (2 * cfg.preprocessing.context_slices + 1)
        self.network_spec = spec_from_config(cfg.model, in_channels, n_outputs(self.mode, self.n_classes))
        self.pad_multiple = math.lcm(int(cfg.preprocessing.pad_multiple), self.network_spec.pad_multiple)
        data: PreparedData = prepare_training_data(
            train_cases,
            val_cases,
            self.n_classes,
            cfg.preprocessing,
            modality=modality,
            modality_reason=modality_reason,
            reader=self.qc_recorder,
            skip_bad_cases=cfg.data.skip_bad_cases,
            cache_dir=cache_dir,
            seed=cfg.data.seed,
            batch_size=cfg.training.batch_size,
            classes=self.classes,
            channels=self.channels,
            pad_multiple=self.pad_multiple,
            labels=self.label_reading,
        )
        check_foreground(data.train, data.val)  # all-empty labels: refused before the first step
        self.data = data
        self.skipped = [*spec.skipped, *data.skipped]
        assert data.plan is not None
        self.plan = data.plan
        self.train_cases = [p.case for p in data.train if p.case is not None]
        if data.val and not any(p.annotated.any() for p in data.val if p.label is not None):
            # Validation cases that annotate no voxel give no Dice: no best.pt would ever be written.
            self.validate_on_train = True
        self.val_prepared = data.val if not self.validate_on_train else data.train
        self.val_cases = [p.case for p in self.val_prepared if p.case is not None]
        if self.validate_on_train:
            log.warning(
                "%s: validating on the %d training case(s); the Dice is not a held-out estimate",
                _no_validation_reason(cfg.data.val_fraction, len(data.train), bool(data.val)),
                len(data.train),
            )

        tc = cfg.training
        transforms = train_transforms(cfg.augmentation, seed=tc.seed) if cfg.augmentation.enabled else None
        self.dataset = SliceDataset(
            data.train,
            None,
            transforms,
            pad_multiple=self.pad_multiple,
            crop_hw=self.plan.patch_size,
            foreground_fraction=tc.foreground_fraction,
            seed=tc.seed,
        )
        self.batch_size = int(self.plan.batch_size)
        self.patch_hw = [int(s) for s in self.dataset.patch_hw]
        if resume is not None:
            weights = resume["class_weights"]
            self.class_weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        else:
            self.class_weights = resolve_class_weights(
                cfg.loss.class_weights,
                (p.label for p in data.train if p.label is not None),
                self.n_classes,
                cfg.loss.class_weight_range,
                unannotated=self.label_reading.ignore is not None,
                membership=self.membership,
            )
        # What the network predicts and how it is trained for it joins the plan; plan.json is written only now.
        self.plan.labels, reasons = label_plan(
            self.classes,
            label_values=self.label_values,
            regions=None if spec.regions is None else spec.regions.to_stored(),
            ignore_label=spec.ignore_label,
            loss_mode=self.mode,
            loss_mode_reason=self.mode_reason,
            class_weights=None if self.class_weights is None else self.class_weights.tolist(),
            class_weights_setting=cfg.loss.class_weights,
            class_weight_range=cfg.loss.class_weight_range,
        )
        self.plan.reasons.update(reasons)
        if self.main:
            write_plan(self.plan, Path(cfg.output.dir) / "plan.json", self.skipped)
            listed = None if self.class_weights is None else self.class_weights.tolist()
            weights = class_weights_text(self.classes, listed, self.mode)
            log.info("Loss: %s, %s; class weights: %s", self.mode, self.mode_reason, weights)
            described = self.label_reading.describe(self.classes)
            if described:
                log.info("%s", described)
        # The sampler hook: rank/world_size shard each epoch's sequence (DDP needs nothing else here).
        # An epoch is one draw per slice that holds annotated voxels (every slice, unless some are unannotated).
        base = foreground_sampler(
            self.dataset, tc.foreground_fraction, None, tc.seed, rank=self.rank, world_size=self.world_size
        )
        self.sampler = SeededSampler(base, tc.seed, self.batch_size)
        self.num_workers = resolve_num_workers(tc.num_workers, self.device)
        self.loader = build_train_loader(
            self.dataset,
            self.sampler,
            num_workers=self.num_workers,
            device=self.device,
            seed=tc.seed,
        )

    # ------------------------------------------------------------------ builders (override in a subclass)

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        """The network to train, on the CPU (the trainer moves it); default: :func:`medseg.models.build_model`.

        A subclass may return another module mapping ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``;
        the checkpoint records ``spec``, so for prediction register the class under ``spec.architecture``
        (:func:`medseg.models.register_architecture`) and set ``model.architecture`` to it.
        """
        model = build_model(spec)
        if self.cfg.model.checkpointing:
            model.use_checkpointing()
        return model

    def build_loss(self) -> nn.Module:
        """The loss ``loss(logits, labels) -> scalar``; default: :class:`medseg.losses.SegLoss` from ``loss``."""
        weights = None if self.class_weights is None else torch.from_numpy(self.class_weights)
        lc = self.cfg.loss
        return SegLoss(
            self.mode,
            self.n_classes,
            weights,
            bce_weight=lc.bce_weight,
            dice_weight=lc.dice_weight,
            unannotated=self.label_reading.ignore is not None,
            membership=self.membership,
        )

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimiser of ``model``'s parameters; default: AdamW with ``training.lr`` / ``weight_decay``."""
        tc = self.cfg.training
        return torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> LRSchedule:
        """The LR schedule (stepped per batch and per validation); default: ``training.scheduler``."""
        tc = self.cfg.training
        return LRSchedule(
            optimizer,
            tc.scheduler,
            total_epochs=tc.epochs,
            max_seconds=None if tc.max_minutes is None else tc.max_minutes * 60.0,
        )

    def _setup_model(self, resume: dict[str, Any] | None) -> None:
        model = self.build_model(self.network_spec)
        if isinstance(model, SegmentationNet) and self.pad_multiple % model.pad_multiple:
            raise ConfigError(
                f"preprocessing.pad_multiple: slices padded to a multiple of {self.pad_multiple} do not fit "
                f"{type(model).__name__}, which needs a multiple of {model.pad_multiple}"
            )
        if resume is not None:
            model.load_state_dict(resume["model_state"])
        else:
            init_output_bias(
                model,
                (p.label for p in self.data.train if p.label is not None),
                self.n_classes,
                self.mode,
                unannotated=self.label_reading.ignore is not None,
                membership=self.membership,
            )
        self.model = model.to(self.device).to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.train_model = wrap_model(self.model)
        self.loss_fn = self.build_loss().to(self.device)
        self.optimizer = self.build_optimizer(self.model)
        self.schedule = self.build_scheduler(self.optimizer)
        self.val_schedule = ValidationSchedule(self.cfg.training.val_every)
        self.scaler = torch.amp.GradScaler(self.device.type) if needs_grad_scaler(self.amp_dtype) else None
        # Validation runs the predictor's forward pass with the predictor's settings object (no test-time flips).
        self.val_settings = InferenceSettings(
            n_classes=self.n_classes,
            mode=self.mode,
            device=self.device,
            precision=self.amp_dtype,
            channels_last=self.channels_last,
            patch_hw=(self.patch_hw[0], self.patch_hw[1]),
            pad_multiple=self.pad_multiple,
            # inference.batch_size "auto" is sized per validation case (validate_volumes); 64 stands in until then.
            batch_size=64 if self.cfg.inference.batch_size == "auto" else self.cfg.inference.batch_size,
        )

    def _restore(self, ckpt: dict[str, Any]) -> list[dict[str, Any]]:
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.schedule.load_state_dict(ckpt["scheduler_state"], replan=True)
        if self.scaler is not None and ckpt.get("scaler_state"):
            self.scaler.load_state_dict(ckpt["scaler_state"])
        restore_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.elapsed = float(ckpt.get("elapsed_seconds", 0.0))
        self.best_dice = float(ckpt["best_dice"])
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.val_dice = ckpt.get("val_dice")
        self.stale = int(ckpt.get("stale_validations", 0))
        self.stop_reason = str(ckpt.get("stop_reason", ""))
        planned = int(ckpt["config"]["training"]["epochs"])
        if self.stop_reason == "early_stopping" and self.cfg.training.epochs > planned:
            log.info("Extending an early-stopped run to %d epochs: the early-stopping counter restarts", planned)
            self.stale = 0
            self.stop_reason = ""
        return list(ckpt.get("history", []))

    def _log_setup(self) -> None:
        if not self.main:
            return
        log.info(
            "Training on %s (%s%s), %d worker(s); %d training slices from %d cases (patch %s), %d validation cases",
            self.device,
            _PRECISION_NAMES[self.amp_dtype],
            ", channels_last" if self.channels_last else "",
            self.num_workers,
            int(self.dataset.annotated.sum()),  # the slices an epoch draws (those with annotated voxels)
            len(self.data.train),
            tuple(self.patch_hw),
            len(self.val_prepared),
        )

    # ------------------------------------------------------------------ loop

    def fit(self, *, stop_after_epoch: int | None = None) -> TrainResult:
        """Runs the remaining epochs and the postprocessing decision; see :func:`train`."""
        tc = self.cfg.training
        max_seconds = None if tc.max_minutes is None else tc.max_minutes * 60.0
        session_start = self.clock()
        elapsed_before = self.elapsed
        if self._finished(max_seconds):
            log.info("Run in %s is already finished (%s); nothing to train", self.out_dir, self.stop_reason)
        while not self._finished(max_seconds):
            epoch_start = time.perf_counter()
            stats = self._train_epoch(self.epoch, elapsed_before, session_start, max_seconds)
            self.epoch += 1
            # Rank 0's clock decides max_minutes for every rank (ranks that disagreed would deadlock).
            self.elapsed = broadcast_object(elapsed_before + (self.clock() - session_start))
            budget_spent = max_seconds is not None and self.elapsed >= max_seconds
            last_epoch = self.epoch >= tc.epochs or budget_spent
            interrupted = stop_after_epoch is not None and self.epoch >= stop_after_epoch and not last_epoch
            result = None
            if self.val_schedule.due(self.epoch) or (last_epoch and not interrupted):
                val_start = time.perf_counter()
                result = self._validate()
                # Rank 0's timings decide for every rank (ranks that disagreed on validating would deadlock).
                train_s, val_s = broadcast_object((stats["train_seconds"], time.perf_counter() - val_start))
                interval = self.val_schedule.record(self.epoch, train_s, val_s)
                if interval is not None:
                    log.info(
                        "Validation took %.0f s against %.0f s of training per epoch: validating every %d epoch(s) "
                        "from now on, and after the last (training.val_every: auto keeps it within a fifth of the "
                        "time)",
                        val_s,
                        train_s,
                        interval,
                    )
            self.elapsed = broadcast_object(elapsed_before + (self.clock() - session_start))
            improved = result is not None and self._record_validation(result)
            if result is not None and tc.early_stopping is not None and self.stale >= tc.early_stopping:
                self.stop_reason = "early_stopping"
            elif budget_spent:
                self.stop_reason = "max_minutes"
            elif self.epoch >= tc.epochs:
                self.stop_reason = "epochs"
            row = self._history_row(stats, result, time.perf_counter() - epoch_start)
            self.history = [r for r in self.history if r["epoch"] < self.epoch] + [row]
            self._save(improved)
            self._log_epoch(row)
            if interrupted and not self._finished(max_seconds):
                self.stop_reason = "interrupted"
                break
        plan = self._decide_postprocessing() if self.stop_reason != "interrupted" else _empty_plan()
        if self.stop_reason != "interrupted":
            self._add_qc_reference()
        if self.log_writer is not None:
            self.log_writer.close()
        return TrainResult(
            best=self.best_path,
            last=self.last_path,
            val_cases=self.val_cases,
            classes=self.classes,
            history=self.history,
            best_dice=self.best_dice,
            best_epoch=self.best_epoch,
            epochs=self.epoch,
            stop_reason=self.stop_reason,
            postprocessing=plan,
        )

    def _finished(self, max_seconds: float | None) -> bool:
        if self.stop_reason == "early_stopping":
            return True
        if max_seconds is not None and self.elapsed >= max_seconds:
            self.stop_reason = "max_minutes"
            return True
        if self.epoch >= self.cfg.training.epochs:
            self.stop_reason = "epochs"
            return True
        return False

    def _train_epoch(
        self, epoch: int, elapsed_before: float, session_start: float, max_seconds: float | None
    ) -> dict[str, float]:
        tc = self.cfg.training
        self.sampler.set_epoch(epoch)
        self.train_model.train()
        n_batches = len(self.loader)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        n_ok = n_skipped = n_slices = 0
        wait = 0.0
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=not (self.main and sys.stderr.isatty()),
        )
        start = time.perf_counter()
        fetch_start = start
        for i, batch in enumerate(self.loader):
            wait += time.perf_counter() - fetch_start
            elapsed = elapsed_before + self.clock() - session_start
            # Checked per step, not per epoch: an epoch can be minutes long, and a budget that overran by one
            # epoch would make time-budget comparisons unfair. Rank 0's clock decides for every rank.
            if max_seconds is not None and i > 0 and self._budget_spent(elapsed, max_seconds):
                break
            self.schedule.step(epoch + i / n_batches, elapsed)
            loss = self.train_step(batch)
            if loss is None:
                n_skipped += 1
                fetch_start = time.perf_counter()
                bar.update(1)
                continue
            total_loss += loss.detach()
            n_ok += 1
            n_slices += int(batch["image"].shape[0])
            bar.update(1)
            if i % 5 == 0 or i == n_batches - 1:
                postfix = {"loss": f"{loss.item():.4f}", "lr": f"{self.schedule.lr:.2e}"}
                if self.val_dice is not None:
                    postfix["val_dice"] = f"{self.val_dice:.4f}"
                bar.set_postfix(postfix, refresh=False)
            fetch_start = time.perf_counter()
        bar.close()
        seconds = time.perf_counter() - start
        if n_skipped:
            log.warning("Epoch %d: skipped %d of %d steps with a non-finite loss", epoch + 1, n_skipped, n_batches)
        return {
            # Mean over ranks (each rank saw its own shard of the epoch); a no-op in one process.
            "train_loss": all_reduce_mean(float(total_loss.item()) / n_ok if n_ok else float("nan")),
            "train_seconds": seconds,
            "slices_per_s": n_slices / seconds if seconds > 0 else float("nan"),
            "data_wait_share": wait / seconds if seconds > 0 else float("nan"),
            "steps": n_ok + n_skipped,  # < len(loader) when the time budget ran out mid-epoch
        }

    def time_loop(self, n_batches: int, *, epoch: int = 0) -> dict[str, float]:
        """Runs ``n_batches`` steps of the training loop exactly as :meth:`train` does, for benchmarks.

        The trainer's own loader, sampler, augmentation, schedule and step; no validation, no checkpoint, no
        history. The weights and optimiser state move on (it trains), so time a trainer built for timing.

        Args:
            n_batches: Optimiser steps to run (the epoch's length for this call; restored afterwards).
            epoch: Epoch index for the sampler's and augmentation's seeding (vary it between calls).

        Returns:
            ``train_loss``, ``train_seconds``, ``slices_per_s``, ``data_wait_share`` and ``steps``.
        """
        if n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {n_batches}")
        base = self.sampler.base
        saved = base.num_samples
        base.num_samples = n_batches * self.batch_size  # the planned batch (training.batch_size may be auto)
        try:
            return self._train_epoch(epoch, 0.0, time.perf_counter(), None)
        finally:
            base.num_samples = saved

    def _budget_spent(self, elapsed: float, max_seconds: float) -> bool:
        spent = elapsed >= max_seconds
        return bool(broadcast_object(spent)) if self.world_size > 1 else spent

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """One optimiser step on a batch (at the LR the schedule has set).

        Args:
            batch: ``{"image": (B, C, H, W), "label": (B, H, W)}`` from the loader.

        Returns:
            The detached loss, or ``None`` when it was not finite and the step was skipped (a NaN step would
            poison the weights for good; fp16 overflow is the GradScaler's job and never gets here).
        """
        x = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        y = batch["label"].to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            logits = self.train_model(x)
        loss = self.loss_fn(logits, y)  # float32 whatever the autocast dtype (SegLoss casts)
        finite = bool(torch.isfinite(loss))
        if self.world_size > 1:
            finite = all_ranks(finite)  # under DDP all ranks skip together, or backward would wait forever
        if not finite:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self._clip()
            self.optimizer.step()
        return loss.detach()

    def _clip(self) -> None:
        if self.cfg.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.training.grad_clip)

    def _validate(self, keep_volumes: bool = False) -> ValidationResult:
        # Under DDP every rank validates all validation cases with the same weights; rank 0's Dice is broadcast
        # so best-checkpoint, LR-plateau and early-stopping decisions are identical on every rank (GPU kernels
        # are not bitwise deterministic, and ranks that disagreed on stopping would deadlock).
        result = validate_volumes(
            self.model,
            self.val_prepared,
            self.val_settings,
            axis=self.data.axis,
            keep_volumes=keep_volumes,
            batch_size=self.cfg.inference.batch_size,
            memory_gb=self.cfg.inference.memory_gb,
            membership=self.membership,
        )
        if get_world_size() > 1:
            result.mean, result.per_class = broadcast_object((result.mean, result.per_class))
        return result

    def _record_validation(self, result: ValidationResult) -> bool:
        self.val_dice = result.mean
        self.schedule.step_validation(result.mean)
        if result.mean > self.best_dice:
            self.best_dice = result.mean
            self.best_epoch = self.epoch
            self.stale = 0
            return True
        self.stale += 1
        return False

    def _history_row(self, stats: dict[str, float], result: ValidationResult | None, seconds: float) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "lr": self.schedule.lr,
            "train_loss": stats["train_loss"],
            "val_dice_mean": None if result is None else result.mean,
        }
        for c, name in enumerate(self.classes[1:]):
            row[f"val_dice_{name}"] = None if result is None else result.per_class[c]
        row["seconds"] = seconds
        row["slices_per_s"] = stats["slices_per_s"]
        row["data_wait_share"] = stats["data_wait_share"]
        row["steps"] = int(stats["steps"])
        return row

    def _log_epoch(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        val = row["val_dice_mean"]
        per_class = per_class_text({name: row[f"val_dice_{name}"] for name in self.classes[1:]})
        tc = self.cfg.training
        budget_left = None if tc.max_minutes is None else tc.max_minutes * 60.0 - self.elapsed
        left = seconds_left(self.history, tc.epochs, budget_left) if not self.stop_reason else 0.0
        log.info(
            "epoch %d/%d: loss %.4f, lr %.2e%s, %.1f s (%.0f slices/s, data wait %.0f%%)%s",
            row["epoch"],
            tc.epochs,
            row["train_loss"],
            row["lr"],
            f", val Dice {val:.4f} ({per_class})" if val is not None else "",
            row["seconds"],
            row["slices_per_s"],
            100 * row["data_wait_share"],
            f"; about {_duration(left)} left" if left > 0 else "",
        )
        if self.log_writer is not None:
            self.log_writer.add(row)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, postprocessing: dict[str, list[int]], decided: bool) -> dict[str, Any]:
        model = unwrap_model(self.model)
        return {
            "format": CHECKPOINT_FORMAT,
            "model_state": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.schedule.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "elapsed_seconds": self.elapsed,
            "rng": capture_rng_state(),
            "config": self.cfg.model_dump(mode="json"),
            "model": self.network_spec.to_dict(),
            "mode": self.mode,
            "classes": list(self.classes),
            "label_values": None if self.label_values is None else list(self.label_values),
            "ignore_label": self.label_reading.ignore,
            "regions": None if self.label_reading.regions is None else self.label_reading.regions.to_stored(),
            "class_weights": None if self.class_weights is None else [float(w) for w in self.class_weights],
            "normalization": self.data.params.to_dict(),
            "slice_axis": int(self.data.axis),
            "context_slices": int(self.data.context),
            "patch_hw": list(self.patch_hw),
            "pad_multiple": int(self.pad_multiple),
            "plan": self.plan.to_dict(),
            "channels": list(self.channels),
            "channel_patterns": list(self.cfg.data.channel_patterns or []),
            "precision": _PRECISION_NAMES[self.amp_dtype],
            "channels_last": self.channels_last,
            "postprocessing": {k: list(v) for k, v in postprocessing.items()},
            "postprocessing_decided": decided,
            "best_dice": float(self.best_dice),
            "best_epoch": int(self.best_epoch),
            "val_dice": None if self.val_dice is None else float(self.val_dice),
            "stale_validations": int(self.stale),
            "stop_reason": self.stop_reason,
            "split": {k: list(v) for k, v in self.split_ids.items()},
            "history": [dict(r) for r in self.history],
            "versions": library_versions(),
        }

    def _save(self, improved: bool) -> None:
        if self.main:
            ckpt = self._checkpoint(_empty_plan(), decided=False)
            if improved:
                save_checkpoint(self.best_path, ckpt)
            save_checkpoint(self.last_path, ckpt)
        barrier()

    def _decide_postprocessing(self) -> dict[str, list[int]]:
        """Loads the best weights, predicts the validation volumes and keeps the steps that raise their Dice."""
        if not self.best_path.exists():
            log.warning("No best checkpoint (no validation ran); postprocessing stays off")
            return _empty_plan()
        best = load_checkpoint(self.best_path)
        if best.get("postprocessing_decided"):
            return {k: list(v) for k, v in best["postprocessing"].items()}
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best["model_state"])
        result = self._validate(keep_volumes=True)
        self.model.load_state_dict(current)
        plan = decide_postprocessing(
            result.predictions,
            result.ground_truths,
            self.n_classes,
            axis=self.data.axis,
            unannotated=self.label_reading.ignore is not None,
            membership=self.membership,
        )
        plan_dict = {k: [int(c) for c in plan[k]] for k in ("largest_component", "fill_holes")}
        plan_dict = broadcast_object(plan_dict)  # rank 0's decision, the one its checkpoint stores
        if self.main:
            best["postprocessing"] = plan_dict
            best["postprocessing_decided"] = True
            save_checkpoint(self.best_path, best)
            names = {k: [self.classes[c] for c in v] or "none" for k, v in plan_dict.items()}
            log.info(
                "Best epoch %d, mean validation Dice %.4f; postprocessing: largest component %s, fill holes %s",
                self.best_epoch,
                self.best_dice,
                names["largest_component"],
                names["fill_holes"],
            )
        barrier()
        return plan_dict

    def _add_qc_reference(self) -> None:
        """Stores ``qc_reference`` (``medseg.training.qc_reference``) in ``best.pt`` once its postprocessing is set."""
        if self.main and self.best_path.exists():
            best = load_checkpoint(self.best_path)
            if best.get("qc_reference") is None:
                val = validation_outputs(
                    self.best_path,
                    self.val_cases,
                    self.qc_recorder.reader,
                    device=str(self.device),
                    inference=self.cfg.inference,
                )
                best["qc_reference"] = qc_reference(self.qc_recorder, self.train_cases, val, self.classes)
                save_checkpoint(self.best_path, best)
        barrier()
