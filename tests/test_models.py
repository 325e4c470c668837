"""The model contract: registry, variants, checkpoint schema (old and new), output bias, summary, settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medseg.config import config_from_dict
from medseg.data.normalization import NormalizationParams
from medseg.errors import CheckpointError, ConfigError
from medseg.inference import Predictor
from medseg.inference.forward import predict_volume_probs
from medseg.inference.settings import InferenceSettings
from medseg.io import load_volume
from medseg.models import (
    ARCHITECTURES,
    AttentionGate,
    NestedUp,
    NetworkSpec,
    ResidualDoubleConv,
    SegmentationNet,
    UNet,
    build_model,
    register_architecture,
)
from medseg.models.checkpoint import (
    CHECKPOINT_FORMAT,
    REQUIRED_FIELDS,
    load_checkpoint,
    model_from_checkpoint,
    network_spec,
    save_checkpoint,
)
from medseg.models.fusion import fold_batchnorm
from medseg.models.summary import measure_step_memory, summary
from medseg.training.init import init_output_bias
from medseg.training.resume import load_resume_checkpoint
from tests.test_unet import _one_thread, _real_batch  # noqa: F401  (_one_thread: an autouse fixture)

ARCHS = ("unet", "attention_unet", "residual_unet", "unet_plus_plus")


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _spec(arch: str, *, in_channels: int = 3, out_channels: int = 2, **options: Any) -> NetworkSpec:
    return NetworkSpec(arch, in_channels, out_channels, {"base_features": 4, "bilinear": False, "depth": 4, **options})


# --- registry and variants -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize(("depth", "hw"), [(2, (5, 7)), (3, (37, 53)), (4, (35, 51)), (5, (33, 47))])
def test_output_shape_on_odd_sizes(arch: str, bilinear: bool, depth: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(arch, out_channels=3, bilinear=bilinear, depth=depth)).eval()
    assert isinstance(model, SegmentationNet) and model.pad_multiple == 2**depth
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 3, *hw)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=f"H, W >= {2**depth}"):
        model(torch.randn(1, 3, 2**depth - 1, 64))


@pytest.mark.parametrize("bilinear", [False, True])
def test_seed_parameter_counts_and_variants_add_only_their_parts(bilinear: bool) -> None:
    plain = build_model(NetworkSpec("unet", 3, 1, {"bilinear": bilinear, "base_features": 64, "depth": 4}))
    assert _n_params(plain) == (17_262_977 if bilinear else 31_037_633)  # the seed's counts
    assert _n_params(plain) == _n_params(UNet(3, 1, bilinear=bilinear))
    # The attention UNet is the UNet plus one gate per skip; the residual UNet plus its 1x1 projections.
    att = build_model(NetworkSpec("attention_unet", 3, 1, {"bilinear": bilinear, "base_features": 64}))
    gates = [m for m in att.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == 4
    assert _n_params(att) == _n_params(plain) + sum(_n_params(g) for g in gates)
    res = build_model(NetworkSpec("residual_unet", 3, 1, {"bilinear": bilinear, "base_features": 64}))
    blocks = [m for m in res.modules() if isinstance(m, ResidualDoubleConv)]
    assert len(blocks) == 1 + 4 + 4
    shortcuts = sum(_n_params(b.shortcut) for b in blocks)
    assert shortcuts > 0 and _n_params(res) == _n_params(plain) + shortcuts


@pytest.mark.parametrize("depth", [2, 4])
def test_unet_plus_plus_has_the_unet_encoder_and_a_node_per_level_and_step(depth: int) -> None:
    options = {"bilinear": False, "base_features": 8, "depth": depth}
    nested = build_model(NetworkSpec("unet_plus_plus", 3, 1, options))
    plain = build_model(NetworkSpec("unet", 3, 1, options))
    encoder = ["inc", *(f"down{i}" for i in range(1, depth + 1))]
    assert [_n_params(getattr(nested, n)) for n in encoder] == [_n_params(getattr(plain, n)) for n in encoder]
    nodes = [m for m in nested.modules() if isinstance(m, NestedUp)]
    assert len(nodes) == depth * (depth + 1) // 2
    heads = _n_params(nested.outc)
    assert _n_params(nested) == sum(_n_params(getattr(nested, n)) for n in encoder) + sum(map(_n_params, nodes)) + heads


def test_depth_changes_the_number_of_levels_and_seed_keys_stay() -> None:
    seed_keys = set(UNet(3, 1, base_features=4).state_dict())
    assert set(build_model(_spec("unet", out_channels=1)).state_dict()) == seed_keys
    deeper = build_model(_spec("unet", out_channels=1, depth=5))
    assert hasattr(deeper, "down5") and hasattr(deeper, "up5") and not hasattr(deeper, "down6")
    shallow = build_model(_spec("unet", out_channels=1, depth=2))
    assert not hasattr(shallow, "down3")


def test_registry_errors_and_custom_architecture() -> None:
    with pytest.raises(ConfigError, match="unknown 'vnet'"):
        build_model(NetworkSpec("vnet", 1, 1))
    with pytest.raises(ConfigError, match="cannot be built"):
        build_model(NetworkSpec("unet", 1, 1, {"kernel": 5}))

    class Tiny(SegmentationNet):
        def __init__(self, in_channels: int, out_channels: int, depth: int = 1) -> None:
            super().__init__(in_channels, out_channels, depth)
            self.head = nn.Conv2d(in_channels, out_channels, 1)

        @property
        def output_conv(self) -> nn.Conv2d:
            return self.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)  # type: ignore[no-any-return]

    register_architecture("test_tiny", Tiny)
    try:
        model = build_model(NetworkSpec("test_tiny", 1, 2))
        assert isinstance(model, Tiny)
        # The prior bias goes to the contract's output conv, whatever the attribute is called.
        labels = [np.array([[0, 0, 0, 1], [0, 0, 2, 2]])]
        assert init_output_bias(model, labels, 3, "sigmoid")
        np.testing.assert_allclose(model.head.bias.detach().numpy(), np.log([1 / 7, 2 / 6]), rtol=1e-6)
    finally:
        del ARCHITECTURES["test_tiny"]
    assert not init_output_bias(nn.Conv2d(1, 2, 1), labels, 3, "sigmoid")  # not a SegmentationNet: left alone


# --- checkpoint schema ------------------------------------------------------------------------------------------


def _trainer_fields(model: nn.Module, model_field: dict[str, Any], fmt: str, **extra: Any) -> dict[str, Any]:
    """Every field the trainer writes (the optimiser/RNG/config parts do not matter to prediction)."""
    ckpt: dict[str, Any] = {key: None for key in REQUIRED_FIELDS}
    ckpt.update(
        format=fmt,
        model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizer_state={},
        scheduler_state={},
        scaler_state=None,
        epoch=1,
        elapsed_seconds=1.0,
        rng={},
        config={},
        model=model_field,
        mode="sigmoid",
        classes=["background", "Anterior", "Posterior"],
        class_weights=None,
        normalization=NormalizationParams("zscore").to_dict(),
        slice_axis=2,
        context_slices=1,
        patch_hw=[48, 64],
        pad_multiple=16,
        precision="fp32",
        channels_last=False,
        postprocessing={"largest_component": [], "fill_holes": []},
        postprocessing_decided=True,
        best_dice=0.5,
        versions={},
        **extra,
    )
    return ckpt


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_gives_identical_outputs(arch: str, tmp_path: Path, sample_hippo: Path) -> None:
    torch.manual_seed(1)
    spec = _spec(arch, bilinear=arch == "residual_unet", depth=3)
    model = build_model(spec)
    # A few train-mode steps so BatchNorm statistics differ from their initial values.
    with torch.no_grad():
        for _ in range(2):
            model(_real_batch(sample_hippo) * 2.0)
    path = save_checkpoint(tmp_path / "c.pt", _trainer_fields(model, spec.to_dict(), CHECKPOINT_FORMAT))
    ckpt = load_checkpoint(path)
    loaded, loaded_spec = model_from_checkpoint(ckpt, path)
    assert loaded_spec == spec and type(loaded) is type(model)
    x = _real_batch(sample_hippo)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_old_checkpoint_loads_with_identical_outputs(tmp_path: Path, sample_hippo: Path) -> None:
    """A ``medseg-checkpoint/1`` file (as the trainer wrote it before the registry) predicts exactly as before."""
    torch.manual_seed(2)
    seed_unet = UNet(3, 2, bilinear=False, base_features=4)
    old_model_field = {"n_channels": 3, "n_outputs": 2, "bilinear": False, "base_features": 4}
    path = save_checkpoint(tmp_path / "old.pt", _trainer_fields(seed_unet, old_model_field, "medseg-checkpoint/1"))
    ckpt = load_checkpoint(path)
    assert network_spec(ckpt) == NetworkSpec("unet", 3, 2, {"bilinear": False, "base_features": 4, "depth": 4})
    predictor = Predictor.from_checkpoint(path, device="cpu", precision="fp32", batch_size=8)
    assert isinstance(predictor.model, UNet)
    volume = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")
    probs = predictor.predict_proba(volume)
    # The reference: the original in-memory model through the same forward pass, folded as the predictor folds
    # its model (medseg.models.fusion), so the loaded weights must be exactly the saved ones.
    from medseg.data.normalization import normalize
    from medseg.io.orientation import to_canonical

    canon, reo = to_canonical(volume)
    image = normalize(np.asarray(canon.array), NormalizationParams("zscore"))
    settings = predictor.settings
    assert (settings.n_classes, settings.patch_hw, settings.pad_multiple) == (3, (48, 64), 16)
    expected = reo.invert(predict_volume_probs(fold_batchnorm(seed_unet), image, 2, 1, settings))
    assert np.array_equal(probs, expected)
    unfolded = reo.invert(predict_volume_probs(seed_unet.eval(), image, 2, 1, settings))
    assert np.abs(probs - unfolded).max() < 1e-5


def test_unknown_format_and_bad_model_field(tmp_path: Path) -> None:
    model = UNet(1, 1, base_features=4)
    bad_format = save_checkpoint(tmp_path / "f.pt", _trainer_fields(model, {}, "medseg-checkpoint/99"))
    with pytest.raises(CheckpointError, match=r"f\.pt.*medseg-checkpoint/99"):
        load_checkpoint(bad_format)
    bad_model = _trainer_fields(model, {"architecture": "unet", "in_channels": "x"}, CHECKPOINT_FORMAT)
    with pytest.raises(CheckpointError, match="bad 'model' description"):
        model_from_checkpoint(bad_model, "b.pt")
    wrong_weights = _trainer_fields(model, _spec("unet", in_channels=1, out_channels=1).to_dict(), CHECKPOINT_FORMAT)
    wrong_weights["model"]["options"]["base_features"] = 8
    with pytest.raises(CheckpointError, match=r"w\.pt.*weights do not fit"):
        model_from_checkpoint(wrong_weights, "w.pt")


def test_extra_fields_from_other_features_are_kept(tmp_path: Path) -> None:
    torch.manual_seed(3)
    spec = _spec("attention_unet", out_channels=2)
    model = build_model(spec)
    # A field a later feature adds (the schema must not refuse it) beside the optional QC reference.
    extra = {"future_feature": {"target_spacing": [1.0, 1.0, 1.0]}, "qc_reference": {"volume_ml": [1.0, 2.0]}}
    path = save_checkpoint(tmp_path / "x.pt", _trainer_fields(model, spec.to_dict(), CHECKPOINT_FORMAT, **extra))
    ckpt = load_checkpoint(path)
    assert ckpt["future_feature"] == extra["future_feature"] and ckpt["qc_reference"] == extra["qc_reference"]
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert isinstance(predictor.model, type(model)) and predictor.settings.pad_multiple == 16


def test_old_run_resumes_with_new_model_keys(tmp_path: Path, sample_hippo: Path) -> None:
    """A ``last.pt`` whose config predates ``model.architecture``/``model.depth`` resumes as the plain UNet."""
    cfg = config_from_dict(
        {"data": {"root": str(sample_hippo)}, "training": {"resume": True}, "output": {"dir": str(tmp_path)}},
        base_dir=tmp_path,
    )
    old_config = cfg.model_dump(mode="json")
    del old_config["model"]["architecture"], old_config["model"]["depth"]
    ckpt = _trainer_fields(UNet(1, 2, base_features=4), {}, "medseg-checkpoint/1")
    ckpt["config"] = old_config
    last = save_checkpoint(tmp_path / "last.pt", ckpt)
    assert load_resume_checkpoint(cfg, last) is not None
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"architecture": "residual_unet"})})
    with pytest.raises(CheckpointError, match=r"model\.architecture: checkpoint 'unet', config 'residual_unet'"):
        load_resume_checkpoint(other, last)


# --- settings ------------------------------------------------------------------------------------------------------


def test_inference_settings_are_frozen_and_checked() -> None:
    s = InferenceSettings.resolve(n_classes=3, mode="softmax", device="cpu", precision="fp32", patch_hw=32)
    assert s.patch_hw == (32, 32) and s.precision is None and s.device == torch.device("cpu")
    with pytest.raises(AttributeError):
        s.batch_size = 2  # type: ignore[misc]
    assert s.with_options(tta_flips=True).tta_flips and not s.tta_flips
    with pytest.raises(ConfigError, match=r"loss\.mode"):
        InferenceSettings(n_classes=3, mode="argmax")
    with pytest.raises(ValueError, match="batch_size"):
        InferenceSettings(n_classes=3, mode="sigmoid", batch_size=0)


# --- summary ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_summary_totals_equal_the_model(arch: str) -> None:
    model = build_model(_spec(arch, depth=3))
    s = summary(model, (3, 35, 51), batch_size=4)
    assert s.total_params == _n_params(model) == sum(r.params for r in s.rows)
    assert s.rows[-1].output_shape == (1, 2, 35, 51)
    assert f"Total params: {_n_params(model):,}" in s.table()
    activations = sum(int(np.prod(r.output_shape[1:])) for r in s.rows)
    assert s.activations_mb == pytest.approx(2 * activations * 4 * 4 / 2**20)
    assert s.params_mb == pytest.approx(_n_params(model) * 4 / 2**20)
    assert model.training  # its mode is restored


def test_measure_step_memory_runs_one_step() -> None:
    from medseg.losses import SegLoss

    torch.manual_seed(0)
    model = build_model(_spec("unet", in_channels=1, out_channels=1, depth=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure_step_memory(model, SegLoss("sigmoid", 2), (1, 32, 32), 2, 2)
    assert m.device == "cpu" and (m.peak_mb is None or m.peak_mb >= 0)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # one optimiser step ran


def test_summary_stage_prints_the_exact_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.run import main

    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    overrides = ["--set", "model.architecture=residual_unet", "--set", "model.depth=3"]
    assert main([str(config), "--stage", "summary", "--output", str(tmp_path), *overrides]) == 0
    text = (tmp_path / "summary.txt").read_text()
    # quickstart: base 8, 1 input channel (no context), 2 outputs (sigmoid, 3 classes), 48 x 64 training patch.
    expected = build_model(NetworkSpec("residual_unet", 1, 2, {"base_features": 8, "bilinear": False, "depth": 3}))
    assert f"Total params: {_n_params(expected):,}" in text
    assert "Input: batch 8 x 1 channel(s) x 48 x 64" in text
    assert "Measured peak memory of one training step on cpu" in text
    # Where training would keep the data: the 14 sample cases fit in memory on any machine that runs the tests.
    assert re.search(r"Training data: kept in memory: about \d+\.\d GiB for 14 cases, [\d.]+ GiB available", text) or (
        "Training data: kept in memory (the memory available is not known here)" in text
    ), text
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


def test_pad_to_pads_only_when_sizes_differ() -> None:
    """A matching upsampled map is passed through (no copy); a short one gets the seed's even split."""
    from medseg.models.parts import pad_to

    skip = torch.zeros(1, 2, 7, 9)
    same = torch.ones(1, 2, 7, 9)
    assert pad_to(same, skip) is same
    short = torch.ones(1, 2, 6, 8)
    padded = pad_to(short, skip)
    assert padded.shape == skip.shape
    # One row and one column short: the extra pixel goes at the end (bottom row, right column are zero).
    assert padded[..., :6, :8].eq(1).all() and padded[..., 6, :].eq(0).all() and padded[..., :, 8].eq(0).all()
