"""Faults during a run, on real sample scans: a full or read-only output disk stops batch prediction with one
message and exit status 3 (finished masks kept, the table written or the reason it was not), a full disk while
saving checkpoints says the earlier ones are intact, stale temp masks are removed, the table follows every case,
and a run is refused before it starts for all-empty labels, a bad device name, an empty or mismatched checkpoint.

Storage faults are injected two ways: writes monkeypatched to raise ``OSError(ENOSPC/EROFS)`` (always), and a
real tiny tmpfs mounted in a private mount namespace (``unshare -rm``) where the machine allows it.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medseg.errors import CheckpointError, EmptyLabelsError, OutputStorageError
from medseg.inference.batch import predict_folder
from medseg.inference.predictor import Predictor
from medseg.io import load_volume
from pipelines.run import EXIT_RUN_FAILED, EXIT_USAGE, main
from tests.conftest import HANG_GUARD_S, REPO
from tests.test_inference import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = REPO / "sample_data" / "hippocampus"
CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_007", "hippocampus_011")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in CASES:
        shutil.copy(SAMPLE / "imagesTr" / f"{case}.nii.gz", folder / f"{case}.nii.gz")
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _fail_nifti_writes_after(monkeypatch: pytest.MonkeyPatch, n_ok: int, code: int) -> None:
    """Mask writes succeed ``n_ok`` times, then raise ``OSError(code)`` as nibabel does on a full disk."""
    from medseg.io import writing

    original = writing.write_nifti
    calls = {"n": 0}

    def write_nifti(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(code, os.strerror(code))
        return original(*args, **kwargs)

    monkeypatch.setattr(writing, "write_nifti", write_nifti)


def _run_predict_cli(
    tmp_path: Path, scans: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, Path]:
    out = tmp_path / "run"
    args = ["--stage", "predict", "--input", str(scans), "--checkpoint", str(checkpoint), "--output", str(out)]
    code = main([str(_predict_config(tmp_path)), *args])
    return code, capsys.readouterr().err, out


def _predict_config(tmp_path: Path) -> Path:
    config = tmp_path / "predict.yaml"
    config.write_text(yaml.safe_dump({"inference": {"device": "cpu", "precision": "fp32"}, "stages": ["predict"]}))
    return config


# ------------------------------------------------------------------------------------ storage faults, injected


def test_disk_full_stops_the_batch_with_one_message(
    predictor: Predictor, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_nifti_writes_after(monkeypatch, 2, errno.ENOSPC)
    out = tmp_path / "out"
    with pytest.raises(OutputStorageError) as info:
        predict_folder(predictor, scans, out, progress=False)
    err = info.value
    message = str(err)
    assert err.folder == out and err.reason == "the disk is full"
    assert message.startswith(f"Cannot write to '{out}': the disk is full")
    assert "2 finished mask(s) are complete and kept" in message and "2 scan(s) not attempted" in message
    assert f"'{out / 'predictions.csv'}' lists the 3 scan(s) attempted" in message
    # The table: the two finished masks and the case that hit the full disk; nothing after it was attempted.
    rows = _rows(out / "predictions.csv")
    assert [r["case"] for r in rows] == list(CASES[:3])
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "the disk is full" in rows[2]["error"]
    for row in rows[:2]:
        assert load_volume(row["output"]).same_grid(load_volume(row["input"]))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c}.nii.gz" for c in CASES[:2]] + ["predictions.csv"])


def test_read_only_output_stops_and_says_the_table_could_not_be_written(
    predictor: Predictor, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from medseg.io import atomic

    out = tmp_path / "out"
    out.mkdir()

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(OutputStorageError) as info:
        predict_folder(predictor, scans, out, progress=False)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", tempfile.mkstemp)
    message = str(info.value)
    assert message.startswith(f"Cannot write to '{out}': the file system is read-only")
    assert "no mask was finished" in message and "4 scan(s) not attempted" in message
    assert f"the table '{out / 'predictions.csv'}' could not be written (the file system is read-only)" in message
    assert list(out.iterdir()) == []


def test_storage_fault_exit_status_3_one_message_no_log_errors(
    checkpoint: Path, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_nifti_writes_after(monkeypatch, 1, errno.ENOSPC)
    code, err, out = _run_predict_cli(tmp_path, scans, checkpoint, capsys)
    assert code == EXIT_RUN_FAILED == 3
    errors = [line for line in err.splitlines() if line.startswith("medseg: error:")]
    assert len(errors) == 1, err
    assert f"Cannot write to '{out / 'predictions'}': the disk is full" in errors[0]
    assert "Traceback" not in err and "Logging error" not in err
    # No per-case warning for the case that hit the full disk: the one error says it all.
    assert "failed:" not in err
    rows = _rows(out / "predictions" / "predictions.csv")
    assert [r["status"] for r in rows] == ["ok", "failed"]


def test_a_failing_log_file_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medseg.runner import run_logging

    log_file = tmp_path / "medseg.log"
    with run_logging(log_file):
        handler = next(h for h in logging.getLogger("medseg").handlers if hasattr(h, "baseFilename"))

        class FullDisk:
            def write(self, text: str) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def flush(self) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def close(self) -> None:
                pass

        handler.stream.close()  # type: ignore[attr-defined]
        handler.stream = FullDisk()  # type: ignore[attr-defined]
        for i in range(27):
            logging.getLogger("medseg.test").warning("line %d", i)
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count(f"the log file '{log_file}' cannot be written") == 1
    assert err.count("line ") == 27, "the console still gets every message"


def test_disk_full_while_saving_a_checkpoint(
    tmp_path: Path, sample_hippo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save on a full disk raises only ``[enforce fail at inline_container.cc]``: the folder is examined
    (here: statvfs reports no free space) and the message says the disk is full and what is intact."""
    from medseg.io import storage
    from medseg.models import checkpoint as ckpt_module
    from medseg.training import load_checkpoint, train
    from tests.test_training import make_cfg

    original_save = torch.save
    saves = {"n": 0}

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        saves["n"] += 1
        if saves["n"] > 2:  # epoch 1 wrote best.pt and last.pt; the disk is full from then on
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        original_save(obj, f, *args, **kwargs)

    real_statvfs = os.statvfs

    class Full:
        def __init__(self, path: Any) -> None:
            st = real_statvfs(path)
            self.f_flag, self.f_frsize, self.f_bavail = st.f_flag, st.f_frsize, 0

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    cfg = make_cfg(sample_hippo, tmp_path, data={"max_cases": 3, "val_fraction": 0.34}, training={"epochs": 3})
    with pytest.raises(RuntimeError):  # plenty of space: not a storage fault, the error is not disguised
        train(cfg)
    saves["n"] = 0
    monkeypatch.setattr(storage.os, "statvfs", Full)
    with pytest.raises(OutputStorageError) as info:
        train(cfg)
    ckpts = tmp_path / "checkpoints"
    message = str(info.value)
    assert message.startswith(f"Cannot write to '{ckpts}': the disk is full (0 bytes free)")
    assert "the checkpoints already there (best.pt, last.pt) are intact" in message
    assert "training.resume: true" in message
    monkeypatch.setattr(ckpt_module.torch, "save", original_save)
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"], "temp file left"


