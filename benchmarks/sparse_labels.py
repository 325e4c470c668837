"""A sparsely annotated copy of an MSD-layout dataset: every k-th slice keeps its label, the rest is unannotated.

What a research group saves by drawing every fourth slice, measured: train on the copy with
``benchmarks/quality.py --data-root <copy> --ground-truth <original>/labelsTr`` and the held-out cases are scored
against their complete labels. Two copies answer two questions:

- ``--unannotated ignore``: the other slices hold the ``ignore`` label (``dataset.json``, nnU-Net v2 style), which
  medseg leaves out of training (``medseg.data.unannotated``);
- ``--unannotated background``: they hold 0, what a user without an ignore label would do (the model is taught
  that the unannotated structure is background).

Images are symlinked, never copied or changed; labels are rewritten with the original header. Prints and saves a
JSON of what was kept.

    python benchmarks/sparse_labels.py --data-root ../shared/data/<hippocampus> --every 4 --out /tmp/hippo_every4
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DEFAULT_DATA, command_line, write_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/sparse_labels.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="MSD-layout dataset (dataset.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the copy (must not exist)")
    parser.add_argument("--every", type=int, default=4, help="keep the label of every k-th slice")
    parser.add_argument(
        "--axis",
        type=int,
        default=2,
        choices=[0, 1, 2],
        help="voxel axis of the slices, in the files' own order (medseg slices in closest-RAS order: the same axis "
        "for RAS-stored files such as Task04 Hippocampus, not necessarily for others)",
    )
    parser.add_argument("--offset", type=int, default=None, help="first kept slice (default: every // 2)")
    parser.add_argument("--unannotated", choices=["ignore", "background"], default="ignore")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    args.offset = args.every // 2 if args.offset is None else args.offset
    return args


def kept_slices(ndim: int, every: int, axis: int, offset: int) -> tuple[slice, ...]:
    """The index of the slices that keep their label: every ``every``-th along ``axis``, from ``offset``."""
    keep = [slice(None)] * ndim
    keep[axis] = slice(offset, None, every)
    return tuple(keep)


def sparse_label(label: np.ndarray, every: int, axis: int, offset: int, fill: int) -> np.ndarray:
    """``label`` with only the :func:`kept_slices` kept, the rest ``fill``."""
    out = np.full_like(label, fill)
    keep = kept_slices(label.ndim, every, axis, offset)
    out[keep] = label[keep]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from medseg.data.cases import classes_from_labels, read_dataset_json

    src = args.data_root.expanduser().resolve()
    ds = read_dataset_json(src)
    classes, values = classes_from_labels(ds.get("labels"), src / "dataset.json")
    if values is not None:
        raise SystemExit("labels stored as other values than their class index are not supported here")
    ignore = len(classes)  # the next free value, as nnU-Net v2 requires (the highest)
    fill = ignore if args.unannotated == "ignore" else 0
    out = args.out
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    kept_voxels = total_voxels = n_kept_slices = total_slices = 0
    training = []
    for entry in ds["training"]:
        image, label = src / entry["image"], src / entry["label"]
        (out / "imagesTr" / image.name).symlink_to(image)
        img: Any = nib.load(label)  # a Nifti1Image (nib.load is typed as the base class)
        array = np.asarray(img.dataobj)
        sparse = sparse_label(array, args.every, args.axis, args.offset, fill)
        nib.save(nib.Nifti1Image(sparse.astype(array.dtype), img.affine, img.header), out / "labelsTr" / label.name)
        n = array.shape[args.axis]
        n_kept_slices += len(range(args.offset, n, args.every))
        total_slices += n
        fg = array > 0
        kept_voxels += int(fg[kept_slices(array.ndim, args.every, args.axis, args.offset)].sum())
        total_voxels += int(fg.sum())
        training.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
    labels: dict[str, Any] = {name: i for i, name in enumerate(classes)}
    if args.unannotated == "ignore":
        labels["ignore"] = ignore
    dataset = {**{k: v for k, v in ds.items() if k not in ("labels", "training")}, "labels": labels}
    dataset["training"] = training
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    summary = {
        "benchmark": "sparse_labels",
        "command": command_line(),
        "source": str(src),
        "every": args.every,
        "axis": args.axis,
        "offset": args.offset,
        "unannotated": args.unannotated,
        "ignore_value": ignore if args.unannotated == "ignore" else None,
        "cases": len(training),
        "annotated_slice_share": n_kept_slices / total_slices if total_slices else 0.0,
        "annotated_foreground_share": kept_voxels / total_voxels if total_voxels else 0.0,
    }
    write_json(out / "sparse_labels.json", summary)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
