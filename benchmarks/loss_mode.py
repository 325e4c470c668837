"""Sigmoid or softmax output by number of classes: what ``loss.mode: auto`` decides from (issue 17).

medseg's seed trained one sigmoid per foreground class. That is fine for the hippocampus (2 classes) but a
multi-organ CT set trains far worse with it. This script measures where: it builds small CT datasets with the
``k`` largest of TotalSegmentator's structures (``../shared/data/TotalSegmentator_examples``: one 3 mm CT with 41
labelled structures, cut into 8 overlapping, noise-jittered crops in an nnU-Net v2 layout, the other structures
set to background) and trains ``configs/hippocampus.yaml`` (the config a new user copies) on each with both
modes, epoch-bound (``training.max_minutes: null``), so the numbers do not depend on the machine's speed.

The crops share one patient, so the validation Dice says how fast each mode learns the structures, not how well
a model generalises; compare the two modes at each ``k``, not the values across ``k``. ::

    python benchmarks/loss_mode.py                         # k = 4, 10, 20, 41; ~2 min a run on 2 cores
    python benchmarks/loss_mode.py --classes 4 --epochs 1  # a smoke run (seconds; numbers meaningless)

Output: ``benchmarks/out/loss_mode_<tag>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, REPO, RUNS_DIR, command_line, fmt, machine_info, text_table, write_json

log = logging.getLogger("benchmarks.loss_mode")

TOTALSEG = REPO.parent / "shared" / "data" / "TotalSegmentator_examples"
#: Crop size (voxels) and count: each crop holds most of the scan, shifted as a new case would be.
CROP = (100, 85, 24)
N_CASES = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/loss_mode.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=TOTALSEG, help="the TotalSegmentator examples folder")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "hippocampus.yaml")
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 10, 20, 41], help="foreground classes k")
    parser.add_argument("--modes", nargs="+", default=["sigmoid", "softmax"], choices=["sigmoid", "softmax"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--tag", default="", help="output name: loss_mode_<tag>.json (default: the epochs)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    return parser.parse_args(argv)


def make_dataset(source: Path, root: Path, k: int) -> list[str]:
    """Writes the ``k``-structure dataset (nnU-Net v2 layout) under ``root``; returns its class names."""
    import nibabel as nib
    import numpy as np

    ct: Any = nib.load(source / "example_ct_sm.nii.gz")  # a Nifti1Image (nib.load is typed as the base class)
    seg_file: Any = nib.load(source / "example_seg.nii.gz")
    image, seg = np.asarray(ct.dataobj), np.asarray(seg_file.dataobj)
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(N_CASES):
        start = [int(rng.integers(0, n - c + 1)) for n, c in zip(image.shape, CROP, strict=True)]
        boxes.append(tuple(slice(s, s + c) for s, c in zip(start, CROP, strict=True)))
    counts = np.zeros(int(seg.max()) + 1, dtype=np.int64)
    for box in boxes:
        counts += np.bincount(seg[box].ravel(), minlength=len(counts))
    present = [int(v) for v in np.flatnonzero(counts[1:]) + 1]
    if k > len(present):
        raise SystemExit(f"--classes {k}: the crops hold only {len(present)} structures")
    keep = sorted(sorted(present, key=lambda v: -counts[v])[:k])
    lut = np.zeros(len(counts), dtype=np.uint8)
    lut[keep] = np.arange(1, k + 1)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, box in enumerate(boxes):
        affine = ct.affine.copy()
        affine[:3, 3] = ct.affine[:3, :3] @ np.array([b.start for b in box]) + ct.affine[:3, 3]
        jitter = rng.integers(-20, 20, size=CROP).astype(np.int16)
        scan = nib.Nifti1Image(image[box].astype(np.int16) + jitter, affine)
        nib.save(scan, root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lut[seg[box]], affine), root / "labelsTr" / f"ct_{i:03d}.nii.gz")
    names = [f"structure_{v}" for v in keep]
    labels = {"background": 0, **{name: j + 1 for j, name in enumerate(names)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": N_CASES, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return ["background", *names]


def main(argv: Sequence[str] | None = None) -> int:
    from medseg.config import load_config
    from medseg.runner import run_stages

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not (args.data / "example_seg.nii.gz").is_file():
        raise SystemExit(f"needs the TotalSegmentator examples at {args.data} (../shared/data)")
    tag = args.tag or f"{args.epochs}ep"
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medseg_loss_mode_") as tmp:
        for k in args.classes:
            root = Path(tmp) / f"k{k}"
            classes = make_dataset(args.data, root, k)
            for mode in args.modes:
                out = args.runs_dir / f"loss_mode_{tag}" / f"k{k}_{mode}"
                cfg = load_config(
                    args.config,
                    [
                        f"data.root={root}",
                        "training.max_minutes=null",
                        f"training.epochs={args.epochs}",
                        f"loss.mode={mode}",
                        "evaluation.overlays=0",
                        f"output.dir={out.resolve()}",
                        *args.overrides,
                    ],
                )
                start = time.perf_counter()
                result = run_stages(cfg, ["train", "predict", "evaluate"])
                runs.append(
                    {
                        "classes": k,
                        "mode": mode,
                        "best_val_dice": result.train.best_dice if result.train else None,
                        "eval_mean_dice": (result.evaluate or {}).get("mean_dice"),
                        "epochs": result.train.epochs if result.train else None,
                        "seconds": time.perf_counter() - start,
                        "class_names": classes[1:],
                    }
                )
                log.info("k=%d %s: validation Dice %s", k, mode, fmt(runs[-1]["best_val_dice"]))
    rows = []
    for k in args.classes:
        by_mode = {r["mode"]: r for r in runs if r["classes"] == k}
        rows.append([k, *(fmt(by_mode[m]["eval_mean_dice"]) for m in args.modes)])
    print(text_table(["classes", *(f"{m} Dice" for m in args.modes)], rows))
    path = write_json(
        args.out_dir / f"loss_mode_{tag}.json",
        {"command": command_line(), "machine": machine_info(), "config": str(args.config), "runs": runs},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
