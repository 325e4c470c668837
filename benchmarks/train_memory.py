"""Training memory: peak RSS of setting up a run's data (read, normalise, plan, slice, the training dataset).

``Trainer(cfg)`` reads every training and validation case once and keeps it in memory (unless
``data.cache_dir``), so the data, not the model, decides whether a dataset fits a machine: a CT dataset of a
billion voxels is 4 GB as float32, and every extra copy per voxel is another 4 GB. Each measurement runs in its own
process (``VmHWM`` = that setup's peak alone) and records the dataset's voxel count, so the result reads as bytes
per voxel, which carries over to datasets of other sizes.

``--ref COMMIT`` also measures that commit (checked out into a temporary ``git worktree``, its ``medseg`` imported
instead of this one) in the same run, so a change's effect is a ratio of two measurements on one machine.

::

    python benchmarks/train_memory.py --config configs/la2018.yaml --data-root ../shared/data/LA2018_UAMT \\
        --ref 4ebb4b1 --tag la2018        # benchmarks/out/train_memory_la2018.json
    # a CT-sized set without resampling: 6 synthetic 512 x 512 x 60 volumes at 0.8 x 0.8 x 5 mm
    python benchmarks/train_memory.py --config configs/hippocampus.yaml --synthetic-ct 6 --ref 4ebb4b1 \\
        --tag synthetic_ct_6x512x512x60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, REPO, RUNS_DIR, command_line, machine_info, proc_status_mb, write_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/la2018.yaml"), help="medseg YAML config")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (data.root)")
    parser.add_argument(
        "--synthetic-ct",
        type=int,
        default=0,
        metavar="N",
        help="instead of --data-root: N seeded CT-like volumes of 512 x 512 x 60 int16 (MSD layout, CT)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--ref", default=None, help="also measure this git commit (a temporary worktree)")
    parser.add_argument("--tag", default="default", help="result name: out/train_memory_<tag>.json")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the JSON goes")
    parser.add_argument("--work-dir", type=Path, default=RUNS_DIR / "train_memory", help="scratch output.dir")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process whose ``medseg`` is the one under ``spec["source"]``: builds the trainer."""
    sys.path.insert(0, spec["source"])
    import medseg
    from medseg.config import load_config
    from medseg.training.trainer import Trainer

    assert Path(medseg.__file__).resolve().is_relative_to(Path(spec["source"]).resolve()), medseg.__file__
    cfg = load_config(
        Path(spec["config"]),
        [
            *spec["overrides"],
            f"data.root={spec['data_root']}",
            f"output.dir={spec['work_dir']}",
            "training.resume=false",
        ],
    )
    rss_start = proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    seconds = time.perf_counter() - t0
    data = trainer.data
    voxels = sum(int(p.n_slices) * int(p.image.shape[-2]) * int(p.image.shape[-1]) for p in [*data.train, *data.val])
    return {
        "setup_seconds": seconds,
        "rss_start_mb": rss_start,
        "rss_after_setup_mb": proc_status_mb("VmRSS"),
        "peak_rss_mb": proc_status_mb("VmHWM"),
        "cases": {"train": len(data.train), "val": len(data.val)},
        "context_slices": int(data.context),
        "input_channels": int(trainer.network_spec.in_channels) // (2 * int(data.context) + 1),
        "dataset_voxels": voxels,
        "dataset_slices": len(trainer.dataset),
        "stored_patch": list(getattr(trainer.dataset, "stored_hw", ())),
    }


def _measure(source: Path, label: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "source": str(source),
        "config": str(args.config.resolve()),
        "data_root": str(args.data_root.resolve()),
        "overrides": list(args.set),
        "work_dir": str((args.work_dir / label).resolve()),
    }
    env = {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=source,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{label}: the measurement failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # Baseline: the interpreter with torch, MONAI and medseg imported holds this much before any data is read.
    result["data_peak_mb"] = result["peak_rss_mb"] - result["rss_start_mb"]
    result["bytes_per_voxel"] = result["data_peak_mb"] * 2**20 / result["dataset_voxels"]
    return result


def synthetic_ct(root: Path, n: int) -> Path:
    """``n`` seeded CT-like volumes in MSD layout (``dataset.json`` modality CT): 512 x 512 x 60 int16 noise
    around 40 HU with an air band, one box label, 0.8 x 0.8 x 5 mm. Memory, not quality, is measured on them."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([-0.8, -0.8, 5.0, 1.0])
    training = []
    for i in range(n):
        image = rng.normal(40, 30, (512, 512, 60)).astype(np.int16)
        image[:60] = -1000
        label = np.zeros(image.shape, np.uint8)
        label[200:300, 220:330, 10:50] = 1
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"ct_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"ct_{i}.nii.gz")
        training.append({"image": f"./imagesTr/ct_{i}.nii.gz", "label": f"./labelsTr/ct_{i}.nii.gz"})
    labels = {"0": "background", "1": "organ"}
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": labels, "training": training}))
    return root


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.synthetic_ct:
        args.data_root = synthetic_ct(args.work_dir / "synthetic_ct", args.synthetic_ct)
    if args.data_root is None:
        raise SystemExit("give --data-root or --synthetic-ct N")
    result: dict[str, Any] = {
        "benchmark": "train_memory",
        "command": command_line(),
        "config_file": str(args.config),
        "overrides": list(args.set),
        "data_root": str(args.data_root),
        "machine": machine_info(),
        "runs": {},
    }
    # This tree is labelled apart from the reference, which may be the same commit (``--ref HEAD``).
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/out"))  # results
    head = _git("rev-parse", "--short", "HEAD") + ("+uncommitted" if dirty else "") + " (this tree)"
    result["runs"][head] = _measure(REPO, "this_tree", args)
    if args.ref is not None:
        ref = _git("rev-parse", "--short", args.ref)
        with tempfile.TemporaryDirectory(prefix="medseg-ref-") as tmp:
            tree = Path(tmp) / ref
            _git("worktree", "add", "--detach", str(tree), ref)
            try:
                result["runs"][ref] = _measure(tree, f"ref_{ref}", args)
            finally:
                _git("worktree", "remove", "--force", str(tree))
        result["ratio_peak_data"] = result["runs"][head]["data_peak_mb"] / result["runs"][ref]["data_peak_mb"]
    for name, run in result["runs"].items():
        print(
            f"{name}: peak RSS {run['peak_rss_mb']:.0f} MiB ({run['data_peak_mb']:.0f} MiB above the imports), "
            f"{run['dataset_voxels'] / 1e6:.1f} M voxels -> {run['bytes_per_voxel']:.1f} bytes/voxel, "
            f"setup {run['setup_seconds']:.1f} s"
        )
    if "ratio_peak_data" in result:
        print(f"data peak, {head} / {args.ref}: {result['ratio_peak_data']:.2f}")
    path = write_json(args.out_dir / f"train_memory_{args.tag}.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
