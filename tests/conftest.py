"""Shared fixtures: where the real data lives, and skips with a reason when it is absent."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
# A fresh clone has no ../shared; MEDSEG_SHARED_DATA points elsewhere if the data lives elsewhere.
SHARED_DATA = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))

#: Seconds a test waits for a subprocess before giving up on it as hung. A guard against hangs only, never a
#: pass/fail criterion: tests wait on a condition (a file appearing, the process ending), so a slow machine
#: passes as a fast one does.
HANG_GUARD_S = 1800.0

HIPPO = SHARED_DATA / "Task04_Hippocampus"
PGBM = SHARED_DATA / "Brain-Tumor-Progression_PGBM_DICOM"
TOTALSEG = SHARED_DATA / "TotalSegmentator_examples"
HIPPOCROP = SHARED_DATA / "HippoCrop_DICOM_Udacity"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the cores (pyproject.toml: -n 2): one torch thread each, and one for the subprocesses they
    # start, so no OpenMP thread spins waiting for a core the other worker holds (measured 10-30x slower).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the module's tests, restored afterwards (opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    Tiny models on a shared 2-core machine: a second OpenMP thread only spins waiting for a busy core (measured
    30x slower under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs real data at {path} (../shared/data is not part of a fresh clone)")
    return path


@pytest.fixture
def hippo_dir() -> Path:
    """MSD Task04 Hippocampus (91 labelled cases) from ../shared/data."""
    return _require(HIPPO)


@pytest.fixture
def pgbm_dir() -> Path:
    """TCIA Brain-Tumor-Progression DICOM studies from ../shared/data."""
    return _require(PGBM)


@pytest.fixture
def totalseg_dir() -> Path:
    """TotalSegmentator example CT/MR files from ../shared/data."""
    return _require(TOTALSEG)


@pytest.fixture
def hippocrop_dir() -> Path:
    """HippoCrop DICOM series (file names sort wrongly as text) from ../shared/data."""
    return _require(HIPPOCROP)


@pytest.fixture
def sample_hippo() -> Path:
    """The small MSD-layout hippocampus set shipped in sample_data/ (always present)."""
    return SAMPLE_DATA / "hippocampus"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def msd_ct_case(totalseg_dir: Path, root: Path, **dataset: object) -> Path:
    """An MSD-layout folder under ``root`` holding the TotalSegmentator CT and its labels (symlinks) as one case;
    ``dataset`` adds keys to its ``dataset.json`` (e.g. ``modality={"0": "CT"}``)."""
    import json

    from medseg.io import load_volume

    ct, seg = totalseg_dir / "example_ct_sm.nii.gz", totalseg_dir / "example_seg.nii.gz"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "ct.nii.gz").symlink_to(ct)
    (root / "labelsTr" / "ct.nii.gz").symlink_to(seg)
    labels = {str(i): f"c{i}" for i in range(int(load_volume(seg).array.max()) + 1)}
    training = [{"image": "./imagesTr/ct.nii.gz", "label": "./labelsTr/ct.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps({**dataset, "labels": labels, "training": training}))
    return root


def nnunet_v2_copy(
    sample_hippo: Path,
    root: Path,
    labels: dict[str, Any],
    *,
    n: int = 9,
    label: Callable[[np.ndarray], np.ndarray] | None = None,
    **dataset: Any,
) -> list[str]:
    """An nnU-Net v2 raw folder of the first ``n`` sample hippocampus cases: images linked as ``<case>_0000``,
    labels linked, or written through ``label`` (uint8 in, same grid out); ``dataset.json`` declares ``labels`` and
    any other ``dataset`` keys. Returns the case ids."""
    import json

    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    ids = sorted(p.name[: -len(".nii.gz")] for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]
    for cid in ids:
        (root / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        source, target = sample_hippo / "labelsTr" / f"{cid}.nii.gz", root / "labelsTr" / f"{cid}.nii.gz"
        if label is None:
            target.symlink_to(source)
        else:
            img = nib.load(source)
            nib.save(nib.Nifti1Image(label(np.asarray(img.dataobj).astype(np.uint8)), img.affine, img.header), target)
    meta = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": n, "file_ending": ".nii.gz", **dataset}
    (root / "dataset.json").write_text(json.dumps(meta))
    return ids


def run_tiny(out: Path, *, epochs: int = 1, **data: Any) -> Any:
    """Trains, predicts and evaluates a tiny seeded model (base 4, fp32, CPU) on ``data`` (the ``data`` config
    section) in-process; returns ``medseg.runner.run_stages``' result. Two runs on the same data train bit for bit
    alike, which tests of label formats compare."""
    from medseg.config import config_from_dict
    from medseg.runner import run_stages

    cfg = config_from_dict(
        {
            "data": {"val_fraction": 0.34, "seed": 0, **data},
            "model": {"base_features": 4},
            "training": {"epochs": epochs, "batch_size": 8, "num_workers": 0, "device": "cpu", "precision": "fp32"},
            "inference": {"device": "cpu", "precision": "fp32"},
            "evaluation": {"overlays": 0},
            "output": {"dir": str(out)},
        },
        base_dir=Path.cwd(),
    )
    return run_stages(cfg, ["train", "predict", "evaluate"])
