"""Typed configuration: YAML -> validated objects, with errors that name the key path and accepted values.

A minimal config is a few lines (``data.root`` and ``output.dir``); everything else has a default chosen from
measurements (see ``benchmarks/RESULTS.md``). Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medseg.errors import ConfigError

Stage = Literal["train", "predict", "evaluate"]


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML key must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the training cases are and how to find them."""

    root: Path | None = None
    """Dataset folder. For ``layout: msd`` it holds ``dataset.json``, ``imagesTr/``, ``labelsTr/``."""
    layout: Literal["auto", "msd", "glob", "dicom"] = "auto"
    """``auto`` = ``msd`` when ``root/dataset.json`` exists, else ``glob``."""
    image_glob: str = "images/*.nii.gz"
    """``glob`` layout: image files relative to ``root``."""
    label_glob: str = "labels/*.nii.gz"
    """``glob`` layout: label files relative to ``root``."""
    case_pattern: str = r"(?P<case>.+?)(_\d{4})?\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$"
    """``glob`` layout: regex on the file name; its ``case`` group pairs images with labels."""
    classes: list[str] | None = None
    """Class names including background at index 0. ``None`` = from ``dataset.json`` (msd) or required."""
    modality: Literal["mri", "ct"] = "mri"
    skip_bad_cases: bool = False
    """Skip (with a warning, listed in the run's output) cases that fail the checks instead of stopping."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    folds: int | None = Field(None, ge=2)
    """k-fold cross-validation: number of folds; ``None`` uses ``val_fraction``."""
    fold: int = Field(0, ge=0)
    seed: int = 0
    max_cases: int | None = Field(None, ge=1)
    """Use only the first N cases (after sorting by id): for quick trials."""
    cache_dir: Path | None = None
    """Folder for preprocessed slices when they do not fit in memory; ``None`` keeps them in memory."""

    @model_validator(mode="after")
    def _fold_in_range(self) -> DataConfig:
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1} when folds={self.folds}, got {self.fold}")
        return self


class PreprocessingConfig(_Section):
    """Intensity normalisation and slicing; stored with the model so prediction does the same."""

    normalization: Literal["auto", "zscore", "ct", "percentile"] = "auto"
    """``auto`` = ``ct`` for ``modality: ct``, else ``zscore``."""
    nonzero: bool = False
    """``zscore``: compute mean/std over non-zero voxels only (skull-stripped MRI)."""
    slice_axis: Literal["auto", 0, 1, 2] = "auto"
    """``auto`` = the axis with the largest spacing (ties: the last axis)."""
    context_slices: int = Field(0, ge=0, le=5)
    """2.5D: k neighbouring slices on each side become extra input channels."""
    pad_multiple: int = Field(16, ge=1)


class ElasticConfig(_Section):
    prob: float = Field(0.2, ge=0.0, le=1.0)
    spacing: tuple[float, float] = (20.0, 20.0)
    magnitude: tuple[float, float] = (1.0, 2.0)


class AffineConfig(_Section):
    prob: float = Field(0.3, ge=0.0, le=1.0)
    rotate_deg: float = Field(15.0, ge=0.0)
    scale: float = Field(0.15, ge=0.0)
    """Zoom range as a fraction: 0.15 = scale in [0.85, 1.15]."""


class FlipConfig(_Section):
    prob: float = Field(0.0, ge=0.0, le=1.0)
    axes: list[int] = [0]
    """Spatial axes of the 2D slice to flip (0 = rows, 1 = columns)."""


class NoiseConfig(_Section):
    prob: float = Field(0.15, ge=0.0, le=1.0)
    std: float = Field(0.1, ge=0.0)


class ScaleIntensityConfig(_Section):
    prob: float = Field(0.15, ge=0.0, le=1.0)
    factor: float = Field(0.25, ge=0.0)
    """Scale intensities by (1 + u), u in [-factor, factor]."""


class GammaConfig(_Section):
    prob: float = Field(0.15, ge=0.0, le=1.0)
    gamma: tuple[float, float] = (0.7, 1.5)


class AugmentationConfig(_Section):
    """MONAI dictionary transforms for training; validation and prediction use none of them."""

    enabled: bool = True
    elastic: ElasticConfig = ElasticConfig()
    affine: AffineConfig = AffineConfig()
    flip: FlipConfig = FlipConfig()
    noise: NoiseConfig = NoiseConfig()
    scale_intensity: ScaleIntensityConfig = ScaleIntensityConfig()
    gamma: GammaConfig = GammaConfig()


class ModelConfig(_Section):
    """The hand-built UNet."""

    base_features: int = Field(32, ge=4)
    bilinear: bool = False
    checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (slower)."""


