"""Turns the PGBM tumour mask *series* into DICOM SEG (or RTSTRUCT) files: the training set of configs/pgbm_seg.yaml.

The inputs (``../shared/data/Brain-Tumor-Progression_PGBM_DICOM``) are read-only, so the prepared set goes to a
new folder that mirrors the case folders: ``<out>/<patient>/<study>/`` holds a symlink to the study's T1post
series folder and ``MaskTumor_seg.dcm`` (``--format rtstruct``: ``MaskTumor_rtstruct.dcm``) written by medseg
from the mask series on the T1post grid (values > 0 = class ``tumour``). Every file written is read back with
``medseg.io.load_segmentation`` and compared with the mask series voxel for voxel; the script prints the counts
and stops with an error on any difference.

    python benchmarks/pgbm_to_seg.py                    # -> runs/pgbm_seg_data (what configs/pgbm_seg.yaml reads)
    python benchmarks/pgbm_to_seg.py --format rtstruct --out runs/pgbm_rtstruct_data
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medseg.io import load_segmentation, load_volume  # noqa: E402
from medseg.io.dicom_seg import ClassCode, DicomWriteOptions, save_dicom_seg  # noqa: E402
from medseg.io.rtstruct import save_rtstruct  # noqa: E402

PGBM = REPO.parent / "shared" / "data" / "Brain-Tumor-Progression_PGBM_DICOM"
CLASSES = ["background", "tumour"]
OPTIONS = DicomWriteOptions(
    class_codes={
        "tumour": ClassCode("108369006", "SCT", "Neoplasm", "49755003", "SCT", "Morphologically Altered Structure")
    },
    series_description="MaskTumor as SEG (medseg)",
    algorithm_source="benchmarks/pgbm_to_seg.py from the MaskTumor series",
)


def convert(src_root: Path, out_root: Path, fmt: str) -> list[tuple[str, int]]:
    """Writes one SEG/RTSTRUCT per study; returns (study, tumour voxels) per study."""
    done = []
    for mask_dir in sorted(src_root.glob("*/*/*MaskTumor*")):
        study = mask_dir.parent
        image_dir = next(study.glob("*T1post*"))
        target = out_root / study.relative_to(src_root)
        target.mkdir(parents=True, exist_ok=True)
        link = target / image_dir.name
        if not link.exists():
            os.symlink(image_dir.resolve(), link, target_is_directory=True)
        image = load_volume(image_dir)
        labels = (load_volume(mask_dir).array > 0).astype(np.uint8)
        if fmt == "seg":
            path = save_dicom_seg(labels, image, target / "MaskTumor_seg.dcm", CLASSES, options=OPTIONS, overwrite=True)
        else:
            path = save_rtstruct(
                labels, image, target / "MaskTumor_rtstruct.dcm", CLASSES, options=OPTIONS, overwrite=True
            )
        back = load_segmentation(path, reference=load_volume(link), classes=CLASSES).array
        if not np.array_equal(back, labels):
            raise SystemExit(f"{path}: read back differs from the mask series in {int((back != labels).sum())} voxels")
        done.append((str(study.relative_to(src_root)), int(labels.sum())))
    if not done:
        raise SystemExit(f"No */*/*MaskTumor* series under '{src_root}'")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pgbm", type=Path, default=PGBM, help="Brain-Tumor-Progression_PGBM_DICOM folder (read-only)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "pgbm_seg_data", help="new folder for the set")
    ap.add_argument("--format", choices=("seg", "rtstruct"), default="seg")
    args = ap.parse_args(argv)
    for study, voxels in convert(args.pgbm, args.out, args.format):
        print(f"{study}: {voxels} tumour voxels, read back identical")
    print(f"Training set in '{args.out}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
