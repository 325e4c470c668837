"""Typed configuration: YAML -> validated objects, with errors that name the key path and accepted values.

A minimal config is a few lines (``data.root`` and ``output.dir``); everything else has a default chosen from
measurements (see ``benchmarks/RESULTS.md``). Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import ConfigError

Stage = Literal["train", "predict", "evaluate", "summary", "plan"]


def _device_name(value: str) -> str:
    # Checked with the config, before any folder is made: the same forms medseg.inference.precision.resolve_device
    # accepts (whether CUDA is present is known only at run time).
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip().lower()) is None:
        raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N' (N = GPU index)")
    return value


#: A device option: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
DeviceName = Annotated[str, AfterValidator(_device_name)]


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML key must never be silently ignored.
    # Attribute docstrings become field descriptions: the config reference in README.md is generated from them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ClassCodeConfig(_Section):
    """Coded meaning of one class in DICOM outputs (SEG segment / RTSTRUCT ROI), e.g. SNOMED CT."""

    code: str
    """Segmented property type code, e.g. ``"108369006"``."""
    scheme: str = "SCT"
    """Coding scheme designator (``SCT`` = SNOMED CT)."""
    meaning: str
    """Code meaning, e.g. ``"Neoplasm"``."""
    category_code: str = "85756007"
    """Segmented property category code; default SCT 85756007 "Tissue"."""
    category_scheme: str = "SCT"
    category_meaning: str = "Tissue"


class DataConfig(_Section):
    """Where the training cases are and how to find them."""

    root: Path | None = None
    """Dataset folder. For ``layout: msd`` it holds ``dataset.json``, ``imagesTr/``, ``labelsTr/``."""
    layout: Literal["auto", "msd", "glob", "dicom", "folders"] = "auto"
    """``auto`` = ``msd`` when ``root/dataset.json`` exists, else ``glob``. ``folders``: one folder per case
    holding one file per channel (``channel_patterns``) and a label file (``label_pattern``)."""
    channel_patterns: list[str] | None = None
    """``folders`` layout: one file-name pattern per input channel, in input order (fnmatch, case-insensitive),
    e.g. ``["*flair*", "*t1c*"]``."""
    channel_names: list[str] | None = None
    """``folders`` layout: channel names (stored in the checkpoint); ``None`` = the patterns without wildcards."""
    label_pattern: str = "*label*"
    """``folders`` layout: name pattern of the label in each case folder (fnmatch, case-insensitive): a mask file,
    or a structure folder holding one mask file per class named after it (TotalSegmentator's ``segmentations``)."""
    image_glob: str = "images/*.nii.gz"
    """``glob`` layout: image files relative to ``root``."""
    label_glob: str = "labels/*.nii.gz"
    """``glob`` layout: label files relative to ``root``."""
    case_pattern: str | None = None
    """``glob`` layout: regex on the file name; its ``case`` group pairs images with labels. ``None`` = the
    case id used everywhere else: the name without its scan ending and without a ``_0000`` channel suffix."""
    dicom_image_pattern: str | None = None
    """``dicom`` layout: folder-name pattern (fnmatch, case-insensitive) of the image series in each case folder,
    e.g. ``"*T1post*"``. ``None`` = the one DICOM series folder whose name does not match the mask pattern, or of
    several, the one the case's SEG / RTSTRUCT names as the series it was drawn on."""
    dicom_mask_pattern: str = "*mask*"
    """``dicom`` layout: name pattern (fnmatch, case-insensitive) of the mask: a DICOM series folder, a SEG /
    RTSTRUCT file or a NIfTI/NRRD/MHA file next to the image series. A series folder holding a SEG / RTSTRUCT
    among its slices (a planning system's export) is a case by itself with that file as label; the pattern picks
    one where it holds several."""
    classes: list[str] | None = None
    """Class names including background at index 0. ``None`` = from ``dataset.json`` (msd), or from the names
    labels give their structures (structure folders' file names, 3D Slicer segment names, DICOM SEG segment labels,
    RTSTRUCT ROI names: background, then the names sorted; every case must name the same ones), else required."""
    label_values: list[int] | None = None
    """The value each class is stored as in the label files, in class order (background first), e.g. ``[0, 255]``
    for binary masks saved as 0/255 or ``[0, 1, 2, 4]`` for BraTS. Label files are read through it (any other value
    is refused) and predicted masks are written with these values. ``None`` = class k is stored as k, or what
    ``dataset.json``'s ``labels`` declare (msd layout, e.g. ``{"0": "background", "255": "lesion"}``).
    Labels that name their segments (DICOM SEG / RTSTRUCT, structure folders, 3D Slicer ``.seg.nrrd``) are
    matched to the classes by name and ignore it."""
    regions: dict[str, list[int]] | None = None
    """Overlapping regions to train instead of classes (nnU-Net's region-based training), each a name and the
    stored label values it holds, in painting order, e.g. BraTS ``{whole_tumor: [1, 2, 3, 4], tumor_core: [1, 3,
    4], enhancing: [4]}``. Each region gets one sigmoid output whose target is "the voxel holds one of the region's
    values"; predicted masks are painted region by region with ``regions_class_order`` and every region is scored
    as its own mask. The classes are then background and the regions (``classes`` and ``label_values`` stay
    unset). ``None`` = what ``dataset.json`` declares (labels with lists of values), else plain classes."""
    regions_class_order: list[int] | None = None
    """With ``regions``: the value each region is written as in predicted masks, in the regions' order (nnU-Net
    v2's key); each must be one of its region's values and belong to no later region, and every value must belong
    to the same regions as the value it is painted as (so a painted mask gives each region back exactly: nested
    regions such as BraTS's do; ``{a: [1, 2], b: [2, 3]}`` cannot)."""
    unlisted_labels: Literal["refuse", "background"] = "refuse"
    """Label values that are not a class's (not in ``label_values``, or ``>= len(classes)``): ``refuse`` names the
    file and the values; ``background`` reads them as background, to train a subset of a multi-label set (e.g.
    ``classes: [background, liver, aorta]`` with ``label_values: [0, 5, 52]`` from TotalSegmentator masks). For
    labels that name their segments (structure folders, 3D Slicer segmentations, DICOM SEG, RTSTRUCT), segments
    that are no class's are refused or left out the same way: an RTSTRUCT's body outline, couch or planning
    volumes are then not read at all."""
    ignore_label: int | None = Field(default=None, ge=0, le=65535)
    """The value label files store for unannotated voxels (sparse annotation: some slices, or scribbles;
    nnU-Net v2's ``ignore`` label, which an msd / nnU-Net ``dataset.json`` declares by that name). Such voxels have
    no class: the loss leaves them out, slices without an annotated voxel are not trained on, class statistics
    count annotated voxels only, and validation and evaluation score Dice on annotated voxels only (the surface
    distances and the true volume of a partly annotated case are not reported). ``None`` = every voxel is
    annotated."""
    place_cut_labels: bool = False
    """Place a label map saved cut to its extent on its image's grid by its position, when its voxels are exactly
    the image's. Off by default: where headers carry no position (origin 0, spacing 1) a truncated label, or one of
    another case, would fit as well, and is refused instead. A label in another voxel axis order (the same voxels
    in space) and a 3D Slicer ``.seg.nrrd`` (its header places it) are always placed."""
    class_aliases: dict[str, list[str]] = {}
    """Other names a class's segments, ROIs or structure files go by in some cases, compared case-insensitively as
    the class names are, e.g. ``{bladder: [Bladder_O, Vessie]}``: RTSTRUCTs from several planning systems or
    institutions name one structure differently. Keys are class names (``data.classes`` must be set); a name may
    stand for one class only, and a label that names one class twice (by two of its names) is refused."""
    class_codes: dict[str, ClassCodeConfig] = {}
    """Coded meaning per class name for DICOM SEG / RTSTRUCT outputs, e.g. ``{hippocampus: {code: "5300000",
    meaning: "Hippocampus", category_code: "91723000", category_meaning: "Anatomical Structure"}}``. A class
    without one is written as the generic SCT 85756007 "Tissue" (with a warning)."""
    modality: Literal["auto", "mri", "ct"] = "auto"
    """``ct`` selects CT normalisation (dataset-wide clip, then z-score) under ``preprocessing.normalization: auto``;
    ``mri`` (any non-CT scan) per-volume z-score. ``auto`` = what the data records: ``dataset.json``'s channel
    names (a single channel named CT) or the DICOM series' Modality tag; NIfTI/NRRD/MHA files record none, so
    ``auto`` means ``mri`` for them (``medseg.data.modality``)."""
    skip_bad_cases: bool = False
    """Skip (with a warning, listed in the run's output) cases that fail the checks instead of stopping."""
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Share of the cases (whole cases, never slices) held out for validation when ``folds`` is ``None``."""
    folds: int | None = Field(default=None, ge=2)
    """k-fold cross-validation: number of folds; ``None`` uses ``val_fraction``."""
    fold: int = Field(default=0, ge=0)
    """Which fold is the validation fold, ``0..folds-1`` (with ``folds``)."""
    seed: int = 0
    """Seed of the train/validation split."""
    group_pattern: str | None = None
    """Regex on the case id whose ``group`` group names the patient (or subject) a case belongs to; cases of one
    group always fall on the same side of the split (and in the same fold), e.g. ACDC's two frames per patient:
    ``'(?P<group>patient\\d+)'``. ``null`` = every case is its own group. A case id it does not match is refused."""
    max_cases: int | None = Field(default=None, ge=1)
    """Use only the first N cases (after sorting by id): for quick trials."""
    cache_dir: Literal["auto"] | Path | None = "auto"
    """Where prepared cases live when they do not fit in memory: ``auto`` keeps them in memory when they fit, else
    memory-maps them from ``<output.dir>/prepared_cache``; a folder always memory-maps from there; ``None`` keeps
    them in memory and stops a run whose data does not fit. The folder is empty after the run."""
    channel: int | None = Field(default=None, ge=0)
    """Channel / time point read from 4D or multi-component scans (training and prediction); ``None`` = refuse them."""
    series: str | None = None
    """DICOM folders holding several series: which one (SeriesInstanceUID, unique description or UID prefix). One
    scan beside RT dose grids (a planning export) needs none: the scan is read; nor does a folder whose SEG /
    RTSTRUCT names the series it was drawn on."""
    nan_as_zero: bool = False
    """Read NaN voxels as 0 (with a warning naming the file and the count) instead of refusing the scan."""

    @field_validator("label_values")
    @classmethod
    def _label_values_valid(cls, values: list[int] | None) -> list[int] | None:
        from medseg.data.label_values import label_values_problem

        problem = None if values is None else label_values_problem(values)
        if problem:
            raise ValueError(problem)
        return values

    @model_validator(mode="after")
    def _one_value_per_class(self) -> DataConfig:
        if self.classes is not None and self.label_values is not None and len(self.classes) != len(self.label_values):
            raise ValueError(
                f"label_values {self.label_values} must give one value per class of classes {self.classes}"
            )
        return self

    @model_validator(mode="after")
    def _regions_valid(self) -> DataConfig:
        from medseg.data.regions import Regions

        if self.regions is None:
            if self.regions_class_order is not None:
                raise ValueError("regions_class_order needs regions: the regions whose values it gives")
            return self
        if self.regions_class_order is None:
            raise ValueError("regions needs regions_class_order: the value each region is written as, in order")
        if self.classes is not None or self.label_values is not None:
            raise ValueError(
                "regions replace classes and label_values (the classes are background and the regions, written "
                "with regions_class_order): leave those unset"
            )
        if self.ignore_label is not None:
            raise ValueError("ignore_label together with regions is not supported")
        problem = Regions.of(self.regions, self.regions_class_order).problem()
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _ignore_is_no_class(self) -> DataConfig:
        # Without label_values, the values come from dataset.json or default to 0..n-1: discovery checks those.
        if self.ignore_label is not None and self.label_values is not None and self.ignore_label in self.label_values:
            raise ValueError(f"ignore_label {self.ignore_label} is the stored value of a class ({self.label_values})")
        return self

    @model_validator(mode="after")
    def _aliases_name_classes(self) -> DataConfig:
        if not self.class_aliases:
            return self
        if self.classes is None:
            raise ValueError("class_aliases needs classes: list the classes the aliases stand for")
        foreground = {c.casefold() for c in self.classes[1:]}
        unknown = [k for k in self.class_aliases if k.casefold() not in foreground]
        if unknown:
            raise ValueError(f"class_aliases names {unknown}, which are not foreground classes of {self.classes}")
        owner = {c.casefold(): c for c in self.classes[1:]}
        for cls, names in self.class_aliases.items():
            for name in names:
                other = owner.setdefault(name.casefold(), cls)
                if other.casefold() != cls.casefold():
                    raise ValueError(f"class_aliases: '{name}' cannot stand for both '{other}' and '{cls}'")
        return self

    @model_validator(mode="after")
    def _fold_in_range(self) -> DataConfig:
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1} when folds={self.folds}, got {self.fold}")
        return self


class PreprocessingConfig(_Section):
    """Intensity normalisation and slicing; stored with the model so prediction does the same."""

    normalization: Literal["auto", "zscore", "ct", "percentile"] = "auto"
    """``auto`` = ``ct`` for CT (``data.modality``), else ``zscore``."""
    nonzero: bool = False
    """``zscore``: compute mean/std over non-zero voxels only (skull-stripped MRI)."""
    slice_axis: Literal["auto", 0, 1, 2] = "auto"
    """``auto`` = the axis with the largest spacing (ties: the last axis). Axes count in closest-RAS voxel order,
    the order every scan is permuted to when read (0: right-left, 1: posterior-anterior, 2: inferior-superior,
    nearest), not the order a file stores: 2 slices axially whatever the acquisition."""
    context_slices: int = Field(default=0, ge=0, le=5)
    """2.5D: k neighbouring slices on each side become extra input channels."""
    pad_multiple: int = Field(default=16, ge=1)
    """Slices are zero-padded so height and width are multiples of this and of ``2 ** model.depth``."""
    target_spacing: Literal["auto"] | list[float] | None = "auto"
    """Spacing (mm, along i, j, k) the in-plane axes are resampled to, in training and at prediction (masks are
    written on the scan's own grid). ``auto`` = the training cases' median (nnU-Net's anisotropy rule);
    ``null`` = never resample. See ``plan.json``."""
    patch_size: Literal["auto"] | list[int] = "auto"
    """Training patch ``[h, w]``; ``auto`` = the median slice at the target spacing, within a pixel budget."""

    @model_validator(mode="after")
    def _plan_overrides(self) -> PreprocessingConfig:
        ts = self.target_spacing
        if isinstance(ts, list) and (len(ts) != 3 or min(ts) <= 0):
            raise ValueError(f"target_spacing must be auto, null or three positive mm values, got {ts}")
        ps = self.patch_size
        if isinstance(ps, list) and (len(ps) != 2 or min(ps) < 1):
            raise ValueError(f"patch_size must be auto or two positive sizes [h, w], got {ps}")
        return self


class ElasticConfig(_Section):
    """Elastic deformation (as MONAI ``Rand2DElasticd``)."""

    prob: float = Field(default=0.2, ge=0.0, le=1.0)
    """Probability of applying an elastic deformation to a training slice."""
    spacing: tuple[float, float] = (20.0, 20.0)
    """Distance between elastic control points, in pixels (rows, columns)."""
    magnitude: tuple[float, float] = (1.0, 2.0)
    """Range of the displacement magnitude."""


class AffineConfig(_Section):
    """Random rotation and zoom (as MONAI ``RandAffined``)."""

    prob: float = Field(default=0.3, ge=0.0, le=1.0)
    """Probability of a random rotation + zoom."""
    rotate_deg: float = Field(default=15.0, ge=0.0)
    """In-plane rotation by an angle in [-rotate_deg, rotate_deg] degrees."""
    scale: float = Field(default=0.15, ge=0.0)
    """Zoom range as a fraction: 0.15 = scale in [0.85, 1.15]."""


class FlipConfig(_Section):
    """Random flips."""

    prob: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability of a flip (0 by default: left/right labels would swap in some datasets)."""
    axes: list[int] = [0]
    """Spatial axes of the 2D slice to flip (0 = rows, 1 = columns)."""


class NoiseConfig(_Section):
    """Additive Gaussian noise."""

    prob: float = Field(default=0.15, ge=0.0, le=1.0)
    """Probability of adding Gaussian noise."""
    std: float = Field(default=0.1, ge=0.0)
    """Standard deviation of the Gaussian noise, in normalised intensity units."""


class ScaleIntensityConfig(_Section):
    """Random intensity scaling."""

    prob: float = Field(default=0.15, ge=0.0, le=1.0)
    """Probability of an intensity scaling."""
    factor: float = Field(default=0.25, ge=0.0)
    """Scale intensities by (1 + u), u in [-factor, factor]."""


class LowResolutionConfig(_Section):
    """Simulated low resolution (as MONAI ``RandSimulateLowResolution``, nnU-Net's ``SimulateLowResolutionTransform``).

    The slice is shrunk by a random zoom (bilinear, centre-aligned, so the image stays on its label) and enlarged
    back (bicubic, as prediction enlarges a coarse scan), so the model also sees the blur of a scan from a coarser
    scanner that prediction resamples to the target spacing. Off by default: with nnU-Net's 0.25 a 1 mm
    hippocampus model scored the same, not better, on scans from a 1.5 x 1.5 x 1 mm grid (0.8641 against its
    ceiling 0.8701, vs 0.8665 against 0.8722 without it; one fold, ``benchmarks/mixed_spacing.py``).
    """

    prob: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability of simulating a lower resolution (nnU-Net uses 0.25)."""
    zoom: tuple[float, float] = (0.5, 1.0)
    """Range of the zoom factor: 0.5 = half the pixels along each slice axis, then back to full size."""

    @model_validator(mode="after")
    def _zoom_range(self) -> LowResolutionConfig:
        lo, hi = self.zoom
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"zoom must be a range within (0, 1], low first, got {list(self.zoom)}")
        return self


class GammaConfig(_Section):
    """Random gamma (contrast) adjustment."""

    prob: float = Field(default=0.15, ge=0.0, le=1.0)
    """Probability of a gamma adjustment."""
    gamma: tuple[float, float] = (0.7, 1.5)
    """Range of the gamma exponent applied to the intensities."""


class InvertedGammaConfig(_Section):
    """Random gamma on the inverted intensities (MONAI ``RandAdjustContrastd(invert_image=True)``, nnU-Net's
    ``GammaTransform(invert_image=True)``).

    The slice stack is negated, gamma-adjusted with its mean and standard deviation kept, and negated back: dark
    structures are brightened or darkened as gamma does for bright ones, so the model learns shapes and edges
    rather than one dataset's brightness order. nnU-Net trains with it at 0.1. Off by default (measured on
    LA2018 only, ``benchmarks/choices.md``).
    """

    prob: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability of an inverted gamma adjustment (nnU-Net uses 0.1)."""
    gamma: tuple[float, float] = (0.7, 1.5)
    """Range of the gamma exponent applied to the negated intensities."""


class IntensityCurveConfig(_Section):
    """Random intensity curve: each picked slice stack's intensities are mapped through a random smooth curve.

    ``points`` values drawn from U(0, 1) are placed evenly over the stack's 0.5th-99.5th percentile range (values
    beyond it take the end values) and joined linearly; the result gets the stack's old mean and standard
    deviation again. The curve may rise, fall or turn, so bright can become dark and the reverse: the model
    learns edges and shapes rather than one protocol's brightness order (the idea of MONAI's
    ``RandIntensityRemap``, whose curve is noise on a straight line; here it is smooth and may turn). Off by
    default; ``configs/la2018.yaml`` uses 0.3 for its one dark-blood scan (paired 5-fold CV 0.894 vs 0.884,
    ``benchmarks/choices.md``). Turn it on for MRI sets whose scans differ in contrast (protocols, scanners,
    dark- and bright-blood sequences); where every scan shares one protocol it costs a little (hippocampus
    5-fold 0.887 with 0.3 vs 0.890 without), and on CT it would undo what Hounsfield units mean.
    """

    prob: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability of remapping a sample's intensities."""
    points: int = Field(default=5, ge=2, le=64)
    """Control points of the curve: 2 is a straight line (rising or falling); more allow more turns."""


class AugmentationConfig(_Section):
    """Training augmentation, applied to whole batches; each transform as MONAI's of the same name (the intensity
    curve has no MONAI twin).

    Validation and prediction use none of them.
    """

    enabled: bool = True
    """Master switch: ``false`` trains without any augmentation."""
    elastic: ElasticConfig = ElasticConfig()
    affine: AffineConfig = AffineConfig()
    flip: FlipConfig = FlipConfig()
    noise: NoiseConfig = NoiseConfig()
    scale_intensity: ScaleIntensityConfig = ScaleIntensityConfig()
    low_resolution: LowResolutionConfig = LowResolutionConfig()
    gamma: GammaConfig = GammaConfig()
    inverted_gamma: InvertedGammaConfig = InvertedGammaConfig()
    intensity_curve: IntensityCurveConfig = IntensityCurveConfig()


class ModelConfig(_Section):
    """The network: one of the hand-built UNet family (``medseg.models``)."""

    architecture: Literal["unet", "attention_unet", "residual_unet", "unet_plus_plus"] = "unet"
    """``unet`` (the seed's), ``attention_unet`` (gated skips), ``residual_unet``, ``unet_plus_plus`` (nested skips)."""
    depth: int = Field(default=4, ge=1, le=7)
    """Down-sampling levels; slices are padded to a multiple of ``2 ** depth`` (and of ``pad_multiple``)."""
    base_features: int = Field(default=32, ge=4)
    """Channels of the first UNet level; each level down doubles them (the seed used 64)."""
    bilinear: bool = False
    """Upsample with bilinear interpolation instead of transposed convolutions (fewer parameters)."""
    checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (slower)."""
    summary_patch: tuple[int, int] | None = None
    """H, W of the input ``--stage summary`` tabulates; ``null`` = the training patch found from the data."""


class LossConfig(_Section):
    """``loss = bce_weight * BCE + dice_weight * (1 - soft Dice)``, class-weighted."""

    mode: Literal["auto", "sigmoid", "softmax"] = "auto"
    """``sigmoid``: one output per foreground class (BCE); ``softmax``: one per class incl. background (CE);
    ``auto``: sigmoid up to 4 foreground classes, softmax for more (``medseg.models.head.resolve_mode``: with
    many structures, e.g. multi-organ CT, independent sigmoids learn far slower; benchmarks/loss_mode.py).
    Overlapping regions (``data.regions`` or ``dataset.json``) take ``auto``, which trains one sigmoid per region
    (mode ``regions``); ``sigmoid`` and ``softmax`` are refused for them."""
    bce_weight: float = Field(default=1.0, ge=0.0)
    """Weight of the cross-entropy term."""
    dice_weight: float = Field(default=1.0, ge=0.0)
    """Weight of the soft Dice term."""
    class_weights: Literal["auto", "none"] | list[float] = "auto"
    """``auto`` = inverse voxel frequency of the training labels, normalised and clipped. A sigmoid loss uses the
    foreground weights only, relative to each other (the background has no output): with one foreground class
    they have no effect (beyond float rounding)."""
    class_weight_range: tuple[float, float] = (0.2, 5.0)
    """``auto`` class weights are clipped to this range."""


class TrainingConfig(_Section):
    """The training loop: epochs, optimiser, sampling, precision, device."""

    epochs: int = Field(default=50, ge=1)
    """Number of training epochs (the learning-rate schedule is planned for them)."""
    max_minutes: float | None = Field(default=None, gt=0)
    """Wall-clock budget (training and validation); checked before every step, so training stops at the step that
    crosses it, then validates (the LR schedule is planned for it). A run that finishes its epochs inside the budget
    never takes its LR from the clock, so it repeats bit for bit."""
    batch_size: Literal["auto"] | int = "auto"
    """Slices per optimisation step; ``auto`` = a step of about 32 x 48 x 64 pixels (today's hippocampus step)."""
    lr: float = Field(default=1e-3, gt=0)
    """Initial learning rate."""
    weight_decay: float = Field(default=1e-4, ge=0)
    """Optimizer weight decay."""
    scheduler: Literal["poly", "cosine", "plateau", "none"] = "poly"
    """Learning-rate schedule."""
    val_every: Literal["auto"] | int = "auto"
    """Validate every N epochs (and after the last); the checkpoint with the best validation Dice is ``best.pt``.
    ``auto`` = after every epoch while a validation takes at most a quarter of an epoch's training time (or under
    10 s), else every k epochs so that it takes about a fifth of the time (CT-sized slices;
    ``medseg.training.validation_schedule``)."""
    early_stopping: int | None = Field(default=None, ge=1)
    """Stop after this many validations without improvement; ``None`` = never."""
    grad_clip: float | None = Field(default=12.0, gt=0)
    """Clip the gradient norm to this value; ``None`` = no clipping."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision; ``auto`` = bf16 where the device supports it, else fp32."""
    channels_last: Literal["auto"] | bool = "auto"
    """Channels-last memory format; ``auto`` decides by device."""
    foreground_fraction: float = Field(default=0.33, ge=0.0, le=1.0)
    """Share of each batch drawn from slices that contain labels."""
    num_workers: int | Literal["auto"] = "auto"
    """Data-loader worker processes; ``auto`` decides from the CPU count."""
    device: DeviceName = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""
    distributed_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend when launched with ``torchrun``; ``auto`` = nccl on GPUs, gloo on CPU."""
    deterministic: bool = False
    """Use deterministic kernels (reproducible, slower on GPU). On the CPU two runs of a config repeat bit for bit
    without it too, unless ``max_minutes`` cuts them short (measured: the quickstart, two processes)."""
    seed: int = 0
    """Seed of weight initialisation, sampling and augmentation."""
    resume: bool = False
    """Continue from ``<output.dir>/checkpoints/last.pt`` (also extends a finished run to more epochs)."""

    @model_validator(mode="after")
    def _batch_positive(self) -> TrainingConfig:
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError(f"batch_size must be auto or >= 1, got {self.batch_size}")
        if isinstance(self.val_every, int) and self.val_every < 1:
            raise ValueError(f"val_every must be auto or >= 1, got {self.val_every}")
        return self


class PostprocessingConfig(_Section):
    """Clean-up of predicted masks; ``auto`` decisions are made on the validation cases during training."""

    largest_component: Literal["auto"] | bool = "auto"
    """``auto`` = on for the classes where it improved validation Dice during training."""
    fill_holes: Literal["auto"] | bool = "auto"
    """Fill holes in each predicted class; ``auto`` = for the classes where it improved validation Dice."""


class DicomOutputConfig(_Section):
    """Header fields and options of DICOM SEG / RTSTRUCT outputs (``inference.output_format``)."""

    series_description: str = "medseg segmentation"
    series_number: int = Field(default=901, ge=0)
    """Series number of the new series (9xx keeps derived series apart from the scanner's own numbers)."""
    manufacturer: str = "medseg"
    omit_empty_frames: bool = False
    """SEG: leave out frames without foreground. Default keeps one frame per source slice: viewers that pair
    frames with slices by order or expect a full stack display it correctly (see ``medseg.io.dicom_seg``)."""
    fractional: bool = False
    """SEG: FRACTIONAL segments from the class probabilities instead of BINARY ones from the mask."""


class QCConfig(_Section):
    """Quality control of every predicted scan (``medseg.inference.qc``): which checks flag a scan, and when.

    Each check compares a number measured on the scan or its mask with the training-time reference stored in the
    checkpoint (``qc_reference``) as a robust z-score (distance from the reference median in units of
    1.4826 x MAD); a scan is flagged when a z-score passes its threshold. The defaults flag 1 of the 77 normal
    held-out hippocampus scans of ``benchmarks/qc_eval.py`` (5 folds) and flag a CT crop given to the hippocampus
    model."""

    enabled: bool = True
    """``false``: no QC (the ``qc_flags``/``qc_score`` columns stay empty)."""
    intensity_z: float = Field(default=6.0, gt=0)
    """Input check: intensity statistics (share of negative voxels, percentiles of the z-scored scan) further than
    this from the training scans'."""
    geometry_factor: float = Field(default=1.5, gt=1)
    """Input check: a voxel spacing or a shape more than this factor outside the training scans' range."""
    volume_z: float = Field(default=3.5, gt=0)
    """Output check: a class volume (mL) this far from the training labels' volumes."""
    components_z: float = Field(default=3.5, gt=0)
    """Output check: more connected components of a class than the validation predictions had, by this z."""
    confidence_z: float = Field(default=3.5, gt=0)
    """Output check: mean confidence in the predicted foreground lower (or its entropy higher) than the validation
    predictions', by this z."""


class InferenceConfig(_Section):
    """Prediction: which scans, which checkpoint, how masks are written."""

    input: Path | None = None
    """Folder of scans (NIfTI/NRRD/MHA files and/or DICOM series folders, searched recursively).
    ``None`` = the validation cases of ``data``."""
    checkpoint: Path | None = None
    """``None`` = ``<output.dir>/checkpoints/best.pt``."""
    batch_size: int | Literal["auto"] = "auto"
    """Slices per forward pass (and per slab of labels); ``auto`` = as many as fit ``memory_gb`` for the scan's
    slice size and the model's width, at most 64 (``medseg.inference.budget``). Also the validation batch."""
    memory_gb: float | None = Field(default=None, gt=0)
    """Memory budget (GiB) of one forward batch for ``batch_size: auto``; ``None`` = from the machine (CPU: a
    fifth of the available memory, at most 1 GiB; CUDA: half the free GPU memory)."""
    tta_flips: bool = False
    """Test-time augmentation: also predict flipped slices and average (4x slower). Only for models trained with
    flips (``augmentation.flip``): a model that never saw a flipped slice segments them badly, and on the
    hippocampus CV models (trained without flips) averaging in flips dropped mean Dice from 0.889 to 0.03
    (``benchmarks/inference_choices.py``)."""
    tta_scales: list[float] = [1.0]
    """Test-time scales: factors on the in-plane spacing the model sees (the plan's target spacing, or the scan's
    own where the plan keeps it). The scan is predicted at each, and the probabilities are re-sampled back onto
    its grid and averaged before the labels are taken: one pass per factor, and one normalised copy of the scan
    per factor in memory. ``[1.0]`` = once, at the plan's spacing. Each in [0.5, 2]. Measured on LA2018's five
    cross-validation models (``benchmarks/choices.md``): ``[0.9, 1.0, 1.1]`` 0.892 against 0.891 mean Dice, at 2.6x
    the prediction time."""
    postprocessing: PostprocessingConfig = PostprocessingConfig()
    """Connected-component clean-up of the predicted masks."""
    save_probabilities: bool = False
    """Also write float32 probability maps next to the masks."""
    output_format: Literal["nii.gz", "nrrd", "mha", "seg.nrrd", "dicom-seg", "rtstruct"] = "nii.gz"
    """File format of the predicted masks. ``seg.nrrd``: a 3D Slicer segmentation (a named segment per class, on
    the scan's grid; probability maps beside it as NRRD). ``dicom-seg`` / ``rtstruct`` (``<case>.dcm``) need
    DICOM-series inputs: a NIfTI/NRRD/MHA input is a failed case (or an error at start when no input is a DICOM
    series)."""
    also_nifti: bool = False
    """With a DICOM ``output_format``: also write the mask as ``<case>.nii.gz``."""
    dicom: DicomOutputConfig = DicomOutputConfig()
    """Header fields and options of DICOM SEG / RTSTRUCT outputs."""
    overwrite: bool = False
    """Replace existing mask files instead of failing on them."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Inference precision; ``auto`` = bf16 where the device supports it, else fp32."""
    device: DeviceName = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""
    qc: QCConfig = QCConfig()
    """Quality-control flags per predicted scan (``qc_flags``, ``qc_score`` in ``predictions.csv``)."""

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return value

    @field_validator("tta_scales")
    @classmethod
    def _scales_in_range(cls, value: list[float]) -> list[float]:
        problem = tta_scales_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


#: Test-time scales allowed (``inference.tta_scales``): beyond these the model sees anatomy half or twice the size
#: it was trained on.
TTA_SCALE_RANGE = (0.5, 2.0)


def tta_scales_problem(scales: Any) -> str | None:
    """Why ``scales`` are not valid test-time scales (a non-empty list of numbers in :data:`TTA_SCALE_RANGE`)."""
    try:
        values = [float(v) for v in scales]
    except (TypeError, ValueError):
        return f"expected a list of numbers, got {scales!r}"
    lo, hi = TTA_SCALE_RANGE
    if not values:
        return "needs at least one scale ([1.0] = predict once, at the plan's spacing)"
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        return f"each scale must be in [{lo:g}, {hi:g}], got {bad}"
    return None


class EvaluationConfig(_Section):
    """Comparison of predicted masks with ground truth: Dice, IoU, HD95, ASSD, surface Dice, volumes, overlays."""

    ground_truth: Path | None = None
    """Folder of ground-truth masks named like the predictions; ``None`` = the labels of the predicted cases."""
    overlays: int = Field(default=3, ge=0)
    """Number of best and of worst cases to draw as PNG overlays."""
    both_empty: Literal["one", "skip"] = "one"
    """Dice and IoU of a class absent from both the prediction and the ground truth: ``one`` counts a perfect 1
    (the BraTS and MSD convention); ``skip`` leaves it out of every mean, as nnU-Net does, for sets where many
    structures lie outside many scans (partial-field-of-view multi-organ CT), which 1s would lift. The ``flag``
    column says ``both_empty`` either way; validation Dice in training always counts 1."""
    surface_tolerance_mm: float = Field(default=1.0, ge=0.0)
    """Tolerance (mm) of the normalised surface Dice (``nsd`` in ``metrics.csv``): the share of both masks'
    surface voxels within this distance of the other's surface. Set it to the structure's inter-rater border
    variability where known (Metrics Reloaded); 1 mm is about one voxel of a typical MRI."""


class OutputConfig(_Section):
    """Where a run writes its results."""

    dir: Path = Path("runs/medseg")
    """Everything a run writes goes under this folder (layout in README.md)."""


class Config(_Section):
    """A whole medseg run."""

    data: DataConfig = DataConfig()
    """Where the cases are."""
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    training: TrainingConfig = TrainingConfig()
    inference: InferenceConfig = InferenceConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    stages: list[Stage] = ["train", "predict", "evaluate"]
    """Stages to run, in this order; ``--stage`` on the command line replaces it. ``plan`` reads and checks every
    case and writes ``plan.json`` without training (left out when ``train`` runs, which does that first)."""


_PATH_KEYS = (
    ("data", "root"),
    ("data", "cache_dir"),
    ("inference", "input"),
    ("inference", "checkpoint"),
    ("evaluation", "ground_truth"),
    ("output", "dir"),
)


def _format_validation_error(err: ValidationError, source: str) -> str:
    # One paragraph: a header line, then one line per offending key path (union branches merged into one line).
    problems: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for e in err.errors():
        key = _key_path(e["loc"])
        if e["type"] == "extra_forbidden":
            problems.setdefault(key, []).append(_unknown_key_text(e["loc"]))
            continue
        if e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            msg = "should be a section: a mapping of keys, not a single value"
        elif str(e["msg"]).startswith("Input should be "):
            msg = "should be " + str(e["msg"]).removeprefix("Input should be ")
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
        problems.setdefault(key, []).append(msg)
        inputs.setdefault(key, e.get("input"))
    lines = [f"Invalid configuration in {source}:"]
    for key, msgs in problems.items():
        if msgs[0].startswith("unknown key"):
            lines.append(f"  - {msgs[0]}")
            continue
        got = inputs.get(key)
        got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        unique = list(dict.fromkeys(msgs))
        if all(m.startswith("should be ") for m in unique):
            text = "should be " + " or ".join(m.removeprefix("should be ") for m in unique)
        else:
            text = "; ".join(unique)
        sep = " " if text.startswith("should be ") else ": "
        lines.append(f"  - '{key or '(top level)'}'{sep}{text}{got_text}")
    lines.append("  The config reference in README.md lists every section, key and accepted value.")
    return "\n".join(lines)


def _key_path(loc: tuple[Any, ...]) -> str:
    """The user-facing key path of a pydantic error location, without union-branch tags like ``bool``."""
    parts: list[str] = []
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif model is not None and part in model.model_fields:
            parts.append(str(part))
            annotation = model.model_fields[str(part)].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        elif model is not None:
            parts.append(str(part))  # an unknown key: keep it, it is what the user wrote
            model = None
        # else: a union-branch tag such as "literal['auto']" or "list[float]": not part of the key path
    return ".".join(parts)


def _unknown_key_text(loc: tuple[Any, ...]) -> str:
    key = _key_path(loc)
    parent, name = loc[:-1], str(loc[-1])
    accepted = _accepted_keys(parent)
    if not accepted:
        return f"unknown key '{key}'"
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = f"in '{_key_path(parent)}'" if parent else "at the top level"
    return f"unknown key '{key}'{hint}; accepted keys {where}: {', '.join(accepted)}"


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
        child = node.get(part)
        if child is None:  # absent, or a YAML section with every key commented out
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}=...: '{part}' is a single value, not a section with keys")
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
            raise ConfigError(f"--set '{item}': expected key.path=value, e.g. --set training.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. an unbalanced bracket in a glob): keep the text as a string
        parsed.append((key.strip(), value))
    return parsed


def _fill_empty_sections(raw: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    # A YAML section whose keys are all commented out parses as None; it means "all defaults", not an error.
    out = dict(raw)
    for name, value in raw.items():
        field = model.model_fields.get(name) if isinstance(name, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        if value is None:
            out[name] = {}
        elif isinstance(value, dict):
            out[name] = _fill_empty_sections(value, annotation)
    return out


def config_from_dict(raw: dict[str, Any], *, base_dir: Path, source: str = "config") -> Config:
    """Validates a config mapping; relative paths resolve against ``base_dir``.

    Args:
        raw: The parsed YAML mapping (sections -> keys).
        base_dir: Folder that relative paths are relative to (the config file's folder).
        source: How to name the config in error messages.

    Returns:
        The validated :class:`Config` with absolute paths.

    Raises:
        ConfigError: Naming each offending key path and what it accepts.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid configuration in {source}: it must be a mapping of sections, got {raw!r}")
    try:
        cfg = Config.model_validate(_fill_empty_sections(raw, Config))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    for section, key in _PATH_KEYS:
        sect = getattr(cfg, section)
        value = getattr(sect, key)
        if value == "auto":  # the keys that accept it decide the folder themselves
            continue
        if value is not None and not Path(value).expanduser().is_absolute():
            setattr(sect, key, (base_dir / Path(value).expanduser()).resolve())
        elif value is not None:
            setattr(sect, key, Path(value).expanduser())
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config, applies ``--set`` overrides and validates it.

    Relative paths written in the file resolve against the file's folder (so a config works from any working
    directory); relative paths given in ``overrides`` resolve against the current directory, like any other
    command-line path.

    Args:
        path: YAML file.
        overrides: ``key.path=value`` strings applied on top of the file (values are YAML: ``3``, ``true``,
            ``[1, 2]``, ``null``).

    Returns:
        The validated :class:`Config` with absolute paths.

    Raises:
        ConfigError: Missing or unparsable file, unknown key, wrong type (the message names the key path).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(f"Config file '{path}' {what}. Pass a YAML file such as configs/quickstart.yaml.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"Config file '{path}' is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Config file '{path}' cannot be read: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, got {type(raw).__name__}")
    parsed = parse_overrides(overrides or [])
    for key, value in parsed:
        if tuple(key.split(".")) in _PATH_KEYS and isinstance(value, str) and value and value != "auto":
            value = str((Path.cwd() / Path(value).expanduser()).resolve())
        _set_dotted(raw, key, value)
    source = f"{path} (with --set overrides)" if parsed else str(path)
    return config_from_dict(raw, base_dir=path.parent.resolve(), source=source)


def save_config(cfg: Config, path: str | Path, *, comment: str | None = None) -> None:
    """Writes the resolved config as YAML (atomically); it loads back with :func:`load_config`.

    Args:
        cfg: The config to write (paths are written absolute).
        path: Destination ``.yaml`` file.
        comment: Optional text written as ``#`` comment lines at the top.
    """
    from medseg.io.atomic import atomic_write_text

    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    atomic_write_text(Path(path), head + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# ------------------------------------------------------------------------------------------ config reference


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "`null`"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, UnionType):
        return " \\| ".join(_type_text(a) for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    names = {bool: "`true` \\| `false`", int: "integer", float: "number", str: "text", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds_text(metadata: list[Any]) -> str:
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in symbols.items() if hasattr(m, attr)]
    return f" ({', '.join(parts)})" if parts else ""


def _default_text(value: Any) -> str:
    text = yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("...").strip()
    return "`" + text.replace("|", "\\|") + "`"


def _md(text: str) -> str:
    # Docstrings are reStructuredText (``code``, None); the reference is Markdown read by YAML writers.
    return text.replace("``None``", "``null``").replace("``", "`")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_reference_markdown() -> str:
    """The config reference of README.md, generated from the schema's types, defaults and docstrings.

    ``python -m medseg.config`` prints it; a test keeps README.md's copy identical.
    """
    out: list[str] = []

    def section(model: type[BaseModel], path: str) -> None:
        doc = _md(" ".join((model.__doc__ or "").split()))
        out.extend(
            [f"#### `{path}`", "", doc, "", "| key | default | accepts | meaning |", "| --- | --- | --- | --- |"]
        )
        nested = []
        for name, fld in model.model_fields.items():
            annotation = fld.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, f"{path}.{name}"))
                out.append(f"| `{name}` | | section | see `{path}.{name}` below |")
                continue
            accepts = _type_text(annotation) + _bounds_text(fld.metadata)
            meaning = _md(" ".join((fld.description or "").split())).replace("|", "\\|")
            out.append(f"| `{name}` | {_default_text(fld.default)} | {accepts} | {meaning} |")
        out.append("")
        for sub, sub_path in nested:
            section(sub, sub_path)

    for name, fld in Config.model_fields.items():
        annotation = fld.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section(annotation, name)
    stages = Config.model_fields["stages"]
    out.extend(
        [
            "#### `stages`",
            "",
            f"{_md(stages.description or '')} Accepts a list of {_type_text(get_args(stages.annotation)[0])}; "
            f"default {_default_text(stages.default)}.",
            "",
        ]
    )
    return "\n".join(out)


REFERENCE_MARKERS = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")


def update_reference_in(markdown: str) -> str:
    """``markdown`` with the text between :data:`REFERENCE_MARKERS` replaced by :func:`config_reference_markdown`."""
    start, end = REFERENCE_MARKERS
    head, sep, rest = markdown.partition(start)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"the markers {start} and {end} are missing")
    return f"{head}{start}\n\n{config_reference_markdown()}\n{end}{tail}"


if __name__ == "__main__":
    # python -m medseg.config            prints the reference
    # python -m medseg.config README.md  rewrites the reference section of README.md
    import sys

    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.write_text(update_reference_in(target.read_text()))
    else:
        print(config_reference_markdown())
