"""The ``summary`` stage: the configured network's layer table, parameters and memory, without training.

For the configured input (``2 * context_slices + 1`` channels, the training patch) and batch size it reports:
the seed-style layer table and total parameter count (:func:`medseg.models.summary.summary`), the seed's analytic
memory estimate, the measured peak memory of one real training step (forward under the training precision,
loss, backward, AdamW step) on ``training.device``, and where the training data will live (in memory or
memory-mapped from disk, estimated from the scan headers as training decides it: ``medseg.data.memory``).

The patch is ``model.summary_patch`` when set; otherwise the one training would use, found the way the trainer
finds it (every training case read, sliced along the resolved axis, the largest slice padded to the pad
multiple), so the table matches what ``train`` will run.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.config import Config
from medseg.data.cases import DatasetSpec, discover_cases
from medseg.data.plan import decide_batch
from medseg.data.slicing import padded_size
from medseg.errors import ConfigError
from medseg.io.atomic import atomic_write_text
from medseg.losses import SegLoss
from medseg.models import build_model, n_outputs, resolve_mode, spec_from_config
from medseg.models.registry import NetworkSpec
from medseg.models.summary import ModelSummary, StepMemory, measure_step_memory, summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SummaryReport:
    """What the ``summary`` stage found (also written to ``output.dir/summary.txt``).

    Attributes:
        spec: The network.
        patch_hw: The input H, W the table is for.
        batch_size: ``training.batch_size``.
        summary: Layer table, parameter count and analytic estimate.
        measured: Peak memory of one training step.
        text: The report as printed.
        path: Where it was written.
    """

    spec: NetworkSpec
    patch_hw: tuple[int, int]
    batch_size: int
    summary: ModelSummary
    measured: StepMemory
    text: str
    path: Path


def _training_patch(cfg: Config, spec: DatasetSpec, pad_multiple: int) -> tuple[int, int]:
    """The patch one training step sees: ``model.summary_patch``, else the data plan's patch (as training)."""
    if cfg.model.summary_patch is not None:
        h, w = cfg.model.summary_patch
        return padded_size((int(h), int(w)), pad_multiple)
    from medseg.data.label_reading import LabelReading
    from medseg.data.modality import dataset_modality
    from medseg.data.prepare import prepare_training_data
    from medseg.data.splits import split_for

    modality, modality_reason = dataset_modality(cfg.data.modality, spec)
    train_cases, _ = split_for(spec.cases, cfg.data)
    if not train_cases:
        raise ConfigError(f"No training case left after the split of {len(spec.cases)} case(s) in data.root")
    data = prepare_training_data(
        train_cases,
        [],
        len(spec.classes),
        cfg.preprocessing,
        modality=modality,
        modality_reason=modality_reason,
        skip_bad_cases=cfg.data.skip_bad_cases,
        seed=cfg.data.seed,
        batch_size=cfg.training.batch_size,
        classes=list(spec.classes),
        channels=list(spec.channels),
        pad_multiple=pad_multiple,
        labels=LabelReading.of(cfg.data, spec.label_values, spec.ignore_label, spec.regions),
    )
    assert data.plan is not None
    h, w = data.plan.patch_size
    return int(h), int(w)


def _data_placement(cfg: Config, spec: DatasetSpec) -> str:
    """Where training would keep the data, from the headers of every case (training and validation)."""
    from medseg.data.memory import place_training_data
    from medseg.inference.budget import available_memory_bytes

    placement = place_training_data(
        spec.cases, cfg.data.cache_dir, available_memory_bytes(), output_dir=Path(cfg.output.dir)
    )
    return placement.text


def run_summary(cfg: Config) -> SummaryReport:
    """Builds the configured network, tabulates it and measures one training step; see the module docstring.

    Raises:
        ConfigError: Unknown architecture, bad options, or no data to find the classes/patch from.
    """
    from medseg.inference.precision import resolve_channels_last, resolve_device, resolve_precision

    # The dataset is discovered once: classes, channels, the training patch and the data's placement all come from it.
    data_spec = discover_cases(cfg.data)
    classes, channels = list(data_spec.classes), list(data_spec.channels)
    in_channels = len(channels) * (2 * cfg.preprocessing.context_slices + 1)
    mode = resolve_mode(cfg.loss.mode, len(classes), regions=data_spec.regions is not None)[0]
    spec = spec_from_config(cfg.model, in_channels, n_outputs(mode, len(classes)))
    pad_multiple = math.lcm(int(cfg.preprocessing.pad_multiple), spec.pad_multiple)
    patch = _training_patch(cfg, data_spec, pad_multiple)
    model = build_model(spec)
    if cfg.model.checkpointing:
        model.use_checkpointing()
    batch = decide_batch(patch, cfg.training.batch_size)[0]  # `auto` as the plan decides it
    table = summary(model, (in_channels, *patch), batch_size=batch)

    device = resolve_device(cfg.training.device)
    precision = resolve_precision(cfg.training.precision, device)
    channels_last = resolve_channels_last(cfg.training.channels_last, device)
    probe = copy.deepcopy(model).to(device)
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    membership = None if data_spec.regions is None else data_spec.regions.membership()
    loss = SegLoss(
        mode, len(classes), bce_weight=cfg.loss.bce_weight, dice_weight=cfg.loss.dice_weight, membership=membership
    )
    measured = measure_step_memory(
        probe,
        loss.to(device),
        (in_channels, *patch),
        batch,
        len(classes),
        device=device,
        optimizer_factory=lambda m: torch.optim.AdamW(
            m.parameters(), lr=cfg.training.lr, weight_decay=cfg.training.weight_decay
        ),
        precision=precision,
        channels_last=channels_last,
        seed=cfg.training.seed,
    )
    del probe
    peak = "n/a" if measured.peak_mb is None else f"{measured.peak_mb:.1f}"
    text = "\n".join(
        [
            f"Model: {spec.architecture} {dict(spec.options)}, checkpointing {cfg.model.checkpointing}",
            f"Input: batch {batch} x {in_channels} channel(s) x {patch[0]} x {patch[1]} (pad multiple {pad_multiple})",
            table.table(),
            f"Measured peak memory of one training step on {measured.device} (MB): {peak}  [{measured.method}]",
            f"Training data: {_data_placement(cfg, data_spec)}",
        ]
    )
    path = Path(cfg.output.dir) / "summary.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text + "\n")
    for line in text.splitlines():
        log.info("%s", line)
    return SummaryReport(spec, patch, batch, table, measured, text, path)
