"""`Predictor`: a trained checkpoint applied to whole volumes, masks returned on the scan's own grid.

::

    predictor = Predictor.from_checkpoint("runs/x/checkpoints/best.pt")
    mask = predictor.predict(medseg.load_volume("scan.nii.gz"))   # uint8 labels, same affine/header as the scan

Everything that shaped the model's input in training comes from the checkpoint (normalisation parameters, slice
axis, 2.5D context, training patch size, sigmoid/softmax mode, classes), so prediction cannot drift from it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from torch import nn

from medseg.allocator import keep_freed_buffers
from medseg.config import InferenceConfig, PostprocessingConfig, QCConfig, tta_scales_problem
from medseg.data.label_values import is_identity, label_values_problem, to_stored
from medseg.data.normalization import NormalizationParams, normalize
from medseg.data.regions import Regions
from medseg.data.resample import (
    InPlaneGrid,
    plan_grid,
    resample_image,
    resample_probabilities_back,
    resample_slices_back,
    scaled_target_spacing,
)
from medseg.data.slicing import channels_to_slices, slices_to_volume
from medseg.errors import CheckpointError, ConfigError
from medseg.inference.budget import AUTO, BatchSizeOption, check_batch_size, settings_for_slices
from medseg.inference.forward import forward_slices, predict_volume_probs
from medseg.inference.postprocess import apply_postprocessing
from medseg.inference.qc import ConfidenceMaps, QCResult, assess, class_volumes, scan_features
from medseg.inference.settings import InferenceSettings
from medseg.inference.slabs import View, predict_volume_labels
from medseg.io.channels import ChannelStack
from medseg.io.orientation import Reorientation, to_canonical
from medseg.models.checkpoint import load_checkpoint, model_from_checkpoint
from medseg.models.fusion import fold_batchnorm
from medseg.models.head import probs_to_labels
from medseg.volume import Volume

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; annotations only

log = logging.getLogger(__name__)


class PredictorOptions(TypedDict, total=False):
    """The runtime options of :class:`Predictor` (see its constructor), for :meth:`Predictor.from_checkpoint`."""

    device: str | torch.device
    precision: str
    batch_size: BatchSizeOption
    tta_flips: bool
    tta_scales: Sequence[float]
    postprocessing: PostprocessingConfig | None
    channels_last: str | bool
    memory_gb: float | None


@dataclass(frozen=True)
class ModelSpec:
    """What the model expects and produces, as recorded in the checkpoint.

    Attributes:
        classes: Class names including background at index 0.
        mode: ``"sigmoid"``, ``"softmax"`` or ``"regions"``.
        normalization: Intensity normalisation fitted in training.
        slice_axis: Voxel axis (0, 1, 2) the 2D model slices along.
        context_slices: Neighbouring slices on each side fed as extra channels.
        patch_hw: Training patch size; prediction pads slices to at least this.
        pad_multiple: Slices are padded to a multiple of this.
        postprocessing: The plan decided on validation data (``{"largest_component": [...], "fill_holes": [...]}``).
        target_spacing: The plan's target spacing: scans are resampled in-plane to it and the probabilities back
            onto the scan's grid; ``None`` (checkpoints from before plans) = no resampling.
        channels: Input channel names in input order (several: predict a :class:`ChannelStack`).
        channel_patterns: ``data.channel_patterns`` of a ``folders`` dataset: how a case folder's files are
            matched to the channels at prediction.
        label_values: The value each class was stored as in the training labels; written masks use them.
            ``None`` (and checkpoints from before ``data.label_values``) = class k as k.
        regions: The overlapping regions the classes are (mode ``"regions"``; ``medseg.data.regions``), else
            ``None``.
    """

    classes: tuple[str, ...]
    mode: str
    normalization: NormalizationParams
    slice_axis: int
    context_slices: int
    patch_hw: tuple[int, int] | None = None
    pad_multiple: int = 16
    postprocessing: dict[str, list[int]] | None = None
    target_spacing: tuple[float, float, float] | None = None
    channels: tuple[str, ...] = ("image",)
    channel_patterns: tuple[str, ...] = ()
    label_values: tuple[int, ...] | None = None
    regions: Regions | None = None


@dataclass(frozen=True)
class NetworkInput:
    """A scan as the model sees it: closest-RAS voxel order, normalised, resampled in-plane to the plan's spacing.

    Attributes:
        image: ``(I, J, K)`` float32, or ``(C, I, J, K)`` for a model with several input channels.
        grid: How the scan's in-plane grid (in closest-RAS order: ``grid.source_shape``) maps onto the plan's
            (identity where the scan is at the target).
        reorientation: From the scan's voxel order to closest-RAS and back.
    """

    image: np.ndarray
    grid: InPlaneGrid
    reorientation: Reorientation


def _label_values(ckpt: dict[str, Any], path: Path, n_classes: int) -> tuple[int, ...] | None:
    values = ckpt.get("label_values")
    if values is None:
        return None
    problem = label_values_problem(values, n_classes)
    if problem:
        raise CheckpointError(f"Checkpoint '{path}': {problem}")
    return None if is_identity(values) else tuple(int(v) for v in values)


def _regions(ckpt: dict[str, Any], path: Path, n_classes: int) -> Regions | None:
    try:
        regions = Regions.from_stored(ckpt.get("regions"))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"Checkpoint '{path}': unreadable regions {ckpt.get('regions')!r}: {err}") from None
    problem = None if regions is None else regions.problem()
    if regions is not None and (problem or len(regions.classes) != n_classes):
        why = problem or f"they give {len(regions.classes)} classes, the checkpoint has {n_classes}"
        raise CheckpointError(f"Checkpoint '{path}': regions {ckpt.get('regions')} do not fit: {why}")
    if (regions is not None) != (ckpt.get("mode") == "regions"):
        raise CheckpointError(f"Checkpoint '{path}': loss mode {ckpt.get('mode')!r} with regions {ckpt.get('regions')}")
    return regions


def _resolve_postprocessing(
    setting: PostprocessingConfig | None, decided: dict[str, list[int]] | None, n_classes: int
) -> tuple[list[int], list[int]]:
    """Turns true/false/auto per step into the list of classes it applies to."""
    setting = setting or PostprocessingConfig()
    decided = decided or {}
    all_fg = list(range(1, n_classes))

    def one(value: str | bool, key: str) -> list[int]:
        if value is True:
            return all_fg
        if value is False:
            return []
        # auto: what validation decided in training; a checkpoint without a decision means "off".
        return sorted(int(c) for c in decided.get(key, []) if 0 < int(c) < n_classes)

    return one(setting.largest_component, "largest_component"), one(setting.fill_holes, "fill_holes")


def _plan_target_spacing(ckpt: dict[str, Any], path: Path) -> tuple[float, float, float] | None:
    # Checkpoints written before plans existed have no 'plan': they predict without resampling, as before.
    plan = ckpt.get("plan")
    if plan is None:
        return None
    from medseg.data.plan import Plan

    return Plan.from_dict(plan, source=f"Checkpoint '{path}'").target_spacing


def _field(ckpt: dict[str, Any], key: str, path: Path) -> Any:
    if key not in ckpt:
        raise CheckpointError(f"Checkpoint '{path}' has no '{key}' field; is it a medseg checkpoint?")
    return ckpt[key]


class Predictor:
    """Applies a 2D(.5) segmentation model to 3D volumes.

    Build it with :meth:`from_checkpoint`; the constructor is for models held in memory (e.g. tests, or the
    trainer validating its current weights).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: BatchSizeOption = AUTO,
        tta_flips: bool = False,
        tta_scales: Sequence[float] = (1.0,),
        postprocessing: PostprocessingConfig | None = None,
        channels_last: str | bool = "auto",
        memory_gb: float | None = None,
        qc_reference: dict[str, Any] | None = None,
        qc: QCConfig | None = None,
    ) -> None:
        """Wraps a copy of ``model`` (on ``device``, eval mode, BatchNorm folded) with the preprocessing in ``spec``.

        Args:
            model: Maps ``(B, 2k+1, H, W)`` to logits ``(B, n_outputs, H, W)``. The predictor runs an eval-mode
                copy with BatchNorm folded into the convolutions (``medseg.models.fusion``), not ``model`` itself.
            spec: See :class:`ModelSpec`.
            device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (see ``resolve_device``).
            precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (see ``resolve_precision``).
            batch_size: Slices per forward pass, or ``"auto"``: sized per scan from its slice size, the model and
                ``memory_gb`` (``medseg.inference.budget``).
            tta_flips: Average probabilities over flips of the slice axes (4x the compute).
            tta_scales: Test-time scales: factors on the in-plane spacing the model sees (the plan's target, or
                the scan's own where the plan keeps it). The scan is predicted at each, the probabilities are
                re-sampled back onto its grid and averaged there (one pass per factor). ``(1.0,)`` = once, at
                the plan's spacing.
            postprocessing: Per step true/false/auto; ``None`` = auto for both (the checkpoint's decision).
            channels_last: ``auto`` or a bool (see ``resolve_channels_last``).
            memory_gb: Budget of one forward batch for ``batch_size="auto"``; ``None`` = from the machine.
            qc_reference: The checkpoint's ``qc_reference`` (``medseg.inference.qc``); ``None``: no QC.
            qc: QC thresholds (``inference.qc``); ``None`` = defaults.

        Raises:
            ConfigError: Bad device/precision/batch size/memory budget/test-time scale option.
        """
        self.batch_size_option = check_batch_size(batch_size)
        problem = tta_scales_problem(tta_scales)
        if problem is not None:
            raise ConfigError(f"tta_scales: {problem}")
        self.tta_scales = tuple(float(v) for v in tta_scales)
        self.memory_gb = memory_gb
        self.spec = spec
        keep_freed_buffers()  # every scan runs the same batch shapes: no fresh pages per tensor (medseg.allocator)
        # Every forward setting in one frozen object, built once (the trainer's validation uses the same class).
        self.settings = InferenceSettings.resolve(
            n_classes=len(spec.classes),
            mode=spec.mode,
            device=device,
            precision=precision,
            channels_last=channels_last,
            patch_hw=spec.patch_hw,
            pad_multiple=spec.pad_multiple,
            # "auto" is resolved per scan (settings_for); 64, the old default, stands in until then.
            batch_size=64 if self.batch_size_option == AUTO else int(self.batch_size_option),
            tta_flips=tta_flips,
        )
        self.device = self.settings.device
        self.dtype = self.settings.precision
        self.channels_last = self.settings.channels_last
        self.batch_size = self.settings.batch_size
        self.tta_flips = self.settings.tta_flips
        self.largest_component, self.fill_holes = _resolve_postprocessing(
            postprocessing, spec.postprocessing, len(spec.classes)
        )
        # A folded copy (medseg.models.fusion): the caller's model is left as it is.
        model = fold_batchnorm(model.to(self.device))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.qc_reference = qc_reference
        self.qc_settings = qc or QCConfig()

    @classmethod
    def from_config(cls, path: str | Path, inference: InferenceConfig) -> Predictor:
        """Loads a checkpoint with the settings of a config's ``inference`` section (as ``pipelines.run`` does).

        Args:
            path: A ``best.pt`` / ``last.pt`` written by the trainer.
            inference: Device, precision, batch size, test-time flips and postprocessing to use.
        """
        predictor = cls.from_checkpoint(
            path,
            device=inference.device,
            precision=inference.precision,
            batch_size=inference.batch_size,
            tta_flips=inference.tta_flips,
            tta_scales=inference.tta_scales,
            postprocessing=inference.postprocessing,
            memory_gb=inference.memory_gb,
        )
        predictor.qc_settings = inference.qc
        return predictor

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Unpack[PredictorOptions]) -> Predictor:
        """Loads a medseg checkpoint (``medseg.models.checkpoint`` format, either version) for prediction.

        Args:
            path: A ``best.pt`` / ``last.pt`` written by the trainer.
            **options: ``device``, ``precision``, ``batch_size``, ``tta_flips``, ``tta_scales``,
                ``postprocessing``, ``channels_last``, ``memory_gb``: see :meth:`__init__`.

        Raises:
            CheckpointError: Missing/unreadable file, missing fields, or weights that do not fit the model.
        """
        path = Path(path)
        ckpt = load_checkpoint(path)
        classes = tuple(str(c) for c in _field(ckpt, "classes", path))
        context = int(_field(ckpt, "context_slices", path))
        axis = _field(ckpt, "slice_axis", path)
        if axis not in (0, 1, 2):
            raise CheckpointError(f"Checkpoint '{path}': slice_axis must be 0, 1 or 2, got {axis!r}")
        model, net = model_from_checkpoint(ckpt, path)
        channels = tuple(str(c) for c in (ckpt.get("channels") or ["image"]))
        if net.in_channels != len(channels) * (2 * context + 1):
            raise CheckpointError(
                f"Checkpoint '{path}': model takes {net.in_channels} channels but {len(channels)} input channel(s) "
                f"with context_slices={context} imply {len(channels) * (2 * context + 1)}"
            )
        try:
            normalization = NormalizationParams.from_dict(_field(ckpt, "normalization", path))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"Checkpoint '{path}': bad normalization parameters: {err}") from None
        patch = ckpt.get("patch_hw")
        pad_multiple = (
            ckpt.get("pad_multiple")
            or ((ckpt.get("config") or {}).get("preprocessing") or {}).get("pad_multiple")
            or net.pad_multiple
        )
        spec = ModelSpec(
            classes=classes,
            mode=str(_field(ckpt, "mode", path)),
            normalization=normalization,
            slice_axis=int(axis),
            context_slices=context,
            patch_hw=(int(patch[0]), int(patch[1])) if patch else None,
            pad_multiple=math.lcm(int(pad_multiple), net.pad_multiple),  # never less than the network needs
            postprocessing=ckpt.get("postprocessing"),
            target_spacing=_plan_target_spacing(ckpt, path),
            channels=channels,
            channel_patterns=tuple(str(p) for p in (ckpt.get("channel_patterns") or [])),
            label_values=_label_values(ckpt, path, len(classes)),
            regions=_regions(ckpt, path, len(classes)),
        )
        flip_prob = (((ckpt.get("config") or {}).get("augmentation") or {}).get("flip") or {}).get("prob", 0.0)
        if options.get("tta_flips") and not flip_prob:
            # Measured: on hippocampus models trained without flips, flip TTA took mean Dice from 0.889 to 0.03.
            log.warning(
                "Checkpoint '%s' was trained without flip augmentation (augmentation.flip.prob = 0): test-time "
                "flips show it slices it never saw and are likely to make its masks worse; set "
                "inference.tta_flips: false unless you measured otherwise",
                path,
            )
        return cls(model, spec, qc_reference=ckpt.get("qc_reference"), **options)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names including background at index 0."""
        return self.spec.classes

    @property
    def n_classes(self) -> int:
        """Number of classes including background."""
        return len(self.spec.classes)

    @property
    def membership(self) -> np.ndarray | None:
        """Which painted classes each region holds (``Regions.membership``) for a region model, else ``None``."""
        return None if self.spec.regions is None else self.spec.regions.membership()

    def settings_for(self, shape: Sequence[int]) -> InferenceSettings:
        """The forward settings for a canonical ``(I, J, K)`` volume: ``batch_size: auto`` resolved for its slices."""
        axis = self.spec.slice_axis
        hw = [int(n) for a, n in enumerate(shape) if a != axis]
        in_channels = len(self.spec.channels) * (2 * self.spec.context_slices + 1)
        return settings_for_slices(self.settings, self.batch_size_option, self.model, in_channels, hw, self.memory_gb)

    def read_input(self, path: str | Path) -> Volume | ChannelStack:
        """Reads one input the way this model needs it: a scan, or a case's channels (folder or 4D file).

        Raises:
            MissingChannelError: A case folder lacks a channel pattern's file, or a 4D file has too few channels.
            ChannelMismatchError: A channel is not on the first channel's grid.
        """
        from medseg.data.cases import is_dicom_folder
        from medseg.io import load_volume
        from medseg.io.channels import MissingChannelError, load_channels, match_channel_files
        from medseg.io.scans import nnunet_channel_files

        path = Path(path)
        if path.is_dir() and self.spec.channel_patterns and not is_dicom_folder(path):
            # A case folder of a folders-layout model, one channel or several (a DICOM series folder is a scan).
            matched = match_channel_files(path, self.spec.channel_patterns)
            return (
                load_volume(matched[0]) if len(self.spec.channels) == 1 else load_channels(matched, self.spec.channels)
            )
        if len(self.spec.channels) == 1:
            return load_volume(path)
        files = nnunet_channel_files(path, len(self.spec.channels))
        if files is not None:  # nnU-Net naming: <case>_0000, <case>_0001, ... beside each other
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise MissingChannelError(f"'{path}': channel file(s) {', '.join(missing)} do not exist")
            return load_channels(files, self.spec.channels)
        return load_channels([path], self.spec.channels)  # MSD: one 4D file holding every channel

    def network_input(self, volume: Volume | ChannelStack) -> NetworkInput:
        """What the model is fed for ``volume`` before it is cut into slices (see :class:`NetworkInput`).

        The predictor's own first step, public so that benchmarks and notebooks feed the model exactly what a
        prediction does (at the plan's spacing; :meth:`network_inputs` for test-time scales).

        Raises:
            ConfigError: The channels do not match the model's (names, order or number).
        """
        return self.network_inputs(volume, (1.0,))[0]

    def network_inputs(self, volume: Volume | ChannelStack, scales: Sequence[float]) -> list[NetworkInput]:
        """:meth:`network_input` at each of ``scales`` (factors on the plan's in-plane spacing; test-time scales):
        the scan is reoriented and normalised once, then re-sampled once per scale.

        Raises:
            ConfigError: The channels do not match the model's (names, order or number).
        """
        if isinstance(volume, ChannelStack):
            if tuple(volume.names) != tuple(self.spec.channels):
                raise ConfigError(
                    f"'{volume.source}': the model was trained on channels {list(self.spec.channels)} (in this "
                    f"order), got {list(volume.names)}"
                )
            canon, reo = to_canonical(volume.reference)
            # Each channel normalised on its own, as in training.
            arrays = [
                normalize(reo.apply(np.asarray(v.array)), self.spec.normalization, source=v.source)
                for v in volume.volumes
            ]
        else:
            if len(self.spec.channels) > 1:
                raise ConfigError(
                    f"'{volume.source}': the model needs {len(self.spec.channels)} channels "
                    f"({', '.join(self.spec.channels)}); give a case folder or a 4D file (Predictor.read_input)"
                )
            # The model was trained on closest-RAS voxel order (medseg.data reorients the same way), so an
            # LPS-stored DICOM or a permuted NIfTI is sliced in the planes and handedness the model knows.
            canon, reo = to_canonical(volume)
            arrays = [normalize(np.asarray(canon.array), self.spec.normalization, source=volume.source)]
        inputs = []
        for scale in scales:
            # The plan's target spacing (in-plane) times the scale; an identity grid (scan already at the target)
            # changes nothing.
            target = scaled_target_spacing(self.spec.target_spacing, canon.spacing, self.spec.slice_axis, scale)
            grid = plan_grid(canon.shape, canon.spacing, target, self.spec.slice_axis)
            resampled = [resample_image(a, grid) for a in arrays]
            image = np.stack(resampled) if isinstance(volume, ChannelStack) else resampled[0]
            inputs.append(NetworkInput(image, grid, reo))
        return inputs

    def _canonical_probs(self, volume: Volume | ChannelStack) -> tuple[np.ndarray, Reorientation]:
        total: np.ndarray | None = None
        inputs = self.network_inputs(volume, self.tta_scales)
        reo, axis = inputs[0].reorientation, self.spec.slice_axis  # every scale: the same scan, the same way back
        while inputs:
            net_in = inputs.pop(0)  # each scale's image is released once it is predicted
            image, grid = net_in.image, net_in.grid
            if isinstance(volume, ChannelStack):
                slices = channels_to_slices(image, axis, self.spec.context_slices)
                probs = forward_slices(self.model, slices, self.settings_for(image.shape[1:]))
                volume_probs = np.ascontiguousarray(slices_to_volume(probs, axis))
            else:
                settings = self.settings_for(image.shape)
                volume_probs = predict_volume_probs(self.model, image, axis, self.spec.context_slices, settings)
            del image, net_in
            # Probabilities (not labels) go back onto the scan's own grid, so labels are taken there.
            back = resample_probabilities_back(volume_probs, grid)
            del volume_probs
            if total is None:
                total = back
            else:
                total += back
        assert total is not None
        if len(self.tta_scales) > 1:
            total /= len(self.tta_scales)
        return total, reo

    def predict_proba(self, volume: Volume | ChannelStack) -> np.ndarray:
        """Per-class probabilities on the volume's voxel grid.

        Args:
            volume: A scan as read by ``medseg.io.load_volume``.

        Returns:
            ``(n_classes, I, J, K)`` float32 in the volume's own voxel order; for ``softmax`` models they sum to 1
            per voxel; for ``sigmoid`` models channel 0 is ``1 - max`` foreground probability
            (see ``medseg.models.head.logits_to_probs``).
        """
        probs, reo = self._canonical_probs(volume)
        return reo.invert(probs)

    def labels_from_proba(self, probs: np.ndarray, *, slice_axis: int | None = None) -> np.ndarray:
        """Label volume (uint8, or uint16 beyond 255 classes) from class probabilities, postprocessed.

        Args:
            probs: ``(n_classes, I, J, K)`` probabilities.
            slice_axis: Axis of ``probs`` along which 2D hole filling works; defaults to the model's slice axis
                (right for probabilities in closest-RAS order, as the model sees them).
        """
        if probs.ndim != 4 or probs.shape[0] != self.n_classes:
            raise ValueError(f"expected probabilities ({self.n_classes}, I, J, K), got shape {probs.shape}")
        ni, nj, nk = probs.shape[1:]
        labels = np.empty((ni, nj, nk), dtype=np.uint8 if self.n_classes <= 256 else np.uint16)
        # In chunks: probs_to_labels returns int64, 8 bytes a voxel, too much for a whole large CT at once.
        step = max(1, (1 << 22) // max(1, ni * nj))
        for k in range(0, labels.shape[-1], step):
            labels[..., k : k + step] = probs_to_labels(probs[..., k : k + step], self.spec.mode, channel_dim=0)
        return self._postprocess(labels, slice_axis)

    def _postprocess(self, labels: np.ndarray, slice_axis: int | None = None) -> np.ndarray:
        return apply_postprocessing(
            labels,
            largest_component=self.largest_component,
            fill_holes_classes=self.fill_holes,
            axis=self.spec.slice_axis if slice_axis is None else slice_axis,
            membership=self.membership,
        )

    def predict_with_proba(self, volume: Volume | ChannelStack) -> tuple[Volume, np.ndarray]:
        """Both the mask volume and the probabilities (one forward pass), e.g. to save probability maps."""
        probs, reo = self._canonical_probs(volume)
        labels = self.labels_from_proba(probs)
        grid = volume.reference if isinstance(volume, ChannelStack) else volume
        return grid.with_array(reo.invert(labels)), reo.invert(probs)

    def stored_labels(self, mask: np.ndarray) -> np.ndarray:
        """A predicted mask (class indices) with each class as the training labels stored it
        (``data.label_values``, e.g. 255 for a 0/255 mask): what the batch predictor writes."""
        values = self.spec.label_values
        return np.asarray(mask) if values is None else to_stored(mask, values)

    def predict(self, volume: Volume | ChannelStack) -> Volume:
        """Label mask for ``volume``.

        Args:
            volume: A scan as read by ``medseg.io.load_volume``.

        Returns:
            A :class:`Volume` with uint8 labels (indices into :attr:`classes`) and the scan's affine, header and
            source, so ``medseg.io.save_mask(mask.array, like=volume, ...)`` writes it on the scan's grid.
        """
        if isinstance(volume, ChannelStack) or len(self.spec.channels) > 1:
            return self.predict_with_proba(volume)[0]
        return self._predict_slabwise(volume, confidence=False)[0]

    def predict_with_confidence(self, volume: Volume | ChannelStack) -> tuple[Volume, ConfidenceMaps]:
        """The mask and the per-voxel confidence maps QC needs, without keeping the class probabilities.

        Single-channel scans go slab by slab as in :meth:`predict` (memory follows the batch, plus two float16
        maps of the scan); multi-channel cases through :meth:`predict_with_proba`. The mask is the one
        :meth:`predict` returns.
        """
        if isinstance(volume, ChannelStack) or len(self.spec.channels) > 1:
            mask, probs = self.predict_with_proba(volume)
            return mask, ConfidenceMaps.from_probs(probs, regions=self.spec.regions is not None)
        mask, maps = self._predict_slabwise(volume, confidence=True)
        assert maps is not None
        return mask, maps

    def _predict_slabwise(self, volume: Volume, *, confidence: bool) -> tuple[Volume, ConfidenceMaps | None]:
        # Labels slab by slab (medseg.inference.slabs): only one batch's probabilities are ever held, so memory
        # follows the batch, not the scan; the same labels as labels_from_proba(predict_proba(volume)).
        inputs = self.network_inputs(volume, self.tta_scales)
        grid, reo = inputs[0].grid, inputs[0].reorientation  # every scale: the same scan, so the same way back
        # At the plan's spacing: each slab's probabilities go back onto the scan's in-plane grid before its labels
        # are taken (the slice axis is never resampled), so a resampled scan is bounded by the batch too.
        views = [
            View(n.image, None if n.grid.is_identity else functools.partial(resample_slices_back, grid=n.grid))
            for n in inputs
        ]
        # One slab size for every scale (the finest scale's batch), so a slab is the same slices in each.
        settings = min((self.settings_for(n.image.shape) for n in inputs), key=lambda s: s.batch_size)
        del inputs
        regions = self.spec.regions is not None
        maps = ConfidenceMaps.empty(grid.source_shape, regions=regions) if confidence else None  # canonical shape
        axis = self.spec.slice_axis
        labels = predict_volume_labels(
            self.model,
            views,
            axis,
            self.spec.context_slices,
            settings,
            on_probs=None if maps is None else lambda index, probs, lab: maps.fill_slices(index, axis, probs, lab),
        )
        del views
        mask = volume.with_array(reo.invert(self._postprocess(labels)))
        return mask, None if maps is None else maps.transformed(reo.invert)

    def class_volumes(
        self, labels: np.ndarray, spacing: Sequence[float] | np.ndarray | None = None, *, voxel_mm3: float | None = None
    ) -> dict[str, tuple[int, float]]:
        """Voxel count and volume in mL of each foreground class (or region) in ``labels``.

        ``voxel_mm3`` (the scan's :attr:`Volume.voxel_volume`, ``|det(affine)|``) is the voxel volume; without it,
        the product of ``spacing``, which is only right on an orthogonal grid (it over-counts on a sheared one).
        One rule with QC's volumes: :func:`medseg.inference.qc.class_volumes`.
        """
        if voxel_mm3 is None:
            if spacing is None:
                raise TypeError("class_volumes needs voxel_mm3 (Volume.voxel_volume) or spacing")
            voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
        return class_volumes(labels, voxel_mm3, self.classes, self.membership)

    @property
    def qc_active(self) -> bool:
        """Whether QC runs (a checkpoint with a ``qc_reference`` and ``inference.qc.enabled``)."""
        return self.qc_reference is not None and self.qc_settings.enabled

    def assess_quality(
        self,
        volume: Volume,
        labels: np.ndarray,
        probs: np.ndarray | None,
        *,
        confidence: ConfidenceMaps | None = None,
    ) -> QCResult:
        """QC flags and score of a prediction (see ``medseg.inference.qc``).

        Args:
            volume: The scan as read.
            labels: Its predicted labels (volume order), postprocessed as written.
            probs: Its probabilities (volume order), or ``None``.
            confidence: Instead of ``probs``: :meth:`predict_with_confidence`'s maps (volume order). With
                neither, the confidence checks are skipped.

        Returns:
            A :class:`~medseg.inference.qc.QCResult`; with no ``qc_reference`` (a checkpoint from before QC) its
            ``flags``/``score`` are ``None`` and ``note`` says why.
        """
        if not self.qc_active:
            return assess({}, self.qc_reference, self.qc_settings)
        canon, _ = to_canonical(volume)  # geometry is compared in the closest-RAS order training used
        features = scan_features(
            np.asarray(volume.array),
            canon.spacing,
            canon.shape,
            labels,
            probs,
            self.classes,
            voxel_mm3=volume.voxel_volume,
            confidence=confidence,
            membership=self.membership,
        )
        return assess(features, self.qc_reference, self.qc_settings)

    def predict_with_qc(self, volume: Volume) -> tuple[Volume, np.ndarray, QCResult]:
        """Mask, probabilities and QC of ``volume`` in one forward pass (for scripts)."""
        mask, probs = self.predict_with_proba(volume)
        return mask, probs, self.assess_quality(volume, np.asarray(mask.array), probs)