# ------------------------------------------------------------------------------ storage faults, a real tmpfs


def _namespace_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        proc = subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs '{probe}'"],
            capture_output=True,
            timeout=HANG_GUARD_S,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_real_full_or_read_only_disk(checkpoint: Path, scans: Path, tmp_path: Path, fault: str) -> None:
    """``predictions/`` on a 16 KiB tmpfs (a few masks fit) or a read-only one, in a subprocess: exit status 3,
    one message, every mask the table lists as ok is complete."""
    if shutil.which("unshare") is None or not _namespace_works(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -rm); the injected tests cover it")
    for i in range(10):  # more scans than fit
        shutil.copy(SAMPLE / "imagesTr" / f"{CASES[i % len(CASES)]}.nii.gz", scans / f"extra_{i}.nii.gz")
    out = tmp_path / "run"
    predictions, kept = out / "predictions", tmp_path / "kept"
    predictions.mkdir(parents=True)
    options = "size=16k" if fault == "full" else "size=16k,ro"
    run = (
        f"{sys.executable} -m pipelines.run {_predict_config(tmp_path)} --stage predict --input {scans} "
        f"--checkpoint {checkpoint} --output {out}"
    )
    # The mount vanishes with the namespace: copy what was written out of it before leaving.
    script = (
        f"mount -t tmpfs -o {options} tmpfs {predictions} && {{ {run}; rc=$?; cp -a {predictions} {kept}; exit $rc; }}"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
    )
    assert proc.returncode == EXIT_RUN_FAILED, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medseg: error:")]
    reason = "the disk is full" if fault == "full" else "the file system is read-only"
    assert len(errors) == 1 and f"Cannot write to '{predictions}': {reason}" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    table = kept / "predictions.csv"
    if table.exists():
        for row in _rows(table):
            if row["status"] == "ok":
                mask = kept / Path(row["output"]).name
                assert np.asarray(nib.load(mask).dataobj).shape == load_volume(row["input"]).shape
    else:
        assert "could not be written" in errors[0]
    assert not [p for p in kept.iterdir() if p.name.startswith(".")], "temp files left on the full disk"
    if fault == "read-only":
        assert list(kept.iterdir()) == []


