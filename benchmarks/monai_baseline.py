"""The alternative a user would reach for: a plain MONAI 2D slice pipeline (issue 7's reference).

MONAI ``BasicUNet`` (2D, default features), ``DiceCELoss`` (softmax), affine + elastic + intensity augmentation
with MONAI dictionary transforms, per-volume z-score (``NormalizeIntensityd``), AdamW at a constant learning
rate, slices along the last voxel axis, trained for a wall-clock budget; the final weights are used (a plain
pipeline has no validation-based model selection). Written the way MONAI's tutorials write it: ``LoadImaged``,
a ``CacheDataset`` of slice dicts, a ``DataLoader``, argmax, masks saved with nibabel on the scan's affine.

:func:`plain_augmentation` also serves ``speed.py`` (c): medseg's augmentation settings expressed as plain
MONAI transforms, without medseg's optimisations (gated elastic, metadata tracking off, one slice array).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import (
    AffineConfig,
    AugmentationConfig,
    ElasticConfig,
    FlipConfig,
    GammaConfig,
    LowResolutionConfig,
    NoiseConfig,
    ScaleIntensityConfig,
)

log = logging.getLogger("benchmarks.monai_baseline")

#: The baseline's fixed settings (kept here, not read from medseg's config, so tuning medseg never moves it).
BASELINE_SETTINGS: dict[str, Any] = {
    "model": "monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=n_classes)",
    "features": [32, 32, 64, 128, 256, 32],
    "loss": "DiceCELoss(to_onehot_y=True, softmax=True)",
    "optimizer": "AdamW",
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "batch_size": 32,
    "normalization": "NormalizeIntensityd (per-volume z-score)",
    "slice_axis": "last voxel axis",
    "precision": "fp32",
    "model_selection": "final weights",
}
#: Affine + elastic + intensity augmentation (no flips: they would swap left/right structures in other data).
BASELINE_AUGMENTATION = AugmentationConfig(
    elastic=ElasticConfig(prob=0.2, spacing=(20.0, 20.0), magnitude=(1.0, 2.0)),
    affine=AffineConfig(prob=0.3, rotate_deg=15.0, scale=0.15),
    flip=FlipConfig(prob=0.0),
    noise=NoiseConfig(prob=0.15, std=0.1),
    scale_intensity=ScaleIntensityConfig(prob=0.15, factor=0.25),
    low_resolution=LowResolutionConfig(prob=0.0),  # the baseline as measured, before medseg had this transform
    gamma=GammaConfig(prob=0.15, gamma=(0.7, 1.5)),
)

_KEYS = ("image", "label")


def plain_augmentation(aug: AugmentationConfig) -> list[Any]:
    """``aug`` as a list of plain MONAI dictionary transforms (the same transforms and ranges as medseg's).

    Args:
        aug: The ``augmentation`` config section.

    Returns:
        Transforms for ``{"image": (C, H, W), "label": (1, H, W)}`` dicts, spatial first, then intensity.
    """
    import math

    from monai.transforms import (
        Rand2DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandSimulateLowResolutiond,
    )

    if not aug.enabled:
        return []
    modes = ("bilinear", "nearest")
    out: list[Any] = []
    if aug.elastic.prob > 0:
        out.append(
            Rand2DElasticd(
                keys=_KEYS,
                spacing=(aug.elastic.spacing[0], aug.elastic.spacing[1]),
                magnitude_range=(aug.elastic.magnitude[0], aug.elastic.magnitude[1]),
                prob=aug.elastic.prob,
                mode=modes,
                padding_mode="zeros",
            )
        )
    if aug.affine.prob > 0:
        out.append(
            RandAffined(
                keys=_KEYS,
                prob=aug.affine.prob,
                rotate_range=(math.radians(aug.affine.rotate_deg),),
                scale_range=(aug.affine.scale, aug.affine.scale),
                mode=modes,
                padding_mode="zeros",
            )
        )
    if aug.flip.prob > 0:
        out += [RandFlipd(keys=_KEYS, prob=aug.flip.prob, spatial_axis=a) for a in sorted(set(aug.flip.axes))]
    if aug.noise.prob > 0:
        out.append(RandGaussianNoised(keys="image", prob=aug.noise.prob, mean=0.0, std=aug.noise.std))
    if aug.scale_intensity.prob > 0:
        out.append(RandScaleIntensityd(keys="image", factors=aug.scale_intensity.factor, prob=aug.scale_intensity.prob))
    if aug.low_resolution.prob > 0:
        out.append(
            RandSimulateLowResolutiond(
                keys="image",
                prob=aug.low_resolution.prob,
                zoom_range=aug.low_resolution.zoom,
                downsample_mode="nearest",
                upsample_mode="bilinear",
            )
        )
    if aug.gamma.prob > 0:
        out.append(
            RandAdjustContrastd(
                keys="image", prob=aug.gamma.prob, gamma=(aug.gamma.gamma[0], aug.gamma.gamma[1]), retain_stats=True
            )
        )
    return out


def _load(case_image: Path, case_label: Path | None) -> dict[str, Any]:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd

    keys = ["image", "label"] if case_label is not None else ["image"]
    loader = Compose(
        [
            LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys=keys),
            NormalizeIntensityd(keys="image"),
        ]
    )
    item: dict[str, Any] = {"image": str(case_image)}
    if case_label is not None:
        item["label"] = str(case_label)
    out: dict[str, Any] = loader(item)
    return out


def _slices(cases: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """2D slice dicts ``{"image": (1, I, J), "label": (1, I, J)}`` along the last axis of every case."""
    items = []
    for case in cases:
        data = _load(case.image, case.label)
        image = np.asarray(data["image"], dtype=np.float32)  # (1, I, J, K)
        label = np.asarray(data["label"], dtype=np.float32)
        for k in range(image.shape[-1]):
            items.append({"image": image[..., k].copy(), "label": label[..., k].copy()})
    return items


def _pad_size(items: Sequence[dict[str, np.ndarray]], multiple: int = 16) -> tuple[int, int]:
    h = max(int(it["image"].shape[-2]) for it in items)
    w = max(int(it["image"].shape[-1]) for it in items)
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def train_baseline(
    train_cases: Sequence[Any],
    n_classes: int,
    *,
    minutes: float,
    seed: int = 0,
    num_workers: int = 0,
    device: str = "cpu",
) -> tuple[Any, dict[str, Any]]:
    """Trains the plain MONAI pipeline for ``minutes`` of training-loop wall clock (data loading excluded).

    Args:
        train_cases: Cases with ``image`` and ``label`` paths.
        n_classes: Classes including background.
        minutes: Training budget; the loop stops at the first step that crosses it.
        seed: Seeds weights, shuffling and augmentation.
        num_workers: DataLoader worker processes.
        device: Torch device string.

    Returns:
        ``(model, stats)`` with steps, epochs, slices/s, data-wait share and timings.
    """
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet
    from monai.transforms import Compose, SpatialPadd
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    t0 = time.perf_counter()
    items = _slices(train_cases)
    patch = _pad_size(items)
    transform = Compose([SpatialPadd(keys=_KEYS, spatial_size=patch), *plain_augmentation(BASELINE_AUGMENTATION)])
    transform.set_random_state(seed=seed)
    dataset = CacheDataset(items, transform=transform, cache_rate=1.0, num_workers=0, progress=False)
    generator = torch.Generator().manual_seed(seed)
    bs = int(BASELINE_SETTINGS["batch_size"])
    loader = DataLoader(
        dataset, batch_size=bs, shuffle=True, num_workers=num_workers, drop_last=len(dataset) >= bs, generator=generator
    )
    prep_seconds = time.perf_counter() - t0

    dev = torch.device(device)
    model = BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=n_classes, features=tuple(BASELINE_SETTINGS["features"])
    ).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(BASELINE_SETTINGS["lr"]), weight_decay=float(BASELINE_SETTINGS["weight_decay"])
    )
    budget = minutes * 60.0
    steps = epochs = slices = 0
    wait = 0.0
    last_loss = float("nan")
    model.train()
    start = time.perf_counter()
    done = False
    while not done:
        fetch = time.perf_counter()
        for batch in loader:
            wait += time.perf_counter() - fetch
            x = batch["image"].to(dev)
            y = batch["label"].to(dev)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            steps += 1
            slices += int(x.shape[0])
            last_loss = float(loss.item())
            if steps % 50 == 0:
                log.info("baseline step %d, loss %.4f, %.0f s", steps, last_loss, time.perf_counter() - start)
            if time.perf_counter() - start >= budget:
                done = True
                break
            fetch = time.perf_counter()
        epochs += 1
    seconds = time.perf_counter() - start
    stats = {
        "prep_seconds": prep_seconds,
        "train_seconds": seconds,
        "steps": steps,
        "epochs_started": epochs,
        "training_slices": len(dataset),
        "patch_hw": list(patch),
        "slices_per_s": slices / seconds if seconds > 0 else None,
        "data_wait_share": wait / seconds if seconds > 0 else None,
        "last_loss": last_loss,
        "num_workers": num_workers,
    }
    return model, stats


def predict_baseline(
    model: Any, cases: Sequence[Any], out_dir: Path, *, device: str = "cpu", batch_size: int = 64
) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """Predicts each case's volume slice by slice (argmax) and writes ``<out_dir>/<case id>.nii.gz``.

    Returns:
        ``([(case id, mask path)], stats)`` with the total and model-only seconds.
    """
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    written: list[tuple[str, Path]] = []
    model_seconds = 0.0
    n_slices = 0
    start = time.perf_counter()
    for case in cases:
        image = torch.as_tensor(np.asarray(_load(case.image, None)["image"], dtype=np.float32))  # (1, I, J, K)
        x = image[0].permute(2, 0, 1)[:, None]  # (K, 1, I, J)
        h, w = x.shape[-2:]
        ph, pw = -(-h // 16) * 16 - h, -(-w // 16) * 16 - w
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        labels = []
        t = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, x.shape[0], batch_size):
                logits = model(x[s : s + batch_size].to(dev))
                labels.append(logits.argmax(1).to("cpu"))
        model_seconds += time.perf_counter() - t
        n_slices += int(x.shape[0])
        lab = torch.cat(labels)[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]  # (K, I, J)
        mask = lab.permute(1, 2, 0).numpy().astype(np.uint8)
        ref: Any = nib.load(str(case.image))  # a Nifti1Image: the baseline reads NIfTI only
        header = ref.header.copy()
        header.set_data_dtype(np.uint8)
        path = out_dir / f"{case.id}.nii.gz"
        nib.save(nib.Nifti1Image(mask, ref.affine, header), str(path))
        written.append((case.id, path))
    seconds = time.perf_counter() - start
    stats = {
        "predict_seconds": seconds,
        "model_seconds": model_seconds,
        "volumes": len(written),
        "slices": n_slices,
        "volumes_per_s": len(written) / seconds if seconds > 0 else None,
        "volumes_per_s_model_only": len(written) / model_seconds if model_seconds > 0 else None,
    }
    return written, stats
