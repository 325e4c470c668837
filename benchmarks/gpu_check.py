"""The GPU check (issue 15): one script to run when a GPU is lent, writing ``benchmarks/out/gpu_check.json``.

Parts, each with its own entry in the JSON:

* ``train``: training steps/s and slices/s of the trainer's own optimiser step (``Trainer.train_step``: autocast
  forward, loss, backward, clipping, AdamW) on one ready batch of real sample slices, for base 16 and 32, two
  patch sizes (64 x 64 and 256 x 256), and fp32 / bf16 autocast, each with and without channels_last; peak GPU
  memory of each.
* ``predict``: volumes/s of :meth:`Predictor.predict` (labels slab by slab, ``batch_size: auto``) on the sample
  hippocampus scans and, with ``../shared/data`` beside the repository, the first LA2018 scans; fp32 and bf16,
  base 16 and 32 (random weights: prediction cost does not depend on them); peak GPU memory.
* ``agreement``: the stored reference model of ``tests/data`` (whose class boundaries run through the volume) on
  CUDA in fp32 and bf16 against its stored CPU fp32 masks: share of equal voxels and Dice per class.
* ``ddp``: a 2-process ``torchrun`` of the shortened quickstart on the GPU(s): nccl with 2+ GPUs; with one GPU both
  ranks share it over gloo (nccl refuses two ranks on one device).

Without CUDA, every CUDA measurement is skipped with a line saying so, and the train, predict and agreement code
paths run once on the CPU at the smallest size (a smoke run: numbers meaningless, marked ``"smoke": true``), so
``tests/test_benchmarks.py`` keeps the script working. Budget: well under 8 minutes on one GPU.

::

    python benchmarks/gpu_check.py                          # on a machine with a GPU
    python benchmarks/gpu_check.py --out /tmp/gpu_check.json  # here: the CPU smoke run, seconds
    python benchmarks/gpu_check.py --smoke --out /tmp/g.json  # the smoke run on any machine (tests)
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, REPO, command_line, machine_info, write_json

SAMPLE = REPO / "sample_data" / "hippocampus"
LA2018 = REPO.parent / "shared" / "data" / "LA2018_UAMT"
REFERENCE = REPO / "tests" / "data"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
#: (training.precision, channels_last) per training mode.
TRAIN_MODES = {
    "fp32": ("fp32", False),
    "fp32_cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16_cl": ("bf16", True),
    "fp16": ("fp16", False),  # what ``precision: auto`` picks on CUDA (autocast + GradScaler)
    "fp16_cl": ("fp16", True),
}
#: Autocast precisions of the prediction and agreement parts on CUDA (fp16 = ``auto`` there).
CUDA_PRECISIONS = ("fp32", "bf16", "fp16")
PARTS = ("train", "predict", "agreement", "ddp")


def _say(text: str) -> None:
    print(text, flush=True)


def _cuda() -> Any:
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def _cuda_info(cuda: Any) -> dict[str, Any]:
    """The GPU and the torch, CUDA runtime and cuDNN versions the figures were measured with."""
    import torch

    return {
        "device": cuda.get_device_name(0),
        "count": cuda.device_count(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def _timed(fn: Callable[[], Any], n: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return time.perf_counter() - t0


def _peak_gib(cuda: Any) -> float | None:
    return round(cuda.max_memory_allocated() / 2**30, 3) if cuda is not None else None


def train_part(device: str, smoke: bool, steps: int, work: Path) -> list[dict[str, Any]]:
    """Steps/s of the trainer's own step on one ready batch, per base, patch and mode."""
    import torch

    from medseg.config import load_config
    from medseg.training.trainer import Trainer

    cuda = _cuda() if device == "cuda" else None
    sync = cuda.synchronize if cuda is not None else (lambda: None)
    grid = (
        [(4, (48, 48), "fp32")]
        if smoke
        else [(b, p, m) for b in (16, 32) for p in ((64, 64), (256, 256)) for m in TRAIN_MODES]
    )
    out = []
    for base, patch, mode in grid:
        precision, channels_last = TRAIN_MODES[mode]
        cfg = load_config(
            QUICKSTART,
            [
                f"data.root={SAMPLE}",
                f"model.base_features={base}",
                f"preprocessing.patch_size=[{patch[0]}, {patch[1]}]",
                "training.batch_size=4" if smoke else "training.batch_size=16",
                f"training.device={device}",
                f"training.precision={precision}",
                f"training.channels_last={str(channels_last).lower()}",
                "training.num_workers=0",
                "training.max_minutes=null",
                f"output.dir={work / f'train_{base}_{patch[0]}_{mode}'}",
            ],
        )
        trainer = Trainer(cfg)
        batch = next(iter(trainer.loader))
        ready = {
            "image": batch["image"].to(trainer.device).contiguous(memory_format=trainer.memory_format),
            "label": batch["label"].to(trainer.device),
        }
        trainer.train_model.train()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        step = functools.partial(trainer.train_step, ready)
        _timed(step, 1 if smoke else 5, sync)  # warm-up: cuDNN autotuning, allocator
        n = 1 if smoke else steps
        seconds = _timed(step, n, sync)
        row = {
            "base": base,
            "patch": list(patch),
            "mode": mode,
            "batch": int(ready["image"].shape[0]),
            "steps": n,
            "steps_per_s": round(n / seconds, 2),
            "slices_per_s": round(n * int(ready["image"].shape[0]) / seconds, 1),
            "peak_gpu_gib": _peak_gib(cuda),
            "smoke": smoke,
        }
        out.append(row)
        _say(f"train {row}")
        del trainer, ready, batch, step
        if cuda is not None:
            torch.cuda.empty_cache()
    return out


