"""Splits by case (never by slice) and class weights from the training labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.class_weights import compute_class_weights, resolve_class_weights
from medseg.data.dataset import SliceDataset
from medseg.data.prepare import prepare_training_data
from medseg.data.splits import split_cases
from medseg.errors import ConfigError
from medseg.io import load_volume


def test_hippocampus_split_disjoint_reproducible(hippo_dir: Path) -> None:
    cases = discover_cases(DataConfig(root=hippo_dir)).cases
    train, val = split_cases(cases, 0.2, seed=0)
    assert len(val) == 18 and len(train) == 73
    assert not {c.id for c in train} & {c.id for c in val}
    assert {c.id for c in train} | {c.id for c in val} == {c.id for c in cases}
    assert split_cases(cases, 0.2, seed=0) == (train, val)
    assert split_cases(list(reversed(cases)), 0.2, seed=0) == (train, val)  # order of discovery is irrelevant
    assert split_cases(cases, 0.2, seed=1)[1] != val


def test_kfold_partitions_cases(hippo_dir: Path) -> None:
    cases = discover_cases(DataConfig(root=hippo_dir)).cases
    vals = []
    for fold in range(5):
        train, val = split_cases(cases, 0.2, seed=7, folds=5, fold=fold)
        assert not {c.id for c in train} & {c.id for c in val}
        assert len(train) + len(val) == 91 and len(val) in (18, 19)
        assert split_cases(cases, 0.2, seed=7, folds=5, fold=fold) == (train, val)
        vals.append({c.id for c in val})
    assert set().union(*vals) == {c.id for c in cases}
    assert sum(len(v) for v in vals) == 91  # every case validates in exactly one fold


def test_slices_of_a_case_stay_on_one_side(sample_hippo: Path) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    train, val = split_cases(cases, 0.3, seed=0)
    data = prepare_training_data(train, val, 3, PreprocessingConfig(), reader=load_volume)
    dataset = SliceDataset(data.train)
    slice_cases = {dataset.case_ids[i] for i in np.unique(dataset.case_index)}
    assert slice_cases == {c.id for c in train}
    assert not slice_cases & {p.id for p in data.val}


def test_split_edge_cases() -> None:
    ids = ["a", "b", "c"]
    assert split_cases(ids, 0.0, seed=0) == (ids, [])
    train, val = split_cases(ids, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 2  # at least one validation case when asked for any
    with pytest.raises(ConfigError, match="folds=5 needs at least 5 cases"):
        split_cases(ids, 0.2, seed=0, folds=5)
    with pytest.raises(ConfigError, match="fold"):
        split_cases(ids, 0.2, seed=0, folds=3, fold=3)


def _patients_and_frames(n_patients: int) -> list[str]:
    return [f"patient{p:03d}_frame{f:02d}" for p in range(1, n_patients + 1) for f in (1, 12)]


def test_without_a_group_pattern_the_splits_are_those_of_before(sample_hippo: Path) -> None:
    """Groups must not move any existing split (every figure in benchmarks/ was measured on them): the splits
    of the 91 hippocampus ids, recomputed here as split_cases computed them before groups existed."""
    sample = sorted(p.name.removesuffix(".nii.gz") for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))
    for ids, seed in ((sample, 0), ([f"hippocampus_{i:03d}" for i in range(91)], 3)):
        order = np.random.default_rng(seed).permutation(len(ids))
        for k in range(5):
            held = set(np.array_split(order, 5)[k].tolist())
            expected = [c for i, c in enumerate(ids) if i in held]
            assert split_cases(ids, 0.0, seed, folds=5, fold=k)[1] == expected
        n_val = min(max(round(0.2 * len(ids)), 1), len(ids) - 1)
        assert split_cases(ids, 0.2, seed)[1] == [c for i, c in enumerate(ids) if i in set(order[:n_val].tolist())]


def test_cases_of_one_patient_stay_together(sample_hippo: Path) -> None:
    ids = _patients_and_frames(10)  # ACDC: two annotated frames per patient
    pattern = r"(?P<group>patient\d+)"
    patient = lambda cid: cid.split("_")[0]  # noqa: E731
    leaked = 0
    for seed in range(5):
        ungrouped = split_cases(ids, 0.2, seed)
        leaked += bool({patient(c) for c in ungrouped[0]} & {patient(c) for c in ungrouped[1]})
        train, val = split_cases(ids, 0.2, seed, group_pattern=pattern)
        assert not {patient(c) for c in train} & {patient(c) for c in val}
        assert len(val) == 4 and sorted(train + val) == sorted(ids)  # 2 of 10 patients, both frames each
        seen: set[str] = set()
        for k in range(5):
            fold_train, fold_val = split_cases(ids, 0.0, seed, folds=5, fold=k, group_pattern=pattern)
            assert not {patient(c) for c in fold_train} & {patient(c) for c in fold_val}
            assert not seen & set(fold_val)
            seen |= set(fold_val)
        assert seen == set(ids)  # the folds partition the cases
    assert leaked  # without the pattern, frames of one patient do land on both sides
    with pytest.raises(ConfigError, match="needs a named group"):
        split_cases(ids, 0.2, 0, group_pattern=r"patient\d+")
    with pytest.raises(ConfigError, match=r"'scan_7' does not match data\.group_pattern"):
        split_cases([*ids, "scan_7"], 0.2, 0, group_pattern=pattern)
    with pytest.raises(ConfigError, match="at least 11 groups"):
        split_cases(ids, 0.0, 0, folds=11, group_pattern=pattern)


def test_class_weights_inverse_frequency() -> None:
    labels = [np.array([0] * 80 + [1] * 15 + [2] * 5)]
    weights = compute_class_weights(labels, 3, clip=(0.01, 100.0))
    inverse = np.array([100 / 80, 100 / 15, 100 / 5])
    np.testing.assert_allclose(weights, inverse / inverse.mean(), rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0)
    clipped = compute_class_weights(labels, 3, clip=(0.2, 2.0))
    np.testing.assert_allclose(clipped, np.clip(inverse / inverse.mean(), 0.2, 2.0), rtol=1e-6)
    absent = compute_class_weights([np.array([0, 0, 1])], 3, clip=(0.2, 5.0))
    assert absent[2] == 5.0  # a class never seen is as rare as allowed
    with pytest.raises(ValueError, match="outside"):
        compute_class_weights([np.array([0, 3])], 3)
    # With unannotated voxels declared, index 3 of 3 classes marks them (medseg.data.unannotated): not counted.
    marked = [np.array([0, 3, 3, 1, 2])]
    np.testing.assert_allclose(compute_class_weights(marked, 3, unannotated=True), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="outside"):
        compute_class_weights([np.array([0, 4])], 3, unannotated=True)


def test_class_weights_on_hippocampus(sample_hippo: Path) -> None:
    cases = discover_cases(DataConfig(root=sample_hippo)).cases
    data = prepare_training_data(cases, [], 3, PreprocessingConfig(), reader=load_volume)
    weights = resolve_class_weights("auto", (p.label for p in data.train), 3, (0.2, 5.0))
    assert weights is not None and weights.dtype == np.float32
    # Background is ~97 % of voxels: it gets the lowest weight, the two small structures similar higher ones.
    assert weights[0] == pytest.approx(0.2) and 1.0 < weights[1] < 2.0 and 1.0 < weights[2] < 2.0
    assert resolve_class_weights("none", [], 3) is None
    np.testing.assert_array_equal(resolve_class_weights([1.0, 2.0, 3.0], [], 3), [1, 2, 3])
    with pytest.raises(ConfigError, match="3 positive weights"):
        resolve_class_weights([1.0, 2.0], [], 3)
