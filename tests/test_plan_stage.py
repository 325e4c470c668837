"""The ``plan`` stage: every case read and checked, ``plan.json`` written as training writes it, nothing trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import config_from_dict
from medseg.errors import BadCaseError
from medseg.runner import order_stages, run_stages


def _cfg(root: Path, out: Path, **data: object):
    return config_from_dict(
        {
            "data": {"root": str(root), "val_fraction": 0.34, "seed": 0, **data},
            "model": {"base_features": 4},
            "training": {"epochs": 1, "batch_size": 8, "num_workers": 0, "device": "cpu", "precision": "fp32"},
            "output": {"dir": str(out)},
        },
        base_dir=Path.cwd(),
    )


def test_plan_stage_writes_the_plan_training_writes_and_trains_nothing(sample_hippo: Path, tmp_path: Path) -> None:
    planned = run_stages(_cfg(sample_hippo, tmp_path / "plan"), ["plan"]).plan
    written = sorted(p.name for p in (tmp_path / "plan").iterdir())
    assert written == ["plan.json", "report.html", "run.json"]  # no checkpoints, no train/
    assert planned.classes == ["background", "Anterior", "Posterior"] and not planned.skipped
    trained = run_stages(_cfg(sample_hippo, tmp_path / "train"), ["train"]).train
    assert [c.id for c in planned.val_cases] == [c.id for c in trained.val_cases]  # the same split
    plan, train_plan = (json.loads((tmp_path / d / "plan.json").read_text()) for d in ("plan", "train"))
    assert plan == train_plan  # the same reading, normalisation and decisions
    # What the network predicts is part of the plan: classes as stored, the loss mode and the class weights,
    # the weights equal to inverse voxel frequency over the training labels (mean 1, clipped), recomputed here.
    labels = plan["labels"]
    assert labels["classes"] == ["background", "Anterior", "Posterior"] and labels["stored_values"] == [0, 1, 2]
    assert labels["regions"] is None and labels["ignore_label"] is None and labels["loss_mode"] == "sigmoid"
    counts = np.zeros(3)
    for case in planned.train_cases:
        counts += np.bincount(np.asarray(nib.load(case.label).dataobj).astype(int).ravel(), minlength=3)
    inverse = counts.sum() / counts
    expected = np.clip(inverse / inverse.mean(), 0.2, 5.0)
    assert list(labels["class_weights"].values()) == pytest.approx(expected.tolist(), abs=1e-4)
    assert plan["reasons"]["loss_mode"] == "2 classes (up to 4): a sigmoid output each (loss.mode: auto)"
    assert plan["reasons"]["class_weights"].startswith("inverse voxel frequency (the training labels' voxels")
    assert plan["axes"].startswith("slice_axis, spacings, shapes and target_spacing are in closest-RAS voxel order")
    assert order_stages(["train", "plan", "predict"]) == ["train", "predict"]  # training plans first anyway


def test_plan_stage_names_a_bad_case_or_lists_it(sample_hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(sample_hippo, root)
    broken = sorted((root / "imagesTr").iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    with pytest.raises(BadCaseError, match=broken.name):
        run_stages(_cfg(root, tmp_path / "out"), ["plan"])
    result = run_stages(_cfg(root, tmp_path / "out", skip_bad_cases=True), ["plan"]).plan
    assert [s.id for s in result.skipped] == [broken.name.removesuffix(".nii.gz")]
    assert broken.name in result.skipped[0].reason
    listed = json.loads((tmp_path / "out" / "plan.json").read_text())["skipped_cases"]  # shown in report.html
    assert listed == [{"id": result.skipped[0].id, "reason": result.skipped[0].reason}]
    assert len(result.train_cases) + len(result.val_cases) == len(list(sample_hippo.glob("imagesTr/*"))) - 1
