"""Multi-process runs under torchrun (gloo, 2 CPU processes) over real hippocampus cases from sample_data/.

Each test launches ``python -m torch.distributed.run --nproc_per_node=2 -m pipelines.run CONFIG`` as a subprocess,
exactly as a user would, with a tiny UNet (base_features 8), 4 cases and 1-2 epochs, one thread per process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "hippocampus"
CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_007")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("WORLD_SIZE", None)
    return env


def _dataset(tmp: Path) -> Path:
    """An MSD folder with 4 of the sample hippocampus cases (3 train, 1 validation at val_fraction 0.25)."""
    root = tmp / "hippo4"
    meta = json.loads((SAMPLE / "dataset.json").read_text())
    available = sorted(p.name.removesuffix(".nii.gz") for p in (SAMPLE / "imagesTr").glob("*.nii.gz"))
    ids = [c for c in CASES if c in available]
    assert len(ids) == len(CASES), available
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for cid in ids:
            shutil.copy(SAMPLE / sub / f"{cid}.nii.gz", root / sub / f"{cid}.nii.gz")
    meta["training"] = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]
    meta["numTraining"] = len(ids)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _config(tmp: Path, name: str, data: Path, *, batch_size: int, epochs: int = 2, **training: object) -> Path:
    cfg = {
        "data": {"root": str(data), "val_fraction": 0.25, "seed": 0},
        "model": {"base_features": 8},
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": 0.005,
            "device": "cpu",
            "precision": "fp32",
            "num_workers": 0,
            "seed": 0,
            "distributed_backend": "auto",
            **training,
        },
        "inference": {"device": "cpu", "precision": "fp32"},
        "output": {"dir": str(tmp / name)},
        "stages": ["train"],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _run(cmd: list[str], timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _best_dice(out: Path) -> float:
    return float(torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)["best_dice"])


def test_rank_errors_name_the_rank(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.run import _error

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _error("cannot read '/data/x.nii.gz'")
    assert capsys.readouterr().err == "medseg: error: rank 1: cannot read '/data/x.nii.gz'\n"
    monkeypatch.setenv("WORLD_SIZE", "1")
    _error("boom")
    assert capsys.readouterr().err == "medseg: error: boom\n"


@pytest.mark.slow
def test_ddp_training_writes_one_checkpoint_set_and_matches_single_process(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    ddp_cfg = _config(tmp_path, "ddp", data, batch_size=2, epochs=5)
    one_cfg = _config(tmp_path, "single", data, batch_size=4, epochs=5)  # same effective batch: 2 per rank x 2

    ddp = _run(_torchrun("-m", "pipelines.run", str(ddp_cfg)))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = _run([sys.executable, "-m", "pipelines.run", str(one_cfg)])
    assert single.returncode == 0, single.stderr[-3000:]

    ckpts = tmp_path / "ddp" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # one set, no per-rank copies
    last = torch.load(ckpts / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 5 and not any(k.startswith("module.") for k in last["model_state"])  # unwrapped DDP
    # Rank 0 alone wrote the epoch log: one row per epoch, not one per rank.
    rows = (tmp_path / "ddp" / "train" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5
    assert "[rank 1]" not in ddp.stderr or "ERROR" not in ddp.stderr

    # Same data, same effective batch (2 x 2 ranks vs 4), same epochs and schedule: the runs differ in which
    # slices share a batch, batch-norm statistics over 2 instead of 4 slices and float summation order, so their
    # Dice is close but not equal. The tolerance, 0.2 absolute on the best validation Dice, is generous on
    # purpose: this tiny UNet's Dice on its one validation case still jumps by 0.1-0.15 from epoch to epoch
    # after 5 short epochs (measured single-process: 0.20, 0.70, 0.61, 0.75, 0.75). Broken setups are far
    # outside it: unsynchronised gradients or a wrong checkpoint give a Dice near 0.
    d_ddp, d_one = _best_dice(tmp_path / "ddp"), _best_dice(tmp_path / "single")
    assert d_one > 0.4 and d_ddp > 0.4, (d_ddp, d_one)
    assert abs(d_ddp - d_one) <= 0.2, (d_ddp, d_one)

    # Resume in distributed mode: extend the finished run by one epoch, both ranks memory-mapping their prepared
    # cases from one shared cache folder (each file private to its process, so the ranks never collide).
    cfg = yaml.safe_load(ddp_cfg.read_text())
    cfg["training"].update(resume=True, epochs=6)
    cfg["data"]["cache_dir"] = str(tmp_path / "shared_cache")
    ddp_cfg.write_text(yaml.safe_dump(cfg))
    resumed = _run(_torchrun("-m", "pipelines.run", str(ddp_cfg)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "shared_cache").is_dir() and not list((tmp_path / "shared_cache").iterdir())
    last = torch.load(ckpts / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 6 and [r["epoch"] for r in last["history"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_sharded_predict_matches_single_process(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    train_cfg = _config(tmp_path, "model", data, batch_size=8, epochs=1)
    trained = _run([sys.executable, "-m", "pipelines.run", str(train_cfg)])
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = tmp_path / "model" / "checkpoints" / "best.pt"
    scans = data / "imagesTr"  # 4 scans: 2 per rank
    common = ["--stage", "predict", "--checkpoint", str(ckpt), "--input", str(scans)]

    two = _run(_torchrun("-m", "pipelines.run", str(train_cfg), *common, "--output", str(tmp_path / "p2")))
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run([sys.executable, "-m", "pipelines.run", str(train_cfg), *common, "--output", str(tmp_path / "p1")])
    assert one.returncode == 0, one.stderr[-3000:]

    ids = sorted(p.name.removesuffix(".nii.gz") for p in scans.glob("*.nii.gz"))
    out2, out1 = tmp_path / "p2" / "predictions", tmp_path / "p1" / "predictions"
    assert sorted(p.name for p in out2.iterdir()) == sorted([f"{c}.nii.gz" for c in ids] + ["predictions.csv"])
    for cid in ids:
        a = np.asarray(nib.load(out2 / f"{cid}.nii.gz").dataobj)  # type: ignore[attr-defined]
        b = np.asarray(nib.load(out1 / f"{cid}.nii.gz").dataobj)  # type: ignore[attr-defined]
        assert np.array_equal(a, b), cid
    lines = (out2 / "predictions.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + len(ids)
    assert sorted(line.split(",")[0] for line in lines[1:]) == ids  # every scan once, none twice
    assert all(",ok," in line for line in lines[1:])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        out += [int(c) for c in children]
    return out


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The worker process with ``RANK=rank`` among torchrun's children (read from /proc)."""
    for child in _children(torchrun_pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return child
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank's process through /proc")
def test_killed_rank_fails_the_job_naming_the_rank(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    # More epochs than any machine finishes in the moment between the first checkpoint and the kill.
    cfg = _config(tmp_path, "killed", data, batch_size=4, epochs=100_000)
    proc = subprocess.Popen(
        _torchrun("-m", "pipelines.run", str(cfg)),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts = tmp_path / "killed" / "checkpoints"
    try:
        guard = time.monotonic() + HANG_GUARD_S  # a hang guard, not a deadline: we wait for the checkpoint
        # Kill rank 1 once training is under way (the first checkpoint exists), like an OOM kill or a lost node.
        while not (ckpts / "last.pt").exists() and time.monotonic() < guard and proc.poll() is None:
            time.sleep(0.2)
        assert (ckpts / "last.pt").exists(), f"training did not start (exit status {proc.poll()})"
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    # torchrun's summary names rank 1 and its SIGKILL. Whether it is listed as the "Root Cause" or among the other
    # "Failures" depends on a race (rank 0's collective can fail on the lost peer before the agent reaps rank 1),
    # so the test asks only that the killed rank is reported with its signal.
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9\b", stderr), stderr[-3000:]
    # No half-written checkpoint: the files the run left load completely (saves are atomic: temp file + rename;
    # a temp file a SIGKILL may leave behind is hidden and removed by the next run in that folder).
    for name in ("best.pt", "last.pt"):
        if (ckpts / name).exists():
            assert torch.load(ckpts / name, map_location="cpu", weights_only=False)["epoch"] >= 1
    assert {p.name for p in ckpts.iterdir() if not p.name.startswith(".")} <= {"best.pt", "last.pt"}
