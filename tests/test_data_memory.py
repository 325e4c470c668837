"""The training-memory check: estimated from scan headers before anything is read; a dataset that cannot fit stops
the run with a message naming the estimate, the memory available and the way out, instead of an OOM kill."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import DataConfig
from medseg.data.cases import discover_cases
from medseg.data.memory import (
    BYTES_PER_VALUE,
    USABLE_SHARE,
    InsufficientMemoryError,
    check_training_memory,
    estimate_training_bytes,
)
from medseg.errors import RunFailedError

GIB = 2**30


def test_estimate_counts_every_voxel_from_the_headers(sample_hippo: Path) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    need, counted, total = estimate_training_bytes(cases)
    voxels = sum(int(np.prod(nib.load(c.image).shape)) for c in cases)
    assert counted == total == len(cases)
    assert need == voxels * BYTES_PER_VALUE


def test_a_dataset_that_fits_passes_and_one_that_does_not_stops(sample_hippo: Path) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    need, _, _ = estimate_training_bytes(cases)
    assert check_training_memory(cases, None, int(need / USABLE_SHARE) + 1) == need
    with pytest.raises(InsufficientMemoryError) as err:
        check_training_memory(cases, None, int(need))  # needs more than 80 % of what is there
    assert isinstance(err.value, RunFailedError)  # the run's failure: exit status 3, one message
    text = str(err.value)
    assert f"The training data of {len(cases)} cases needs about" in text
    assert "data.cache_dir" in text and "data.max_cases" in text
    # Two processes on one machine (torchrun) each hold a copy.
    assert check_training_memory(cases, None, int(2 * need / USABLE_SHARE) + 1, copies=2) == 2 * need
    with pytest.raises(InsufficientMemoryError, match="2 processes on this machine"):
        check_training_memory(cases, None, int(need / USABLE_SHARE) + 1, copies=2)
    # A cache folder (memory-mapped data) or an unknown amount of memory: nothing to check.
    assert check_training_memory(cases, Path("cache"), 1) is None
    assert check_training_memory(cases, None, None) is None


def test_a_sample_dicom_series_is_counted_exactly() -> None:
    from medseg.io import load_volume
    from medseg.io.header import scan_voxels

    folder = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"
    assert scan_voxels(folder) == int(np.prod(load_volume(folder).array.shape))


def test_dicom_series_are_counted_from_one_header_each(pgbm_dir: Path, tmp_path: Path) -> None:
    """A DICOM series folder counts as its files x one header's voxels: the voxels the reader then returns."""
    from medseg.io import load_volume
    from medseg.io.header import scan_voxels

    cases = discover_cases(DataConfig(root=pgbm_dir, layout="dicom", classes=["background", "tumour"])).cases
    need, counted, total = estimate_training_bytes(cases)
    voxels = [int(np.prod(load_volume(c.image).array.shape)) for c in cases]
    assert counted == total == len(cases)
    assert need == sum(voxels) * BYTES_PER_VALUE
    with pytest.raises(InsufficientMemoryError, match=f"The training data of {len(cases)} cases"):
        check_training_memory(cases, None, 1)
    # A folder with no DICOM image file is left out of the estimate (reading it reports the reason).
    (tmp_path / "notes.txt").write_text("not a scan")
    assert scan_voxels(tmp_path) is None


def test_trainer_stops_before_reading_any_file(
    sample_hippo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.io import load_volume
    from medseg.training import trainer as trainer_module
    from tests.test_training import make_cfg

    read: list[Path] = []

    def reader(path: Path):  # type: ignore[no-untyped-def]
        read.append(Path(path))
        return load_volume(path)

    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 64 * 2**10)  # 64 KiB
    cfg = make_cfg(sample_hippo, tmp_path, data={"max_cases": 4})
    with pytest.raises(InsufficientMemoryError, match=r"4 cases needs about 0\.0 GiB"):
        trainer_module.Trainer(cfg, reader=reader)
    assert read == []
