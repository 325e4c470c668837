"""Prediction: device/precision choice, batched forward, slice order, geometry of written masks, postprocessing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import nn

from medseg.config import PostprocessingConfig
from medseg.data.normalization import NormalizationParams, normalize
from medseg.errors import CheckpointError, ConfigError, UnreadableScanError
from medseg.inference import precision as prec
from medseg.inference.forward import forward_slices, predict_volume_probs
from medseg.inference.postprocess import (
    apply_postprocessing,
    component_counts,
    decide_postprocessing,
    fill_holes,
    keep_largest_component,
)
from medseg.inference.predictor import ModelSpec, Predictor
from medseg.inference.settings import InferenceSettings
from medseg.io import load_volume, save_mask
from medseg.models import UNet, n_outputs
from medseg.models.checkpoint import CHECKPOINT_FORMAT, REQUIRED_FIELDS, load_checkpoint, save_checkpoint
from medseg.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("background", "anterior", "posterior")
PGBM_T1 = "PGBM-001/04-02-1992-FH-HEADBrain Protocols-79896/11-T1post-80644"


def make_checkpoint(
    path: Path,
    *,
    classes: tuple[str, ...] = CLASSES,
    mode: str = "sigmoid",
    context: int = 0,
    slice_axis: int = 2,
    patch_hw: tuple[int, int] = (48, 48),
    postprocessing: dict[str, list[int]] | None = None,
    seed: int = 0,
    model: UNet | None = None,
) -> Path:
    """A checkpoint with every field the trainer writes, holding a tiny seeded (untrained) base-4 UNet, or
    ``model`` (a base-4 UNet with ``2 * context + 1`` inputs and the mode's outputs) when given."""
    torch.manual_seed(seed)
    n_out = n_outputs(mode, len(classes))
    if model is None:
        model = UNet(2 * context + 1, n_out, base_features=4)
    ckpt: dict = {key: None for key in REQUIRED_FIELDS}
    ckpt.update(
        format=CHECKPOINT_FORMAT,
        model_state=model.state_dict(),
        optimizer_state={},
        scheduler_state={},
        epoch=1,
        rng={},
        config={},
        model={"n_channels": 2 * context + 1, "n_outputs": n_out, "bilinear": False, "base_features": 4},
        mode=mode,
        classes=list(classes),
        normalization=NormalizationParams("zscore").to_dict(),
        slice_axis=slice_axis,
        context_slices=context,
        patch_hw=list(patch_hw),
        pad_multiple=16,
        precision="fp32",
        postprocessing=postprocessing or {"largest_component": [], "fill_holes": []},
        best_dice=0.5,
        versions={},
    )
    return save_checkpoint(path, ckpt)


class ChannelModel(nn.Module):
    """Logit of foreground class 1 = ``scale`` x input channel ``channel``: the prediction is a known image."""

    def __init__(self, channel: int = 0, scale: float = 1.0, n_out: int = 1) -> None:
        super().__init__()
        self.channel, self.scale, self.n_out = channel, scale, n_out
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = x[:, self.channel : self.channel + 1] * self.scale
        return torch.cat([logit, torch.full_like(logit, -30.0).expand(-1, self.n_out - 1, -1, -1)], dim=1)


def spec(axis: int = 2, context: int = 0, classes: tuple[str, ...] = ("background", "fg"), **kw) -> ModelSpec:
    return ModelSpec(
        classes=classes,
        mode="sigmoid",
        normalization=NormalizationParams("zscore"),
        slice_axis=axis,
        context_slices=context,
        **kw,
    )


@pytest.fixture
def hippo_image(sample_hippo: Path) -> Path:
    return sample_hippo / "imagesTr" / "hippocampus_001.nii.gz"


@pytest.fixture
def hippo_label(sample_hippo: Path) -> np.ndarray:
    return np.asarray(nib.load(sample_hippo / "labelsTr" / "hippocampus_001.nii.gz").dataobj).astype(np.uint8)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "best.pt")


# --- device and precision ------------------------------------------------------------------------------------


