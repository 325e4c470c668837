"""Where the training data lives, decided from scan headers before anything is read: in memory when it fits; else
memory-mapped from the run's folder (``data.cache_dir: auto``), or a message naming the estimate, the memory
available and the way out, instead of an OOM kill."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import DataConfig
from medseg.data import memory
from medseg.data.cases import discover_cases
from medseg.data.memory import (
    AUTO_CACHE_FOLDER,
    BYTES_PER_VALUE,
    DISK_BYTES_PER_VALUE,
    USABLE_SHARE,
    InsufficientMemoryError,
    choose_cache_dir,
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


def test_in_memory_only_a_dataset_that_fits_passes_and_one_that_does_not_stops(
    sample_hippo: Path, tmp_path: Path
) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    need, _, _ = estimate_training_bytes(cases)
    assert choose_cache_dir(cases, None, int(need / USABLE_SHARE) + 1, output_dir=tmp_path) is None
    with pytest.raises(InsufficientMemoryError) as err:
        choose_cache_dir(cases, None, int(need), output_dir=tmp_path)  # needs more than 80 % of what is there
    assert isinstance(err.value, RunFailedError)  # the run's failure: exit status 3, one message
    text = str(err.value)
    assert f"The training data of {len(cases)} cases needs about" in text
    assert "data.cache_dir" in text and "data.max_cases" in text
    # Two processes on one machine (torchrun) each hold a copy.
    assert choose_cache_dir(cases, None, int(2 * need / USABLE_SHARE) + 1, output_dir=tmp_path, copies=2) is None
    with pytest.raises(InsufficientMemoryError, match="2 processes on this machine"):
        choose_cache_dir(cases, None, int(need / USABLE_SHARE) + 1, output_dir=tmp_path, copies=2)
    # An unknown amount of memory: kept in memory, nothing to check.
    assert choose_cache_dir(cases, None, None, output_dir=tmp_path) is None
    assert not list(tmp_path.iterdir())  # deciding writes nothing


def test_a_cache_folder_is_used_as_given(sample_hippo: Path, tmp_path: Path) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    assert choose_cache_dir(cases, tmp_path / "cache", 1, output_dir=tmp_path / "run") == tmp_path / "cache"


def test_auto_keeps_data_that_fits_in_memory_and_maps_the_rest_from_the_run_folder(
    sample_hippo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    need, _, _ = estimate_training_bytes(cases)
    run = tmp_path / "run"
    assert choose_cache_dir(cases, "auto", int(need / USABLE_SHARE) + 1, output_dir=run) is None
    assert choose_cache_dir(cases, "auto", None, output_dir=run) is None
    with caplog.at_level("WARNING", logger="medseg.data.memory"):
        assert choose_cache_dir(cases, "auto", int(need), output_dir=run) == run / AUTO_CACHE_FOLDER
    assert f"memory-mapped from {run / AUTO_CACHE_FOLDER} instead" in caplog.text
    assert not run.exists()  # the folder is made when the first case is written
    # No room on that disk either: a message with both numbers and the way out.
    on_disk = need * DISK_BYTES_PER_VALUE / BYTES_PER_VALUE
    monkeypatch.setattr(memory, "_free_disk_bytes", lambda folder: int(on_disk))
    with pytest.raises(InsufficientMemoryError, match=r"Nor does the disk of output.dir .* have room") as err:
        choose_cache_dir(cases, "auto", int(need), output_dir=run)
    assert "data.cache_dir" in str(err.value) and "data.max_cases" in str(err.value)
    monkeypatch.setattr(memory, "_free_disk_bytes", lambda folder: int(on_disk / USABLE_SHARE) + 1)
    assert choose_cache_dir(cases, "auto", int(need), output_dir=run) == run / AUTO_CACHE_FOLDER


def test_free_disk_space_is_read_from_the_nearest_existing_folder(tmp_path: Path) -> None:
    import shutil

    free = memory._free_disk_bytes(tmp_path / "not" / "yet" / "made")
    assert free is not None and abs(free - shutil.disk_usage(tmp_path).free) < 2**30


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
        choose_cache_dir(cases, None, 1, output_dir=tmp_path)
    # A folder with no DICOM image file is left out of the estimate (reading it reports the reason).
    (tmp_path / "notes.txt").write_text("not a scan")
    assert scan_voxels(tmp_path) is None


def test_trainer_stops_before_reading_any_file_when_data_must_stay_in_memory(
    sample_hippo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.io import load_volume
    from medseg.training import trainer as trainer_module
    from tests.test_training import make_cfg

    read: list[Path] = []

    def reader(path: Path, *, label: bool = False):  # type: ignore[no-untyped-def]
        read.append(Path(path))
        return load_volume(path, label=label)

    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 64 * 2**10)  # 64 KiB
    cfg = make_cfg(sample_hippo, tmp_path, data={"max_cases": 4, "cache_dir": None})
    with pytest.raises(InsufficientMemoryError, match=r"4 cases needs about 0\.0 GiB"):
        trainer_module.Trainer(cfg, reader=reader)
    assert read == []


def test_trainer_maps_data_that_does_not_fit_from_the_run_folder_and_trains_the_same(
    sample_hippo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data.cache_dir: auto`` (the default): the same run, step for step, as in memory; nothing left on disk."""
    from medseg.training import trainer as trainer_module
    from tests.test_training import make_cfg, read_metrics

    def fit(out: Path) -> trainer_module.Trainer:
        cfg = make_cfg(sample_hippo, out, data={"max_cases": 4}, training={"epochs": 1, "batch_size": 8})
        trainer = trainer_module.Trainer(cfg)
        trainer.fit()
        return trainer

    in_memory = fit(tmp_path / "memory")
    assert not isinstance(in_memory.data.train[0].image, np.memmap)
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 64 * 2**10)  # 64 KiB
    mapped = fit(tmp_path / "mapped")
    assert all(isinstance(c.image, np.memmap) and isinstance(c.label, np.memmap) for c in mapped.data.train)
    assert (tmp_path / "mapped" / AUTO_CACHE_FOLDER).is_dir()
    assert list((tmp_path / "mapped" / AUTO_CACHE_FOLDER).iterdir()) == []  # files unlinked once mapped
    loss = [float(r["train_loss"]) for r in read_metrics(tmp_path / "memory" / "train" / "metrics.csv")]
    assert loss == [float(r["train_loss"]) for r in read_metrics(tmp_path / "mapped" / "train" / "metrics.csv")]
    for name, weight in in_memory.model.state_dict().items():
        assert torch.equal(weight, mapped.model.state_dict()[name]), name


def test_the_placement_is_said_without_acting_on_it(sample_hippo: Path, tmp_path: Path) -> None:
    """What the ``summary`` stage prints: the same decision as training's, as a sentence, never an error."""
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    need, _, _ = estimate_training_bytes(cases)
    fits = memory.place_training_data(cases, "auto", int(need / USABLE_SHARE) + 1, output_dir=tmp_path)
    assert fits.folder is None and fits.refusal is None
    assert fits.text.startswith(f"kept in memory: about {need / 2**30:.1f} GiB for {len(cases)} cases")
    mapped = memory.place_training_data(cases, "auto", int(need), output_dir=tmp_path)
    assert mapped.folder == tmp_path / AUTO_CACHE_FOLDER and "memory-mapped from" in mapped.text
    stops = memory.place_training_data(cases, None, int(need), output_dir=tmp_path)
    assert stops.folder is None and stops.refusal is not None
    assert stops.text == f"would stop the run: {stops.refusal}"
    with pytest.raises(InsufficientMemoryError) as err:
        choose_cache_dir(cases, None, int(need), output_dir=tmp_path)
    assert str(err.value) == stops.refusal  # one message, whether said in advance or met in training
    assert not list(tmp_path.iterdir())
