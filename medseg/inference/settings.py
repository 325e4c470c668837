"""One frozen object with every setting of a forward pass (in the spirit of MONAI's inferer objects).

Built once, from what the checkpoint recorded (classes, mode, training patch, pad multiple from the network's
depth) plus the runtime options (device, precision, channels_last, batch size, test-time flips), and handed to
:func:`~medseg.inference.forward.forward_slices`, :func:`~medseg.inference.forward.predict_volume_probs`, the
trainer's validation and the :class:`~medseg.inference.predictor.Predictor` alike, so the two sides cannot
drift apart one argument at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from medseg.inference.precision import resolve_channels_last, resolve_device, resolve_precision
from medseg.models.head import check_mode


def _as_hw(value: Sequence[int] | int | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    h, w = (int(v) for v in value)
    return (h, w)


@dataclass(frozen=True)
class InferenceSettings:
    """How slices go through the network and come back as probabilities.

    Attributes:
        n_classes: Classes including background (the width of the returned probabilities).
        mode: ``"sigmoid"``, ``"softmax"`` or ``"regions"`` (how logits become probabilities and labels;
            ``medseg.models.head``).
        device: Where the model lives.
        precision: Autocast dtype (``None`` = float32).
        channels_last: Run convolutions in NHWC memory format.
        patch_hw: The training patch: slices are padded to at least this, as in training (``None`` = no minimum).
        pad_multiple: H and W are padded to a multiple of this (``2 ** depth`` of the network, at least).
        batch_size: Slices per forward pass.
        tta_flips: Average the probabilities over flips of H, W and both (4 passes per batch).
    """

    n_classes: int
    mode: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: torch.dtype | None = None
    channels_last: bool = False
    patch_hw: tuple[int, int] | None = None
    pad_multiple: int = 16
    batch_size: int = 64
    tta_flips: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (background + a class), got {self.n_classes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        # Normalise the loosely typed inputs once, so every consumer sees one form.
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "patch_hw", _as_hw(self.patch_hw))

    @classmethod
    def resolve(
        cls,
        *,
        n_classes: int,
        mode: str,
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: str | bool = "auto",
        patch_hw: Sequence[int] | int | None = None,
        pad_multiple: int = 16,
        batch_size: int = 64,
        tta_flips: bool = False,
    ) -> InferenceSettings:
        """Settings from config-style options (``auto`` resolved for the device, as ``medseg.inference.precision``).

        Raises:
            ConfigError: Bad device/precision/channels_last option.
            ValueError: ``batch_size`` < 1, fewer than 2 classes.
        """
        dev = resolve_device(device)
        return cls(
            n_classes=int(n_classes),
            mode=str(mode),
            device=dev,
            precision=resolve_precision(precision, dev),
            channels_last=resolve_channels_last(channels_last, dev),
            patch_hw=_as_hw(patch_hw),
            pad_multiple=int(pad_multiple),
            batch_size=int(batch_size),
            tta_flips=bool(tta_flips),
        )

    def with_options(self, **changes: object) -> InferenceSettings:
        """A copy with some fields changed (e.g. ``tta_flips=False`` for validation)."""
        return replace(self, **changes)  # type: ignore[arg-type]