def test_resolve_device_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prec.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="expected 'auto'"):
        prec.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert prec.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        prec.resolve_device("cuda:0")


def test_resolve_device_follows_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend to be rank 1 of torchrun on a 2-GPU node: one process per GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert prec.resolve_device("auto") == torch.device("cuda", 1)
    assert prec.resolve_device("cuda") == torch.device("cuda", 1)
    assert prec.resolve_device("cuda:0") == torch.device("cuda", 0)  # explicit choice wins
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        prec.resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        prec.resolve_device("cuda")


def test_resolve_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert prec.resolve_precision("fp32", cpu) is None
    assert prec.resolve_precision("auto", cuda) is torch.float16
    monkeypatch.setattr(prec, "cpu_supports_bf16", lambda: True)
    assert prec.resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(prec, "cpu_supports_bf16", lambda: False)
    assert prec.resolve_precision("auto", cpu) is None
    with pytest.warns(UserWarning, match="emulated"):
        assert prec.resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        prec.resolve_precision("fp64", cpu)
    assert prec.needs_grad_scaler(torch.float16) and not prec.needs_grad_scaler(torch.bfloat16)


def test_autocast_context_runs_conv_in_bf16() -> None:
    conv = nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    with prec.autocast(torch.device("cpu"), torch.bfloat16):
        assert conv(x).dtype is torch.bfloat16
    with prec.autocast(torch.device("cpu"), None):
        assert conv(x).dtype is torch.float32


# --- forward ------------------------------------------------------------------------------------------------


def test_forward_slices_pads_and_unpads_exactly(rng: np.random.Generator) -> None:
    # Odd sizes, smaller than the patch: padded to 48x64, then cut back; an identity model shows any offset.
    x = rng.normal(size=(5, 3, 35, 51)).astype(np.float32)
    model = ChannelModel(channel=1)
    model.train()
    probs = forward_slices(model, x, InferenceSettings(n_classes=2, mode="sigmoid", batch_size=2, patch_hw=(40, 40)))
    assert probs.shape == (5, 2, 35, 51) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-x[:, 1])), atol=1e-6)
    np.testing.assert_allclose(probs[:, 0], 1 - probs[:, 1], atol=1e-6)
    assert model.training, "forward_slices must restore the model's training mode"


