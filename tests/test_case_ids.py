"""Case ids through the whole pipeline: files named like follow-up visits (``visit_2019.nii.gz``) are separate
cases from discovery to training, prediction and evaluation (four-digit endings are not channel suffixes)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.run import main

VISITS = [f"visit_{year}" for year in range(2019, 2023)]


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_visit_ids_through_discover_train_predict_evaluate(tmp_path: Path, sample_hippo: Path) -> None:
    # Copies of 4 sample cases, named visit_2019 .. visit_2022 (glob layout: images/ + labels/, same names).
    root = tmp_path / "visits"
    sources = sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[: len(VISITS)]
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for src, visit in zip(sources, VISITS, strict=True):
        shutil.copy(src, root / "images" / f"{visit}.nii.gz")
        shutil.copy(sample_hippo / "labelsTr" / src.name, root / "labels" / f"{visit}.nii.gz")
    classes = list(json.loads((sample_hippo / "dataset.json").read_text())["labels"].values())
    out = tmp_path / "run"
    cfg = {
        "data": {"root": str(root), "layout": "glob", "classes": classes, "val_fraction": 0.25, "seed": 0},
        "model": {"base_features": 8},
        # Epoch-bounded (no time budget), one tiny epoch: the ids are under test, not the model.
        "training": {"epochs": 1, "batch_size": 16, "device": "cpu", "precision": "fp32", "num_workers": 0},
        "inference": {"device": "cpu", "precision": "fp32"},
        "evaluation": {"overlays": 0},
        "output": {"dir": str(out)},
        "stages": ["train", "predict", "evaluate"],
    }
    config = tmp_path / "visits.yaml"
    config.write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(config)]) == 0
    finally:
        torch.set_num_threads(threads)

    ckpt = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    split = ckpt["split"]
    assert sorted(split["train"] + split["val"]) == VISITS, split
    assert len(split["val"]) == 1
    predicted = _read(out / "predictions" / "predictions.csv")
    assert [r["case"] for r in predicted] == split["val"]
    assert [r["status"] for r in predicted] == ["ok"]
    assert Path(predicted[0]["output"]).name == f"{split['val'][0]}.nii.gz"
    scored = _read(out / "evaluation" / "metrics.csv")
    assert {r["case"] for r in scored} == set(split["val"])
    assert all(r["error"] == "" for r in scored), scored