@pytest.mark.slow
def test_real_full_disk_while_training(tmp_path: Path) -> None:
    """``checkpoints/`` on a 14 MiB tmpfs: epoch 1's best.pt and last.pt (~6 MB each at base_features 8) fit,
    epoch 2's save does not. Exit status 3, one message saying the disk is full and the checkpoints are intact."""
    if shutil.which("unshare") is None or not _namespace_works(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -rm); the injected test covers it")
    out = tmp_path / "run"
    ckpts, kept = out / "checkpoints", tmp_path / "kept"
    ckpts.mkdir(parents=True)
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"root": str(SAMPLE), "max_cases": 3, "val_fraction": 0.34},
                "model": {"base_features": 8},
                "training": {"epochs": 3, "batch_size": 16, "device": "cpu", "precision": "fp32", "num_workers": 0},
                "output": {"dir": str(out)},
                "stages": ["train"],
            }
        )
    )
    run = f"{sys.executable} -m pipelines.run {config}"
    script = f"mount -t tmpfs -o size=14m tmpfs {ckpts} && {{ {run}; rc=$?; cp -a {ckpts} {kept}; exit $rc; }}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
    )
    assert proc.returncode == EXIT_RUN_FAILED, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medseg: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"Cannot write to '{ckpts}': the disk is full" in errors[0]
    assert "the checkpoints already there (best.pt, last.pt) are intact" in errors[0]
    assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr
    from medseg.training import load_checkpoint

    assert sorted(p.name for p in kept.iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(kept / "last.pt")["epoch"] == 1


# ----------------------------------------------------------------------------- kills, temp files and the table


def test_stale_temp_masks_are_removed(predictor: Predictor, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".hippocampus_001.k3j_x9q2.nii.gz", out / ".predictions.ab12cd34.csv"]
    for p in stale:
        p.write_bytes(b"half a mask")
    unrelated = [out / ".notes.txt", out / ".other_case.k3j_x9q2.nii.gz", out / "keep.nii.gz"]
    for p in unrelated:
        p.write_bytes(b"not ours")
    predict_folder(predictor, [scans / "hippocampus_001.nii.gz"], out, progress=False)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in unrelated), "only this run's own temp files go"