def _scans(limit_la: int, la_dir: Path) -> dict[str, list[Path]]:
    from medseg.io.scans import is_supported_file

    sets = {"hippocampus_sample": sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))}
    # Any scan ending: the device run carries the scans decompressed (.nii) to fit its transfer limit.
    images = la_dir / "imagesTr"
    la_scans = sorted(p for p in images.iterdir() if is_supported_file(p))[:limit_la] if images.is_dir() else []
    if la_scans:
        sets["la2018"] = la_scans
    else:
        _say(f"predict: no LA2018 scans under {la_dir / 'imagesTr'}; measuring the hippocampus sample only")
    return sets


def predict_part(device: str, smoke: bool, limit_la: int, la_dir: Path = LA2018) -> list[dict[str, Any]]:
    """Volumes/s of Predictor.predict with random weights, per data set, base and precision."""
    import torch

    from medseg.data.normalization import NormalizationParams
    from medseg.inference.predictor import ModelSpec, Predictor
    from medseg.io import load_volume
    from medseg.models.unet import UNet

    cuda = _cuda() if device == "cuda" else None
    sync = cuda.synchronize if cuda is not None else (lambda: None)
    sets = _scans(limit_la, la_dir)
    if smoke:
        sets = {"hippocampus_sample": sets["hippocampus_sample"][:1]}
    out = []
    for name, paths in sets.items():
        volumes = [load_volume(p) for p in paths]  # read once: the part measures prediction, not reading
        for base in (4,) if smoke else (16, 32):
            for precision in ("fp32",) if smoke else CUDA_PRECISIONS:
                torch.manual_seed(0)
                spec = ModelSpec(
                    classes=("background", "fg"),
                    mode="softmax",
                    normalization=NormalizationParams("zscore"),
                    slice_axis=2,
                    context_slices=1,
                )
                predictor = Predictor(UNet(3, 2, base_features=base), spec, device=device, precision=precision)
                if cuda is not None:
                    cuda.reset_peak_memory_stats()
                predictor.predict(volumes[0])  # warm-up
                sync()
                t0 = time.perf_counter()
                for volume in volumes:
                    predictor.predict(volume)
                sync()
                seconds = time.perf_counter() - t0
                row = {
                    "scans": name,
                    "n": len(volumes),
                    "base": base,
                    "precision": precision,
                    "volumes_per_s": round(len(volumes) / seconds, 2),
                    "peak_gpu_gib": _peak_gib(cuda),
                    "smoke": smoke,
                }
                out.append(row)
                _say(f"predict {row}")
    return out


