"""Makes the stored reference prediction that ``tests/test_reference_prediction.py`` compares against.

Run once from the repository root (``python tests/data/make_reference.py``) with the code whose masks are the
reference; it writes ``reference_model.pt`` and ``reference_masks.npz`` here. Re-run it only when a change is
*meant* to change masks, and say so in the commit.

The model is a seeded, untrained base-4 UNet (softmax over the 3 hippocampus classes, 2.5D context 1, z-score
normalisation): prediction code does not care whether weights were trained, and a random network's class
boundaries run everywhere through the volume, so every voxel's argmax is exercised, not only a few edges.
Its weights are stored (not re-drawn from the seed) so a torch release that initialises differently cannot
move the reference. Masks: fp32 on CPU, contiguous memory format, ``batch_size`` 64 (the pre-issue-15 default),
through ``Predictor.predict`` on sample_data cases 001 and 003 and the HippoCrop DICOM series.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from medseg.inference.predictor import Predictor  # noqa: E402
from medseg.io import load_volume  # noqa: E402
from medseg.models.unet import UNet  # noqa: E402
from tests.test_inference import make_checkpoint  # noqa: E402

CLASSES = ["background", "anterior", "posterior"]
#: Scans (relative to the repository root) and their key in the .npz.
SCANS = {
    "hippocampus_001": "sample_data/hippocampus/imagesTr/hippocampus_001.nii.gz",
    "hippocampus_003": "sample_data/hippocampus/imagesTr/hippocampus_003.nii.gz",
    "hippocrop_dicom": "sample_data/dicom/HippoCrop_Study1",
}


def make_model(path: Path) -> Path:
    torch.manual_seed(15)
    model = UNet(3, 3, base_features=4)
    # An untrained head is dominated by its random bias (one class everywhere): standardise each class's logit
    # over case 001's slices, so the argmax boundaries run through the volume.
    image = load_volume(REPO / SCANS["hippocampus_001"]).array
    image = (image - image.mean()) / image.std()
    x = torch.from_numpy(np.moveaxis(image, 2, 0)[:, None].repeat(3, axis=1).astype(np.float32))
    x = torch.nn.functional.pad(x, (0, 64 - x.shape[3], 0, 48 - x.shape[2]))
    with torch.no_grad():
        logits = model.eval()(x)
        mean, std = logits.mean(dim=(0, 2, 3)), logits.std(dim=(0, 2, 3))
        head = model.output_conv
        head.weight /= std[:, None, None, None]
        assert head.bias is not None
        head.bias.copy_((head.bias - mean) / std)
    # The checkpoint fields as the tests' own helper writes them (epoch and best_dice do not touch masks).
    return make_checkpoint(path, classes=tuple(CLASSES), mode="softmax", context=1, model=model)


def main() -> None:
    model_path = make_model(HERE / "reference_model.pt")
    predictor = Predictor.from_checkpoint(
        model_path, device="cpu", precision="fp32", batch_size=64, channels_last=False
    )
    masks = {key: predictor.predict(load_volume(REPO / rel)).array for key, rel in SCANS.items()}
    for key, mask in masks.items():
        print(key, mask.shape, mask.dtype, np.bincount(mask.ravel(), minlength=3))
    np.savez_compressed(HERE / "reference_masks.npz", **masks)


if __name__ == "__main__":
    main()