def test_table_is_written_after_every_case(
    predictor: Predictor, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a kill at any case would leave: the table on disk lists exactly the masks finished so far."""
    out = tmp_path / "out"
    seen: list[tuple[list[str], list[str]]] = []

    def spy(original: Any) -> Any:
        def call(self: Predictor, volume: Any) -> Any:
            table = out / "predictions.csv"
            listed = [r["case"] for r in _rows(table) if r["status"] == "ok"] if table.exists() else []
            masks = sorted(p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")) if out.exists() else []
            seen.append((listed, masks))
            return original(self, volume)

        return call

    # Batch prediction calls predict (slab by slab) or predict_with_proba (when QC needs probabilities).
    monkeypatch.setattr(Predictor, "predict", spy(Predictor.predict))
    monkeypatch.setattr(Predictor, "predict_with_proba", spy(Predictor.predict_with_proba))
    predict_folder(predictor, scans, out, progress=False)
    assert [listed for listed, _ in seen] == [list(CASES[:i]) for i in range(len(CASES))]
    assert all(listed == masks for listed, masks in seen)


# ------------------------------------------------------------------------------------- refused before the run


def _glob_dataset(root: Path, empty: set[str]) -> Path:
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for case in CASES[:3]:
        shutil.copy(SAMPLE / "imagesTr" / f"{case}.nii.gz", root / "images" / f"{case}.nii.gz")
        label = nib.load(SAMPLE / "labelsTr" / f"{case}.nii.gz")
        data = np.asarray(label.dataobj)
        if case in empty:
            data = np.zeros_like(data)
        nib.save(nib.Nifti1Image(data, label.affine, label.header), root / "labels" / f"{case}.nii.gz")
    return root


def test_all_empty_labels_are_refused_before_training(tmp_path: Path) -> None:
    from medseg.training import train
    from tests.test_training import make_cfg

    root = _glob_dataset(tmp_path / "data", empty=set(CASES[:3]))
    cfg = make_cfg(root, tmp_path / "run", data={"layout": "glob", "classes": ["bg", "a", "p"], "val_fraction": 0.34})
    with pytest.raises(EmptyLabelsError) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith("All 2 training labels are empty (no voxel > 0)")
    assert sum(f"'{c}'" in message for c in CASES[:3]) == 2
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_an_empty_label_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medseg.config import DataConfig
    from medseg.data.cases import discover_cases
    from medseg.data.foreground import check_foreground
    from medseg.data.normalization import NormalizationParams
    from medseg.data.prepare import prepare_cases

    root = _glob_dataset(tmp_path / "data", empty={CASES[1]})
    spec = discover_cases(DataConfig(root=root, layout="glob", classes=["bg", "a", "p"]))
    prepared = prepare_cases(spec.cases, NormalizationParams("zscore"), axis=2, n_classes=3)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        check_foreground(prepared[:2], prepared[2:])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"Case '{CASES[1]}'" in warnings[0] and "no foreground" in warnings[0]


def test_bad_device_is_refused_before_the_output_folder_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    code = main([str(REPO / "configs" / "quickstart.yaml"), "--set", "training.device=gpu0", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "'training.device'" in err and "'cuda:N'" in err and "gpu0" in err
    assert not out.exists()


def test_empty_and_truncated_checkpoints_give_complete_messages(checkpoint: Path, tmp_path: Path) -> None:
    from medseg.training import load_checkpoint

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(empty)
    assert str(info.value).startswith(f"Checkpoint '{empty}' is empty (0 bytes)")
    truncated = tmp_path / "truncated.pt"
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(truncated)
    message = str(info.value)
    assert "truncated.pt" in message and not message.rstrip().endswith(":"), message


def test_wrong_architecture_is_summarised(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["model"]["base_features"] = 8  # the weights are base_features 4
    wrong = tmp_path / "wrong.pt"
    torch.save(ckpt, wrong)
    with pytest.raises(CheckpointError) as info:
        Predictor.from_checkpoint(wrong, device="cpu", precision="fp32")
    message = str(info.value)
    n_tensors = len(ckpt["model_state"])
    assert "\n" not in message and len(message) < 800, message
    assert f"of {n_tensors} tensors differ in size (" in message and "; ...)" in message
    assert "checkpoint (4, 1, 3, 3), model (8, 1, 3, 3)" in message


# ----------------------------------------------------------------------------------------------- exit statuses


def test_an_unexpected_error_has_its_own_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medseg import runner
    from pipelines.run import EXIT_INTERNAL

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(runner, "run_stages", broken)
    ckpt = make_checkpoint(tmp_path / "c.pt")
    args = ["--stage", "predict", "--input", str(SAMPLE / "imagesTr"), "--checkpoint", str(ckpt)]
    code = main([str(_predict_config(tmp_path)), *args, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == EXIT_INTERNAL == 4
    assert err.count("Traceback") == 1 and "ValueError: a bug" in err
    assert (
        f"medseg: error: unexpected ValueError: a bug; please report it with '{tmp_path / 'run' / 'medseg.log'}'" in err
    )


def test_every_exit_status_is_documented() -> None:
    import re

    import pipelines.run as cli

    codes = {v for k, v in vars(cli).items() if k.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 4, 130}
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Errors and exit statuses") :]
    section = section[: section.index("\n## ", 1)]
    assert {int(c) for c in re.findall(r"^\| (\d+) \|", section, re.M)} == codes
    assert {int(c) for c in re.findall(r"^  (\d+)  ", cli.EPILOG, re.M)} == codes


def test_cases_that_cannot_be_evaluated_give_exit_status_1_with_the_grids_difference(
    sample_hippo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Masks of oblique copies of the scans against axis-aligned ground truth: same shape, spacing and origin, so
    # only the corners' distance and the directions can say why they are refused.
    from pipelines.run import EXIT_FAILED_CASES

    labels = sorted((sample_hippo / "labelsTr").glob("*.nii.gz"))[:2]
    out, gt = tmp_path / "run", tmp_path / "gt"
    (out / "predictions").mkdir(parents=True)
    gt.mkdir()
    rows = ["case,input,output,status,error,seconds"]
    angle = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    for label in labels:
        img = nib.load(label)
        shutil.copy(label, gt / label.name)
        affine = img.affine.copy()
        affine[:3, :3] = rotation @ affine[:3, :3]
        mask = out / "predictions" / label.name
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), mask)
        rows.append(f"{label.name.removesuffix('.nii.gz')},{label},{mask},ok,,0.1")
    (out / "predictions" / "predictions.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "evaluate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"classes": ["background", "Anterior", "Posterior"]},
                "evaluation": {"ground_truth": str(gt), "overlays": 0},
                "stages": ["evaluate"],
            }
        )
    )
    assert main([str(config), "--output", str(out)]) == EXIT_FAILED_CASES
    errors = [r["error"] for r in _rows(out / "evaluation" / "metrics.csv")]
    assert len(errors) == 2
    assert all("grid corners are up to" in e and "directions [[1.0, 0.0, 0.0], [0.0, 0.9397" in e for e in errors)