def test_forward_slices_bf16_close_to_fp32(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = UNet(1, 2, base_features=4)
    x = rng.normal(size=(3, 1, 32, 32)).astype(np.float32)
    common = InferenceSettings(n_classes=3, mode="sigmoid", batch_size=4)
    p32 = forward_slices(model, x, common)
    p16 = forward_slices(model, x, common.with_options(precision=torch.bfloat16, channels_last=True))
    assert p16.dtype == np.float32
    np.testing.assert_allclose(p16, p32, atol=0.05)


def test_tta_flips_shape_and_flip_equivariance(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = UNet(1, 3, base_features=4)
    # 40x56 pads symmetrically (4+4, 4+4) to 48x64, so flipping the input flips the padded image exactly.
    x = rng.normal(size=(2, 1, 40, 56)).astype(np.float32)
    common = InferenceSettings(n_classes=3, mode="softmax", batch_size=3)
    plain = forward_slices(model, x, common)
    tta = forward_slices(model, x, common.with_options(tta_flips=True))
    assert tta.shape == plain.shape == (2, 3, 40, 56)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-4, "TTA should change an asymmetric model's output"
    # The flip set is a group, so TTA(flip(x)) == flip(TTA(x)) for every flip, even for a non-symmetric model.
    for axes in ((2,), (3,), (2, 3)):
        flipped = forward_slices(model, np.flip(x, axes).copy(), common.with_options(tta_flips=True))
        np.testing.assert_allclose(flipped, np.flip(tta, axes), atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_predict_volume_probs_matches_manual_slice_loop(axis: int, hippo_image: Path) -> None:
    # A crop of a real scan (different size on every axis, so any transposition shows) keeps the test fast.
    image = normalize(load_volume(hippo_image).array[4:30, 8:40, 6:24], NormalizationParams("zscore"))
    torch.manual_seed(0)
    model = UNet(3, 2, base_features=4).eval()
    # batch_size 4 forces several chunks, so chunk borders must carry the true 2.5D neighbours.
    probs = predict_volume_probs(model, image, axis, 1, InferenceSettings(n_classes=3, mode="sigmoid", batch_size=4))
    assert probs.shape == (3, *image.shape)
    n = image.shape[axis]
    for i in (0, 3, 4, n // 2, n - 1):
        chans = [np.take(image, min(max(i + d, 0), n - 1), axis=axis) for d in (-1, 0, 1)]
        x = torch.from_numpy(np.stack(chans)[None])
        h, w = x.shape[-2:]
        ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
        top, left = (ph - h) // 2, (pw - w) // 2
        x = nn.functional.pad(x, (left, pw - w - left, top, ph - h - top))
        with torch.no_grad():
            fg = torch.sigmoid(model(x))[0, :, top : top + h, left : left + w].numpy()
        np.testing.assert_allclose(np.take(probs[1:], i, axis=axis + 1), fg, atol=1e-5)


# --- predictor: slice order and orientation ------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_predictor_reproduces_voxel_order_and_context(axis: int, offset: int, hippo_image: Path) -> None:
    # The model returns the channel of slice n+offset: the probability volume must be the normalised scan
    # itself (offset 0) or its neighbour along the slice axis, voxel for voxel, with the edge slice repeated.
    volume = load_volume(hippo_image)
    predictor = Predictor(ChannelModel(channel=1 + offset), spec(axis, context=1), device="cpu", batch_size=7)
    probs = predictor.predict_proba(volume)
    z = normalize(volume.array, NormalizationParams("zscore"))
    n = z.shape[axis]
    shifted = np.take(z, np.clip(np.arange(n) + offset, 0, n - 1), axis=axis)
    np.testing.assert_allclose(probs[1], 1 / (1 + np.exp(-shifted)), atol=1e-6)


def test_predictor_from_checkpoint_settings(ckpt: Path, tmp_path: Path) -> None:
    p = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", batch_size=8)
    assert p.classes == CLASSES and p.n_classes == 3
    assert p.spec.slice_axis == 2 and p.spec.patch_hw == (48, 48) and p.spec.pad_multiple == 16
    assert p.dtype is None and p.device == torch.device("cpu")
    assert not p.model.training


def test_postprocessing_true_false_auto(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "c.pt", postprocessing={"largest_component": [2], "fill_holes": [1]})
    auto = Predictor.from_checkpoint(path, device="cpu")
    assert (auto.largest_component, auto.fill_holes) == ([2], [1])
    on_off = Predictor.from_checkpoint(
        path, device="cpu", postprocessing=PostprocessingConfig(largest_component=True, fill_holes=False)
    )
    assert (on_off.largest_component, on_off.fill_holes) == ([1, 2], [])


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pt"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    path = make_checkpoint(tmp_path / "bad.pt", context=1)
    ck = torch.load(path, weights_only=True)
    ck["context_slices"] = 0
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*3 channels"):
        Predictor.from_checkpoint(path)


def test_non_finite_scan_is_a_medseg_error() -> None:
    array = np.ones((20, 20, 3), dtype=np.float32)
    array[1, 1, 1] = np.nan
    volume = Volume(array, np.eye(4), source=Path("nan_scan.nii.gz"))
    with pytest.raises(UnreadableScanError, match="nan_scan"):
        Predictor(ChannelModel(), spec(), device="cpu").predict(volume)


# --- geometry of written masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hippocampus", "totalseg_mr"])
def test_nifti_mask_keeps_source_geometry(
    which: str, ckpt: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if which == "hippocampus":
        src = request.getfixturevalue("sample_hippo") / "imagesTr" / "hippocampus_001.nii.gz"
    else:  # LPS affine, qform code 0 / sform code 2: codes must be copied, not normalised
        src = request.getfixturevalue("totalseg_dir") / "example_mr_sm.nii.gz"
    volume = load_volume(src)
    mask = Predictor.from_checkpoint(ckpt, device="cpu").predict(volume)
    assert mask.array.dtype == np.uint8 and mask.shape == volume.shape
    assert mask.same_grid(volume, atol=0)
    out = save_mask(mask.array, like=volume, path=tmp_path / "mask.nii.gz")
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape
    np.testing.assert_array_equal(b.affine, a.affine)
    assert int(b.header["qform_code"]) == int(a.header["qform_code"])
    assert int(b.header["sform_code"]) == int(a.header["sform_code"])
    np.testing.assert_allclose(b.get_qform(), a.get_qform(), atol=1e-5)
    np.testing.assert_allclose(b.get_sform(), a.get_sform(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(b.dataobj), mask.array)


def _sitk_dicom(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd"])
def test_dicom_mask_on_the_series_grid_voxel_for_voxel(fmt: str, pgbm_dir: Path, tmp_path: Path) -> None:
    # Oblique, non-square PGBM series whose files are not in slice order. A threshold model (mask = voxels
    # brighter than the scan's mean) gives a mask we can predict independently from SimpleITK's own reading.
    series = pgbm_dir / PGBM_T1
    volume = load_volume(series)
    predictor = Predictor(ChannelModel(scale=1000.0), spec(axis=2), device="cpu", batch_size=8)
    mask = predictor.predict(volume)
    out = save_mask(mask.array, like=volume, path=tmp_path / f"mask.{fmt}")
    ref, got = _sitk_dicom(series), sitk.ReadImage(str(out))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-4)
    ref_array = sitk.GetArrayFromImage(ref).astype(np.float64)
    expected = ref_array > ref_array.mean()
    got_array = sitk.GetArrayFromImage(got)
    assert 0.05 < expected.mean() < 0.95
    np.testing.assert_array_equal(got_array == 1, expected)


# --- postprocessing -------------------------------------------------------------------------------------------


def test_largest_component_removes_islands_only(hippo_label: np.ndarray) -> None:
    assert np.array_equal(keep_largest_component(hippo_label, [1, 2]), hippo_label)  # one component each
    noisy = hippo_label.copy()
    noisy[0:2, 0:2, 0:2] = 1  # a far island of class 1
    noisy[-2:, -2:, -1] = 2  # and of class 2
    cleaned = keep_largest_component(noisy, [1])
    assert np.array_equal(cleaned[0:2, 0:2, 0:2], np.zeros((2, 2, 2)))
    assert (cleaned[-2:, -2:, -1] == 2).all(), "class 2 was not asked for"
    np.testing.assert_array_equal(keep_largest_component(noisy, [1, 2]), hippo_label)


def test_largest_component_counts_diagonal_contact_as_connected() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1  # touch at a corner only
    np.testing.assert_array_equal(keep_largest_component(labels, [1]), labels)


def _punch_hole(labels: np.ndarray, c: int, axis: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Sets to background one class-c voxel whose 4 in-plane neighbours (w.r.t. ``axis``) are class c."""
    inner = labels == c
    for ax in {0, 1, 2} - {axis}:
        inner &= np.roll(labels, 1, ax) == c
        inner &= np.roll(labels, -1, ax) == c
    where = tuple(int(i) for i in np.argwhere(inner)[0])
    holed = labels.copy()
    holed[where] = 0
    return holed, where


def test_fill_holes_per_slice_and_3d(hippo_label: np.ndarray) -> None:
    # The real label has a few in-plane holes of its own; fill them first so the punched one is the only one.
    label = fill_holes(hippo_label, [1, 2], axis=2)
    assert 0 < np.count_nonzero(label != hippo_label) < 20
    holed, where = _punch_hole(label, 2, axis=2)
    filled = fill_holes(holed, [2], axis=2)
    np.testing.assert_array_equal(filled, label)
    assert fill_holes(holed, [1], axis=2)[where] == 0, "only the listed classes are filled"
    # In 3D the one-voxel hole is usually open to a neighbouring slice; per-slice filling is the stronger one.
    assert (fill_holes(holed, [2], axis=None) == 2).sum() <= (filled == 2).sum()
    # Holes in the first and last slice along the axis are holes too.
    ring = np.zeros((5, 5, 3), dtype=np.uint8)
    ring[1:4, 1:4, :] = 1
    ring[2, 2, :] = 0
    assert (fill_holes(ring, [1], axis=2)[2, 2, :] == 1).all()
    # Another class inside a ring is not a hole to fill.
    ring[2, 2, 0] = 2
    assert fill_holes(ring, [1], axis=2)[2, 2, 0] == 2


def _whole_array_reference(labels: np.ndarray, classes: list[int], axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Largest component and hole filling computed on the whole array (no bounding box), straight from scipy."""
    largest = labels.copy()
    for c in classes:
        comp, n = ndimage.label(labels == c, structure=ndimage.generate_binary_structure(3, 3))
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            largest[(labels == c) & (comp != int(np.argmax(sizes)))] = 0
    filled = labels.copy()
    structure = None
    if axis is not None:
        structure = np.zeros((3, 3, 3), dtype=bool)
        index: list[slice | int] = [slice(None)] * 3
        index[axis] = 1
        structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    for c in classes:
        holes = ndimage.binary_fill_holes(labels == c, structure=structure)
        filled[holes & (filled == 0)] = c
    return largest, filled


@pytest.mark.parametrize("axis", [None, 0, 2])
def test_postprocessing_in_bounding_boxes_equals_the_whole_array(axis: int | None, hippo_label: np.ndarray) -> None:
    # Both steps work inside each class's bounding box; the result must be the whole-array computation's, also
    # for blobs with holes and islands that touch the volume's faces (where the box's margin is clipped).
    rng = np.random.default_rng(7)
    cases = [hippo_label]
    for _ in range(6):
        noise = ndimage.gaussian_filter(rng.random((24, 20, 16)), 1.5)
        labels = np.zeros(noise.shape, dtype=np.uint8)
        labels[noise > np.quantile(noise, 0.6)] = 1
        labels[noise > np.quantile(noise, 0.9)] = 2
        labels[rng.random(noise.shape) < 0.03] = 0  # pinholes
        cases.append(labels)
    for labels in cases:
        largest, filled = _whole_array_reference(labels, [1, 2], axis)
        np.testing.assert_array_equal(keep_largest_component(labels, [1, 2]), largest)
        np.testing.assert_array_equal(fill_holes(labels, [1, 2], axis=axis), filled)
        for c in (1, 2, 3):
            n = ndimage.label(labels == c, structure=ndimage.generate_binary_structure(3, 3))[1]
            assert component_counts(labels, [c]) == [n]
    assert any(not np.array_equal(fill_holes(c, [1, 2], axis=axis), c) for c in cases), "no hole was filled"


def test_postprocessing_of_a_multi_organ_ct_equals_the_whole_array(totalseg_dir: Path) -> None:
    # 41 structures, some touching each other and the volume's faces, with islands and pinholes sprinkled in: the
    # boxes found in one pass (find_objects) give what each class computed on the whole array gives.
    seg = np.asarray(nib.load(totalseg_dir / "example_seg.nii.gz").dataobj)
    values = np.unique(seg)
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    lut[values] = np.arange(len(values))
    labels = lut[seg]
    rng = np.random.default_rng(3)
    spots = rng.integers(0, labels.size, 3000)
    labels.flat[spots] = rng.integers(0, len(values), spots.size).astype(np.uint8)
    classes = list(range(1, len(values)))
    largest, filled = _whole_array_reference(labels, classes, 2)
    np.testing.assert_array_equal(keep_largest_component(labels, classes), largest)
    np.testing.assert_array_equal(fill_holes(labels, classes, axis=2), filled)
    structure = ndimage.generate_binary_structure(3, 3)
    expected = [ndimage.label(labels == c, structure=structure)[1] for c in [*classes, len(values)]]
    assert component_counts(labels, [*classes, len(values)]) == expected  # the last class is absent: 0


def test_decide_postprocessing_on_real_labels(sample_hippo: Path) -> None:
    raw = [
        np.asarray(nib.load(sample_hippo / "labelsTr" / f"hippocampus_{i}.nii.gz").dataobj).astype(np.uint8)
        for i in ("001", "003", "004")
    ]
    # Without their few native holes, so the punched hole is the only thing filling can change.
    gts = [fill_holes(g, [1, 2], axis=2) for g in raw]
    preds = []
    for gt in gts:
        p = gt.copy()
        p[0:2, 0:2, 0:2] = 1  # spurious class-1 island in every case
        p, _ = _punch_hole(p, 2, axis=2)  # a hole in class 2
        preds.append(p)
    plan = decide_postprocessing(preds, gts, 3, axis=2)
    assert plan == {"largest_component": [1], "fill_holes": [2]}
    # When the ground truth itself has two class-1 parts, keeping one hurts and must stay off.
    gts2 = [g.copy() for g in gts]
    for g in gts2:
        g[0:2, 0:2, 0:2] = 1
    plan2 = decide_postprocessing([g.copy() for g in gts2], gts2, 3, axis=2)
    assert plan2 == {"largest_component": [], "fill_holes": []}
    fixed = apply_postprocessing(preds[0], largest_component=[1], fill_holes_classes=[2], axis=2)
    np.testing.assert_array_equal(fixed, gts[0])


def test_predictor_applies_postprocessing(hippo_image: Path) -> None:
    # Threshold model on a real scan gives scattered components; largest_component=True leaves one.
    from scipy import ndimage

    volume = load_volume(hippo_image)
    raw = Predictor(ChannelModel(scale=50.0), spec(), device="cpu").predict(volume).array
    cleaned = Predictor(
        ChannelModel(scale=50.0),
        spec(),
        device="cpu",
        postprocessing=PostprocessingConfig(largest_component=True, fill_holes=False),
    ).predict(volume)
    assert ndimage.label(raw == 1, np.ones((3, 3, 3)))[1] > 1
    assert ndimage.label(cleaned.array == 1, np.ones((3, 3, 3)))[1] == 1


def test_tta_flips_on_a_model_trained_without_flips_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_checkpoint(tmp_path / "best.pt")  # its config has no flip augmentation
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        Predictor.from_checkpoint(path, device="cpu", precision="fp32")
    assert not caplog.records
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        Predictor.from_checkpoint(path, device="cpu", precision="fp32", tta_flips=True)
    assert "without flip augmentation" in caplog.text and str(path) in caplog.text
    ckpt = load_checkpoint(path)
    ckpt["config"] = {"augmentation": {"flip": {"prob": 0.5, "axes": [0]}}}
    save_checkpoint(path, ckpt)
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        Predictor.from_checkpoint(path, device="cpu", precision="fp32", tta_flips=True)
    assert not caplog.records


@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_slices_puts_a_model_in_channels_last_and_tells_a_converted_one(in_channels: int) -> None:
    """The first weight whose layout the format changes decides (a 1-channel first kernel cannot: it is
    contiguous in both formats); a model left in the default format is converted, whatever its first layer."""
    from medseg.inference.forward import _is_channels_last

    torch.manual_seed(0)
    model = UNet(in_channels, 2, base_features=4).eval()
    reference = UNet(in_channels, 2, base_features=4).eval()
    reference.load_state_dict(model.state_dict())
    assert not _is_channels_last(model)
    x = np.random.default_rng(0).standard_normal((2, in_channels, 16, 16)).astype(np.float32)
    probs = forward_slices(model, x, InferenceSettings(n_classes=3, mode="sigmoid", channels_last=True))
    assert _is_channels_last(model)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.ndim == 4)
    expected = forward_slices(reference, x, InferenceSettings(n_classes=3, mode="sigmoid"))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert not _is_channels_last(reference)  # channels_last=False leaves a model as it is