class LossConfig(_Section):
    """``loss = bce_weight * BCE + dice_weight * (1 - soft Dice)``, class-weighted."""

    mode: Literal["sigmoid", "softmax"] = "sigmoid"
    bce_weight: float = Field(1.0, ge=0.0)
    dice_weight: float = Field(1.0, ge=0.0)
    class_weights: Literal["auto", "none"] | list[float] = "auto"
    """``auto`` = inverse voxel frequency of the training labels, normalised and clipped."""
    class_weight_range: tuple[float, float] = (0.2, 5.0)


class TrainingConfig(_Section):
    epochs: int = Field(50, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock budget; training stops after the epoch that crosses it (the schedule is planned for it)."""
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["poly", "cosine", "plateau", "none"] = "poly"
    val_every: int = Field(1, ge=1)
    early_stopping: int | None = Field(None, ge=1)
    """Stop after this many validations without improvement; ``None`` = never."""
    grad_clip: float | None = Field(12.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    foreground_fraction: float = Field(0.33, ge=0.0, le=1.0)
    """Share of each batch drawn from slices that contain labels."""
    num_workers: int | Literal["auto"] = "auto"
    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""
    distributed_backend: Literal["auto", "gloo", "nccl"] = "auto"
    deterministic: bool = False
    seed: int = 0
    resume: bool = False
    """Continue from ``<output.dir>/checkpoints/last.pt`` (also extends a finished run to more epochs)."""


class PostprocessingConfig(_Section):
    largest_component: Literal["auto"] | bool = "auto"
    """``auto`` = on for the classes where it improved validation Dice during training."""
    fill_holes: Literal["auto"] | bool = "auto"


class InferenceConfig(_Section):
    input: Path | None = None
    """Folder of scans (NIfTI/NRRD/MHA files and/or DICOM series folders, searched recursively).
    ``None`` = the validation cases of ``data``."""
    checkpoint: Path | None = None
    """``None`` = ``<output.dir>/checkpoints/best.pt``."""
    batch_size: int = Field(64, ge=1)
    tta_flips: bool = False
    postprocessing: PostprocessingConfig = PostprocessingConfig()
    save_probabilities: bool = False
    output_format: Literal["nii.gz", "nrrd", "mha"] = "nii.gz"
    overwrite: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"


class EvaluationConfig(_Section):
    ground_truth: Path | None = None
    """Folder of ground-truth masks named like the predictions; ``None`` = the labels of the predicted cases."""
    overlays: int = Field(3, ge=0)
    """Number of best and of worst cases to draw as PNG overlays."""


class OutputConfig(_Section):
    dir: Path = Path("runs/medseg")


class Config(_Section):
    """A whole medseg run."""

    data: DataConfig = DataConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    training: TrainingConfig = TrainingConfig()
    inference: InferenceConfig = InferenceConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    stages: list[Stage] = ["train", "predict", "evaluate"]


_PATH_KEYS = (
    ("data", "root"),
    ("data", "cache_dir"),
    ("inference", "input"),
    ("inference", "checkpoint"),
    ("evaluation", "ground_truth"),
    ("output", "dir"),
)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            accepted = _accepted_keys(parent)
            lines.append(f"  - unknown key '{key}'" + (f"; accepted keys here: {', '.join(accepted)}" if accepted else ""))
        else:
            got = e.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"  - '{key}': {e['msg']}{got_text}")
    return "\n".join(lines)


def _accepted_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parses ``key.path=value`` strings; values are YAML (``3``, ``true``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: If an override is not of the form ``key.path=value``.
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
            raise ConfigError(f"--set '{item}': expected key.path=value, e.g. training.epochs=5")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return parsed


def config_from_dict(raw: dict[str, Any], *, base_dir: Path, source: str = "config") -> Config:
    """Validates a config mapping; relative paths resolve against ``base_dir``.

    Raises:
        ConfigError: Naming each offending key path and what it accepts.
    """
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    for section, key in _PATH_KEYS:
        sect = getattr(cfg, section)
        value = getattr(sect, key)
        if value is not None and not Path(value).expanduser().is_absolute():
            setattr(sect, key, (base_dir / Path(value).expanduser()).resolve())
        elif value is not None:
            setattr(sect, key, Path(value).expanduser())
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config, applies ``--set`` overrides and validates it.

    Args:
        path: YAML file.
        overrides: ``key.path=value`` strings applied on top of the file.

    Returns:
        The validated :class:`Config` with absolute paths.

    Raises:
        ConfigError: Missing or unparsable file, unknown key, wrong type (the message names the key path).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, got {type(raw).__name__}")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(raw, key, value)
    return config_from_dict(raw, base_dir=path.parent.resolve(), source=str(path))


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (atomically)."""
    from medseg.io.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
