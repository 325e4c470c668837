"""The training dataset: each file read once per run, slices that match the volumes, foreground sampling,
the memory-mapped cache."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medseg.config import AugmentationConfig, DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.dataset import SliceDataset, worker_init_fn
from medseg.data.normalization import normalize
from medseg.data.prepare import prepare_cases, prepare_training_data
from medseg.data.sampling import ForegroundSampler, foreground_sampler
from medseg.data.slicing import pad_to_shape
from medseg.data.splits import split_cases
from medseg.data.transforms import train_transforms
from medseg.io import load_volume
from medseg.volume import Volume


class CountingReader:
    """``load_volume`` that counts how often each path is read."""

    def __init__(self) -> None:
        self.reads: Counter[Path] = Counter()

    def __call__(self, path: Path, *, label: bool = False) -> Volume:
        self.reads[Path(path)] += 1
        return load_volume(path, label=label)


def test_each_file_is_read_once_per_run(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo))
    train, val = split_cases(spec.cases, 0.25, seed=0)
    reader = CountingReader()
    cfg = AugmentationConfig()
    data = prepare_training_data(train, val, len(spec.classes), PreprocessingConfig(context_slices=1), reader=reader)
    dataset = SliceDataset(data.train, transforms=train_transforms(cfg, seed=0))
    loader = DataLoader(dataset, batch_size=16, sampler=foreground_sampler(dataset, 0.33, num_samples=64, seed=0))
    for _epoch in range(2):
        for batch in loader:
            assert batch["image"].shape[1:] == (3, *dataset.patch_hw)
    for prepared in data.val:  # validation reads the prepared volumes, not the files
        assert prepared.volume.shape == prepared.shape
    expected = {c.image for c in spec.cases} | {c.label for c in spec.cases}
    assert set(reader.reads) == expected
    assert all(n == 1 for n in reader.reads.values()), reader.reads
    assert len(reader.reads) == 2 * len(spec.cases)


def test_items_are_the_padded_normalised_slices(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=3))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(context_slices=2), reader=load_volume)
    dataset = SliceDataset(data.train)
    case_no = 1
    prepared = data.train[case_no]
    start = int(np.flatnonzero(dataset.case_index == case_no)[0])
    raw = load_volume(prepared.case.image).array
    expected_volume = normalize(raw, data.params)
    np.testing.assert_array_equal(prepared.volume, expected_volume)
    label = load_volume(prepared.case.label).array
    for n in (0, 1, prepared.n_slices // 2, prepared.n_slices - 1):
        item = dataset[start + n]
        want = np.stack([expected_volume[:, :, min(max(n + d, 0), prepared.n_slices - 1)] for d in range(-2, 3)])
        padded, _ = pad_to_shape(want, dataset.patch_hw)
        np.testing.assert_array_equal(item["image"].numpy(), padded)
        want_label, _ = pad_to_shape(label[:, :, n].astype(np.int64), dataset.patch_hw)
        np.testing.assert_array_equal(item["label"].numpy(), want_label)
        assert dataset.foreground[start + n] == bool(label[:, :, n].any())
    # The stored arrays are never handed out: modifying an item leaves the dataset unchanged.
    item = dataset[start]
    item["image"].fill_(123.0)
    assert not torch.equal(dataset[start]["image"], item["image"])


def test_patch_smaller_than_slices_is_rejected(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=1))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
    with pytest.raises(ValueError, match="larger than patch_hw"):
        SliceDataset(data.train, patch_hw=(16, 16))
    assert SliceDataset(data.train, patch_hw=(96, 80)).patch_hw == (96, 80)


def test_cache_dir_memory_maps_the_same_data(sample_hippo: Path, tmp_path: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=3))
    pre = PreprocessingConfig(context_slices=1)
    in_memory = prepare_training_data(spec.cases[:2], spec.cases[2:], 3, pre, reader=load_volume)
    cached = prepare_training_data(
        spec.cases[:2], spec.cases[2:], 3, pre, reader=load_volume, cache_dir=tmp_path / "cache"
    )
    for a, b in zip(in_memory.train + in_memory.val, cached.train + cached.val, strict=True):
        assert isinstance(b.image, np.memmap) and isinstance(b.label, np.memmap)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    ds_mem = SliceDataset(in_memory.train)
    ds_map = SliceDataset(cached.train)  # reads the memory maps themselves: no copy of its own
    assert len(ds_mem) == len(ds_map)
    for i in (0, len(ds_mem) // 2, len(ds_mem) - 1):
        assert torch.equal(ds_mem[i]["image"], ds_map[i]["image"])
        assert torch.equal(ds_mem[i]["label"], ds_map[i]["label"])
    assert list((tmp_path / "cache").iterdir()) == []  # each file unlinked once mapped: nothing left behind


def test_cache_files_are_private_so_same_names_never_collide(tmp_path: Path) -> None:
    """Two processes (torchrun ranks) or two case ids that read alike ("a b", "a_b") never share a file."""
    from medseg.data.prepare import _Stash

    first, second = _Stash(tmp_path), _Stash(tmp_path)
    a = first.keep(np.arange(6, dtype=np.float32), "case a.image")
    b = second.keep(np.arange(6, 12, dtype=np.float32), "case_a.image")
    c = first.keep(np.zeros(3, dtype=np.int8), "case a.image")
    np.testing.assert_array_equal(a, np.arange(6))
    np.testing.assert_array_equal(b, np.arange(6, 12))
    np.testing.assert_array_equal(c, np.zeros(3))
    assert isinstance(a, np.memmap) and not a.flags.writeable  # inputs stay read-only
    assert list(tmp_path.iterdir()) == []


def test_a_full_cache_disk_stops_the_run_with_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from medseg.data import prepare
    from medseg.errors import RunFailedError

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare.np, "save", full)
    with pytest.raises(RunFailedError, match=r"Cannot write the prepared case 'c1.image' to data.cache_dir .*No space"):
        prepare._Stash(tmp_path).keep(np.zeros(4), "c1.image")
    assert list(tmp_path.iterdir()) == []  # the partial file is removed


def test_prepare_cases_with_given_params(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=2))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
    again = prepare_cases(spec.cases, data.params, data.axis, n_classes=3, reader=load_volume)
    for a, b in zip(data.train, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    unlabelled = [type(c)(c.id, c.image, None) for c in spec.cases]
    plain = prepare_cases(unlabelled, data.params, data.axis, reader=load_volume)
    assert all(p.label is None and p.label_volume is None for p in plain)
    with pytest.raises(ValueError, match="labelled"):
        SliceDataset(plain)


def test_foreground_sampler_gives_every_batch_its_share() -> None:
    foreground = np.zeros(1000, dtype=bool)
    foreground[::20] = True  # 5 % of slices hold labels
    sampler = ForegroundSampler(foreground, fraction=0.33, num_samples=960, seed=3)
    epoch0 = list(sampler)
    assert len(epoch0) == 960
    batches = np.array(epoch0).reshape(-1, 32)
    fg_per_batch = foreground[batches].sum(axis=1)
    assert fg_per_batch.min() >= 10  # 0.33 * 32 = 10.6 forced, plus the random 5 % share
    assert abs(foreground[epoch0].mean() - (0.33 + 0.67 * 0.05)) < 0.03
    epoch1 = list(sampler)
    assert epoch0 != epoch1  # a new order every epoch ...
    again = ForegroundSampler(foreground, fraction=0.33, num_samples=960, seed=3)
    assert list(again) == epoch0  # ... reproducible from the seed
    again.set_epoch(1)
    assert list(again) == epoch1
    # Without oversampling: a plain shuffle covering every slice once.
    plain = list(ForegroundSampler(foreground, 0.0, seed=0))
    assert sorted(plain) == list(range(1000))


def test_foreground_sampler_splits_ranks() -> None:
    foreground = np.arange(101) % 3 == 0
    ranks = [list(ForegroundSampler(foreground, 0.5, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 51
    full = ForegroundSampler(foreground, 0.5, seed=1).indices(0)
    assert ranks[0][:50] == full[0::2][:50].tolist() and ranks[1][:50] == full[1::2].tolist()


def test_workers_draw_different_augmentations(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=1))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
    only_noise = {
        "elastic": {"prob": 0.0},
        "affine": {"prob": 0.0},
        "noise": {"prob": 1.0},
        "scale_intensity": {"prob": 0.0},
        "low_resolution": {"prob": 0.0},
        "gamma": {"prob": 0.0},
    }
    dataset = SliceDataset(
        data.train, transforms=train_transforms(AugmentationConfig.model_validate(only_noise), seed=0)
    )
    torch.manual_seed(0)
    loader = DataLoader(
        dataset,
        batch_size=1,
        sampler=[0, 0],
        num_workers=2,
        worker_init_fn=worker_init_fn,
        multiprocessing_context="fork",
    )
    first, second = (b["image"] for b in loader)
    # Same slice, one sample per worker: without reseeding both workers would add the same noise.
    assert not torch.equal(first, second)
