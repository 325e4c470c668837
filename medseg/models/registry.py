"""The model registry: a typed :class:`NetworkSpec` in, a :class:`~medseg.models.base.SegmentationNet` out.

::

    spec = NetworkSpec("attention_unet", in_channels=3, out_channels=1, options={"base_features": 32})
    model = build_model(spec)

The spec is what a checkpoint stores (``spec.to_dict()``), so the trainer and the predictor build the same
network from it. A new architecture is one class and one :func:`register_architecture` line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medseg.errors import ConfigError
from medseg.models.base import SegmentationNet
from medseg.models.unet import AttentionUNet, ResidualUNet, UNet, UNetPlusPlus

#: Factory signature: ``factory(in_channels, out_channels, **options)``.
ModelFactory = Callable[..., SegmentationNet]

ARCHITECTURES: dict[str, ModelFactory] = {}
"""Registered architectures by name (``model.architecture``)."""

#: The options every UNet-family architecture takes, with their defaults (the seed's).
UNET_OPTIONS: dict[str, Any] = {"bilinear": False, "base_features": 64, "depth": 4}


def register_architecture(name: str, factory: ModelFactory) -> None:
    """Makes ``factory`` buildable as ``NetworkSpec(name, ...)``.

    Args:
        name: The ``architecture`` name (as in ``model.architecture``).
        factory: ``factory(in_channels, out_channels, **options) -> SegmentationNet``.

    Raises:
        ValueError: ``name`` is already registered with another factory.
    """
    if ARCHITECTURES.get(name, factory) is not factory:
        raise ValueError(f"architecture {name!r} is already registered")
    ARCHITECTURES[name] = factory


register_architecture("unet", UNet)
register_architecture("attention_unet", AttentionUNet)
register_architecture("residual_unet", ResidualUNet)
register_architecture("unet_plus_plus", UNetPlusPlus)


@dataclass(frozen=True)
class NetworkSpec:
    """A network, described by plain values (what a checkpoint stores under ``model``).

    Attributes:
        architecture: A name in :data:`ARCHITECTURES`.
        in_channels: Input channels (``2 * context_slices + 1``).
        out_channels: Logit channels (:func:`medseg.models.head.n_outputs`).
        options: Keyword arguments of the architecture (``bilinear``, ``base_features``, ``depth``).
    """

    architecture: str
    in_channels: int
    out_channels: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (a checkpoint is read with ``weights_only=True``)."""
        return {
            "architecture": self.architecture,
            "in_channels": int(self.in_channels),
            "out_channels": int(self.out_channels),
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        """Reads :meth:`to_dict`'s output, or the seed-era ``{n_channels, n_outputs, bilinear, base_features}``.

        Raises:
            KeyError, TypeError, ValueError: A malformed description (callers wrap these with the file name).
        """
        if "architecture" not in data:
            # medseg-checkpoint/1: always the plain UNet at the seed's depth 4.
            return cls(
                "unet",
                int(data["n_channels"]),
                int(data["n_outputs"]),
                {
                    "bilinear": bool(data.get("bilinear", False)),
                    "base_features": int(data.get("base_features", 64)),
                    "depth": 4,
                },
            )
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise TypeError(f"'options' must be a mapping, got {type(options).__name__}")
        return cls(str(data["architecture"]), int(data["in_channels"]), int(data["out_channels"]), dict(options))

    @property
    def pad_multiple(self) -> int:
        """``2 ** depth`` (the depth option, 4 when absent): what slices are padded to a multiple of."""
        return int(2 ** int(self.options.get("depth", 4)))


def spec_from_config(model: Any, in_channels: int, out_channels: int) -> NetworkSpec:
    """The spec a config's ``model`` section describes.

    Args:
        model: ``medseg.config.ModelConfig`` (``architecture``, ``base_features``, ``bilinear``, ``depth``).
        in_channels: Input channels.
        out_channels: Logit channels.
    """
    return NetworkSpec(
        str(model.architecture),
        in_channels,
        out_channels,
        {"bilinear": bool(model.bilinear), "base_features": int(model.base_features), "depth": int(model.depth)},
    )


def build_model(spec: NetworkSpec) -> SegmentationNet:
    """A freshly initialised network as ``spec`` describes.

    Raises:
        ConfigError: Unknown architecture, or options the architecture does not accept.
    """
    factory = ARCHITECTURES.get(spec.architecture)
    if factory is None:
        raise ConfigError(
            f"model.architecture: unknown {spec.architecture!r}; registered: {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        return factory(spec.in_channels, spec.out_channels, **dict(spec.options))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {spec.architecture} cannot be built from {spec.to_dict()}: {err}") from None
