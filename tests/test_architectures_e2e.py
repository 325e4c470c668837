"""Each architecture runs the quickstart end to end from the command line (``--set model.architecture=...``).

Cheap on purpose: 5 of the 14 sample cases (4 train, 1 validation), one epoch, no time budget (so nothing depends
on the machine's speed), no overlays: about 15 s per architecture on one core. The Dice after one epoch means
nothing; what is checked is that every stage runs, the checkpoint records the architecture and depth, and the
mask lies on the scan's grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.inference import Predictor
from medseg.models import ARCHITECTURES
from medseg.models.checkpoint import load_checkpoint
from tests.test_pipeline import QUICKSTART, assert_same_grid_nifti, read_csv, run_cli

CHEAP = [
    "training.epochs=1",
    "training.max_minutes=null",
    "evaluation.overlays=0",
    "data.max_cases=5",
]


@pytest.mark.parametrize(
    ("arch", "depth"), [("unet", 4), ("attention_unet", 5), ("residual_unet", 3), ("unet_plus_plus", 3)]
)
def test_quickstart_end_to_end(arch: str, depth: int, tmp_path: Path) -> None:
    sets = [f"model.architecture={arch}", f"model.depth={depth}", *CHEAP]
    proc = run_cli(QUICKSTART, "--output", tmp_path, *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr[-3000:]

    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["model"]["architecture"] == arch and best["model"]["options"]["depth"] == depth
    # The pad multiple follows the depth (and stays at least preprocessing.pad_multiple = 16).
    assert best["pad_multiple"] == max(16, 2**depth)
    assert all(s % best["pad_multiple"] == 0 for s in best["patch_hw"])
    predictor = Predictor.from_checkpoint(tmp_path / "checkpoints" / "best.pt", device="cpu")
    assert type(predictor.model) is ARCHITECTURES[arch]

    rows = read_csv(tmp_path / "predictions" / "predictions.csv")
    assert rows and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert_same_grid_nifti(Path(row["output"]), Path(row["input"]))
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert summary["n_evaluated"] == len(rows)
