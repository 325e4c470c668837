"""The trainer's builders are hooks: a subclass changes the model, loss, optimiser or schedule without editing
medseg; the default builders make what the config says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.losses import SegLoss
from medseg.models import AttentionUNet, NetworkSpec, UNet, build_model
from medseg.training.schedule import LRSchedule
from medseg.training.trainer import Trainer
from tests.test_training import make_cfg, one_thread  # noqa: F401  (one_thread: an autouse fixture)


def _cfg(sample_hippo: Path, tmp_path: Path, **model: object):  # type: ignore[no-untyped-def]
    return make_cfg(
        sample_hippo,
        tmp_path,
        data={"max_cases": 3, "val_fraction": 0.34},
        model={"base_features": 4, **model},
        training={"epochs": 1, "batch_size": 4},
    )


def test_default_builders_follow_the_config(sample_hippo: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(sample_hippo, tmp_path, architecture="attention_unet", depth=5))
    assert type(trainer.model) is AttentionUNet and trainer.model.depth == 5
    assert trainer.network_spec == NetworkSpec(
        "attention_unet", 1, 2, {"bilinear": False, "base_features": 4, "depth": 5}
    )
    # lcm(preprocessing.pad_multiple = 16, 2 ** 5): the patch and validation padding follow the depth.
    assert trainer.pad_multiple == 32 and all(s % 32 == 0 for s in trainer.patch_hw)
    assert trainer.val_settings.pad_multiple == 32 and trainer.val_settings.n_classes == 3
    assert isinstance(trainer.loss_fn, SegLoss) and isinstance(trainer.optimizer, torch.optim.AdamW)
    assert isinstance(trainer.schedule, LRSchedule)
    # The prior bias went to the output conv (the hippocampus is a few % of a slice: a negative logit).
    assert (trainer.model.output_conv.bias.detach() < -1).all()


def test_subclass_overrides_model_loss_and_optimizer(sample_hippo: Path, tmp_path: Path) -> None:
    calls: list[str] = []

    class Experiment(Trainer):
        def build_model(self, spec: NetworkSpec) -> nn.Module:
            calls.append("model")
            return build_model(NetworkSpec("unet", spec.in_channels, spec.out_channels, {"base_features": 4}))

        def build_loss(self) -> nn.Module:
            calls.append("loss")
            return SegLoss(self.mode, self.n_classes, bce_weight=0.0, dice_weight=1.0)

        def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
            calls.append("optimizer")
            return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    trainer = Experiment(_cfg(sample_hippo, tmp_path))
    assert calls == ["model", "loss", "optimizer"]
    assert type(trainer.model) is UNet and isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.loss_fn.bce_weight == 0.0  # type: ignore[union-attr]
    batch = next(iter(trainer.loader))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_step(batch)
    assert loss is not None and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_pad_multiple_that_does_not_fit_the_model_is_refused(sample_hippo: Path, tmp_path: Path) -> None:
    class Deeper(Trainer):
        def build_model(self, spec: NetworkSpec) -> nn.Module:
            return build_model(NetworkSpec("unet", spec.in_channels, spec.out_channels, {"depth": 6}))

    with pytest.raises(ConfigError, match="needs a multiple of 64"):
        Deeper(_cfg(sample_hippo, tmp_path))