def agreement_part(device: str) -> list[dict[str, Any]]:
    """The reference model's masks on ``device`` vs its stored CPU fp32 masks (tests/data)."""
    import numpy as np

    from medseg.inference.predictor import Predictor
    from medseg.io import load_volume
    from medseg.metrics import dice

    stored = np.load(REFERENCE / "reference_masks.npz")
    scans = {
        "hippocampus_001": SAMPLE / "imagesTr" / "hippocampus_001.nii.gz",
        "hippocampus_003": SAMPLE / "imagesTr" / "hippocampus_003.nii.gz",
        "hippocrop_dicom": REPO / "sample_data" / "dicom" / "HippoCrop_Study1",
    }
    out = []
    for precision in CUDA_PRECISIONS if device == "cuda" else ("fp32",):
        predictor = Predictor.from_checkpoint(
            REFERENCE / "reference_model.pt", device=device, precision=precision, batch_size=64, channels_last=False
        )
        for key, path in scans.items():
            mask = np.asarray(predictor.predict(load_volume(path)).array)
            ref = stored[key]
            per_class = [dice(mask == c, ref == c) for c in range(1, len(predictor.classes))]
            row = {
                "scan": key,
                "device": device,
                "precision": precision,
                "equal_voxels": round(float((mask == ref).mean()), 6),
                "dice_per_class": [round(float(d), 4) for d in per_class],
            }
            out.append(row)
            _say(f"agreement {row}")
    return out


def ddp_part(work: Path, timeout_s: float) -> dict[str, Any]:
    """A 2-process torchrun of the shortened quickstart on the GPU(s)."""
    import torch

    n_gpus = torch.cuda.device_count()
    backend = "nccl" if n_gpus >= 2 else "gloo"  # nccl refuses two ranks on one device
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipelines.run",
        str(QUICKSTART),
        "--set",
        "training.epochs=1",
        "--set",
        "training.max_minutes=null",
        "--set",
        "training.device=cuda",
        "--set",
        "inference.device=cuda",
        "--set",
        f"training.distributed_backend={backend}",
        "--set",
        f"output.dir={work / 'ddp'}",
        "--stage",
        "train",
    ]
    t0 = time.perf_counter()
    # The repository first, then whatever the caller had (packages installed outside site-packages stay visible).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    best = work / "ddp" / "checkpoints" / "best.pt"
    result = {
        "gpus": n_gpus,
        "backend": backend,
        "exit_status": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "best_checkpoint_written": best.is_file(),
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }
    _say(f"ddp {result}")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR / "gpu_check.json", help="result JSON")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setting (CUDA)")
    parser.add_argument("--la-scans", type=int, default=10, help="LA2018 scans in the prediction part")
    parser.add_argument(
        "--la-dir", type=Path, default=LA2018, help="LA2018 folder (with imagesTr/) for the prediction part"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {', '.join(PARTS)})",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the CPU smoke run even where CUDA is present (what the tests run)"
    )
    parser.add_argument("--ddp-timeout", type=float, default=240.0, help="seconds the DDP smoke run may take")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = None if args.smoke else _cuda()
    device = "cuda" if cuda is not None else "cpu"
    smoke = cuda is None
    if smoke:
        _say(
            f"CUDA is {'not used (--smoke)' if args.smoke else 'not available'}: skipping the CUDA measurements "
            "(training and prediction speed, peak GPU memory, CUDA vs CPU agreement, DDP); running each part's "
            "code path once on the CPU as a smoke run"
        )
    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "command": command_line(),
        "machine": machine_info(),
        "cuda": None if cuda is None else _cuda_info(cuda),
        "smoke": smoke,
    }
    with tempfile.TemporaryDirectory(prefix="medseg-gpu-check-") as tmp:
        work = Path(tmp)
        runners: dict[str, Callable[[], Any]] = {
            "train": lambda: train_part(device, smoke, args.steps, work),
            "predict": lambda: predict_part(device, smoke, args.la_scans, args.la_dir),
            "agreement": lambda: agreement_part(device),
            "ddp": lambda: None if smoke else ddp_part(work, args.ddp_timeout),
        }
        for part in args.parts:
            result[part] = runners[part]()
            # Written after every part: a run stopped at its time limit keeps what it measured.
            result["seconds"] = round(time.perf_counter() - start, 1)
            write_json(args.out, result)
    if smoke and "ddp" in args.parts:
        _say("ddp: skipped (no CUDA; the CPU/gloo path is covered by tests/test_distributed.py)")
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(args.out, result)
    _say(f"wrote {args.out} in {result['seconds']} s")
    ddp = result.get("ddp")
    return 0 if ddp is None or ddp["exit_status"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
