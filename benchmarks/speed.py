"""Training and prediction speed and memory, measured in one run (issue 7, targets 2-4; issue 4's training rate).

Training, per precision mode (``fp32``; ``bf16_cl`` = bf16 autocast + channels_last where the CPU runs bf16
natively, otherwise ``fp32_cl``; ``--modes`` chooses), each in its own process:

(a) the bare model step (``Trainer.train_step``: forward, loss, backward, clipping, optimiser) on one ready
    batch: the ceiling;
(b) medseg's training loop on real slices with augmentation: the trainer's own loop (``Trainer.time_loop``) over its
    own ``DataLoader`` (foreground sampling, seeded MONAI augmentation), for a fixed number of batches;
(c) the same model and ``train_step`` fed by a plain ``monai.data.Dataset`` + ``DataLoader`` over per-slice
    dicts with the equivalent MONAI transforms (``SpatialPadd`` and ``RandSpatialCropd`` to the patch, medseg's
    augmentation settings as plain MONAI transforms, metadata tracking on, no gating), same batch size and worker
    count.

Targets: (b)/(a) >= 0.90 (data preparation hidden behind compute) and (b)/(c) >= 1.0. (a), (b), (c) run
interleaved in rounds. The peak RSS of training is the process's ``VmHWM`` once the data of every case is
prepared and the trainer's loop has run (before (c) builds its own copy of the slices).

Prediction, per mode (``fp32``, and ``fast`` = ``precision: auto``, ``channels_last: auto``, what a user gets
by default), each in its own process: :func:`medseg.inference.batch.predict_folder` over a folder of scans
(reading and writing included) vs the bare forward pass of the model over the same slices (already read,
normalised, resampled to the plan's spacing, sliced and padded, by ``Predictor.network_input`` as the
prediction does; same batches, same TTA flips). The ratio is the batch run's wall time per scan
over the bare pass's time per scan (by default the bare pass covers every scan, so it is the ratio of the two
runs' times; issue 15's target <= 1.15), timed in interleaved rounds (a bare pass, then a batch pass;
``--predict-rounds``) and reported as the median of the rounds' ratios. Peak RSS (``VmHWM``) of the batch run's
three passes, and its memory growth: ``VmRSS`` sampled every 50 ms against the number of masks written, after
10 scans vs at the end of the folder, and in two more passes over the same folder (target: no growth with the
number of scans, i.e. no later pass peaks above the first).

::

    python benchmarks/speed.py                                        # ~10 min on 2 cores; benchmarks/out/speed.json
    python benchmarks/speed.py --checkpoint runs/benchmarks/quality_medseg_10min/fold0/checkpoints/best.pt
    python benchmarks/speed.py --measure-seconds 5 --scans 12 --bare-scans 4 --skip-train   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    B_OVER_A_MIN,
    B_OVER_C_MIN,
    BATCH_OVER_BARE_MAX,
    DEFAULT_DATA,
    OUT_DIR,
    RUNS_DIR,
    RssSampler,
    command_line,
    fmt,
    machine_info,
    proc_status_mb,
    text_table,
    write_json,
)

log = logging.getLogger("benchmarks.speed")

#: Training modes: (training.precision, training.channels_last).
TRAIN_MODES: dict[str, tuple[str, bool | str]] = {
    "fp32": ("fp32", False),
    "fp32_cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16_cl": ("bf16", True),
    "fast": ("auto", "auto"),
}
#: Prediction modes: (inference.precision, channels_last).
PREDICT_MODES: dict[str, tuple[str, bool | str]] = {
    "fp32": ("fp32", False),
    "fast": ("auto", "auto"),
    "bf16_cl": ("bf16", True),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/speed.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=Path("configs/hippocampus.yaml"), help="medseg YAML config")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="dataset folder (data.root)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override"
    )
    parser.add_argument(
        "--modes",
        default=None,
        help=f"training modes, comma-separated, from {', '.join(TRAIN_MODES)} "
        "(default: fp32,bf16_cl on CPUs with native bf16 or CUDA, else fp32,fp32_cl)",
    )
    parser.add_argument(
        "--predict-modes", default="fp32,fast", help=f"prediction modes, from {', '.join(PREDICT_MODES)}"
    )
    parser.add_argument(
        "--measure-seconds", type=float, default=20.0, help="timed seconds per training path (a, b, c), all rounds"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved a/b/c rounds the timed steps are split into")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each training path first")
    parser.add_argument("--min-steps", type=int, default=3, help="at least this many timed steps per path")
    parser.add_argument("--max-steps", type=int, default=300, help="at most this many timed steps per path")
    parser.add_argument("--scans", type=int, default=0, help="scans in the batch-prediction folder (0 = all)")
    parser.add_argument("--bare-scans", type=int, default=0, help="scans the bare forward pass covers (0 = all)")
    parser.add_argument("--predict-rounds", type=int, default=3, help="interleaved (bare, batch) prediction rounds")
    parser.add_argument(
        "--scan-dir", type=Path, default=None, help="folder of scans to predict (default: DATA_ROOT/imagesTr)"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="model for prediction (default: train one)")
    parser.add_argument("--ckpt-cases", type=int, default=12, help="cases used to train that model (1 epoch)")
    parser.add_argument("--skip-train", action="store_true", help="skip the training measurements")
    parser.add_argument("--skip-predict", action="store_true", help="skip the prediction measurements")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "speed.json", help="result JSON")
    parser.add_argument("--work-dir", type=Path, default=RUNS_DIR / "speed", help="scratch folder (deleted content)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-spec", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- shared helpers


def _config(spec: dict[str, Any], extra: Sequence[str]) -> Any:
    from medseg.config import load_config

    ours = [f"data.root={Path(spec['data_root']).resolve()}", "training.resume=false"]
    return load_config(Path(spec["config"]), [*spec["overrides"], *ours, *extra])


def _ratios(num: dict[str, Any], den: dict[str, Any]) -> list[float]:
    pairs = zip(num["slices_per_s_per_round"], den["slices_per_s_per_round"], strict=True)
    return [n / d for n, d in pairs]


def _batches(loader: Any) -> Iterator[Any]:
    while True:  # restart the loader when an epoch ends (no caching, unlike itertools.cycle)
        yield from loader


# ------------------------------------------------------------------------------------------- train worker


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """(a), (b), (c) for one precision mode; runs in its own process."""
    import torch

    from medseg.training.trainer import Trainer

    precision, channels_last = TRAIN_MODES[spec["mode"]]
    cfg = _config(
        spec,
        [
            f"output.dir={spec['work_dir']}",
            f"training.precision={precision}",
            f"training.channels_last={str(channels_last).lower()}",
        ],
    )
    rss_start = proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    prep_seconds = time.perf_counter() - t0
    bs = trainer.batch_size  # the plan's batch (training.batch_size may be auto)
    device, dtype, fmt_ = trainer.device, trainer.amp_dtype, trainer.memory_format
    # Every path runs the trainer's own optimiser step (autocast forward, float32 loss, backward, clipping, AdamW).
    train_step = trainer.train_step

    # (a) the bare step repeats one ready batch of real, augmented slices (already on the device, in its layout).
    trainer.train_model.train()
    batch = next(iter(trainer.loader))
    ready = {
        "image": batch["image"].to(device).contiguous(memory_format=fmt_),
        "label": batch["label"].to(device),
    }

    def run_a(n: int) -> tuple[float, float]:
        t = time.perf_counter()
        for _ in range(n):
            train_step(ready)
        return time.perf_counter() - t, 0.0

    # (b) the trainer's own loop and loader; ForegroundSampler.num_samples sets how many batches an epoch has.
    epoch = 0

    def run_b(n: int) -> tuple[float, float]:
        nonlocal epoch
        stats = trainer.time_loop(n, epoch=epoch)
        epoch += 1
        return stats["train_seconds"], stats["data_wait_share"] * stats["train_seconds"]

    if spec["warmup"]:
        run_a(spec["warmup"])
        run_b(spec["warmup"])
    # Peak RSS of training: every case's data prepared and the trainer's loop running (before (c) adds its copy).
    peak_train = proc_status_mb("VmHWM")

    # (c) the same model fed by a plain MONAI Dataset + DataLoader with the equivalent transforms.
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandSpatialCropd, SpatialPadd

    from benchmarks.monai_baseline import plain_augmentation

    items = []
    for case in trainer.data.train:
        image, label = case.network_input(), case.label  # the 2.5D slices, as the trainer's loop gathers them
        assert label is not None  # training cases are labelled
        for i in range(case.n_slices):
            items.append({"image": np.asarray(image[i], np.float32), "label": label[i][None].astype(np.float32)})
    # Slices smaller than the patch are padded up to it, larger ones (LA2018) cropped to it at random, as the
    # trainer's patch sampling does (without its foreground preference).
    keys = ("image", "label")
    transform = Compose(
        [
            SpatialPadd(keys=keys, spatial_size=trainer.patch_hw),
            RandSpatialCropd(keys=keys, roi_size=trainer.patch_hw, random_size=False),
            *plain_augmentation(cfg.augmentation),
        ]
    )
    transform.set_random_state(seed=cfg.training.seed)
    workers = trainer.num_workers
    loader = DataLoader(
        Dataset(items, transform=transform),
        batch_size=bs,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.training.seed),
    )
    stream = _batches(loader)

    def run_c(n: int) -> tuple[float, float]:
        wait = 0.0
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            item = next(stream)
            wait += time.perf_counter() - t
            # Plain tensors into the same step: only the data pipeline differs from (b), not the arithmetic.
            xi = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)
            yi = torch.as_tensor(item["label"]).as_subclass(torch.Tensor)[:, 0].round().long()
            train_step({"image": xi, "label": yi})
        return time.perf_counter() - start, wait

    if spec["warmup"]:
        run_c(spec["warmup"])

    # Interleaved rounds (a, b, c, a, b, c, ...): a machine whose speed drifts affects all three alike. Each (b)
    # round is a short epoch, and loader workers refill their prefetch queue at every epoch start, a cost a real
    # epoch amortises; so with workers, one round.
    rounds = max(1, spec["rounds"]) if workers == 0 else 1
    probe, _ = run_a(1)
    per_round = math.ceil(spec["measure_seconds"] / rounds / max(probe, 1e-6))
    per_round = max(math.ceil(spec["min_steps"] / rounds), min(per_round, max(1, spec["max_steps"] // rounds)))
    timings: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "c": []}
    for _ in range(rounds):
        for key, run in (("a", run_a), ("b", run_b), ("c", run_c)):
            timings[key].append(run(per_round))

    def summary(key: str) -> dict[str, Any]:
        seconds = sum(t for t, _ in timings[key])
        waits = sum(w for _, w in timings[key])
        return {
            "steps": rounds * per_round,
            "seconds": seconds,
            "slices_per_s": rounds * per_round * bs / seconds,
            "data_wait_share": waits / seconds,
            "slices_per_s_per_round": [per_round * bs / t for t, _ in timings[key]],
        }

    a, b, c = summary("a"), summary("b"), summary("c")
    return {
        "mode": spec["mode"],
        "precision": str(dtype or "float32").replace("torch.", ""),
        "channels_last": trainer.channels_last,
        "device": str(device),
        "num_workers": workers,
        "batch_size": bs,
        "patch_hw": list(trainer.patch_hw),
        "training_slices": len(trainer.dataset),
        "training_cases": len(trainer.data.train),
        "prep_seconds": prep_seconds,
        "a_bare_step": a,
        "b_medseg_loop": b,
        "c_monai_loader": c,
        "rounds": rounds,
        "steps_per_round": per_round,
        "b_over_a": b["slices_per_s"] / a["slices_per_s"],
        "b_over_c": b["slices_per_s"] / c["slices_per_s"],
        "b_over_a_per_round": _ratios(b, a),
        "b_over_c_per_round": _ratios(b, c),
        "rss_start_mb": rss_start,
        "peak_rss_train_mb": peak_train,
        "peak_rss_end_mb": proc_status_mb("VmHWM"),
    }


# -------------------------------------------------------------------------------------- checkpoint worker


def checkpoint_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Trains one epoch on a few cases: a model with the config's architecture for the prediction timings."""
    from medseg.training import train

    cfg = _config(
        spec,
        [
            f"output.dir={spec['work_dir']}",
            f"data.max_cases={spec['ckpt_cases']}",
            "training.epochs=1",
            "training.max_minutes=null",
        ],
    )
    result = train(cfg)
    return {"checkpoint": str(result.best), "val_dice": result.best_dice}


# ----------------------------------------------------------------------------------------- predict worker


def _mask_count(folder: Path) -> Callable[[], int]:
    def count() -> int:
        try:
            # Masks are written atomically: hidden temp files, then renamed; probability maps carry "_prob_".
            return sum(
                1
                for name in os.listdir(folder)
                if name.endswith((".nii.gz", ".nrrd", ".mha")) and not name.startswith(".") and "_prob_" not in name
            )
        except OSError:
            return 0

    return count


def predict_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Batch prediction of a scan folder vs the bare forward pass over the same slices; memory over the run."""
    import torch

    from medseg.data.slicing import pad_to_shape, padded_size, volume_to_slices
    from medseg.inference import Predictor, predict_folder
    from medseg.inference.forward import TTA_FLIPS
    from medseg.inference.memory import DEFAULT_MARGIN_MB
    from medseg.inference.precision import autocast
    from medseg.io import find_scans, load_volume

    precision, channels_last = PREDICT_MODES[spec["mode"]]
    cfg = _config(spec, [])
    inf = cfg.inference
    predictor = Predictor.from_checkpoint(
        spec["checkpoint"],
        device=inf.device,
        precision=precision,
        batch_size=inf.batch_size,
        tta_flips=inf.tta_flips,
        postprocessing=inf.postprocessing,
        channels_last=channels_last,
    )
    scan_dir = Path(spec["scan_dir"])
    scans = find_scans(scan_dir)
    if spec["scans"]:
        scans = scans[: spec["scans"]]
    inputs: Path | list[Path] = scan_dir if len(scans) == len(find_scans(scan_dir)) else scans
    out = Path(spec["work_dir"])
    shutil.rmtree(out, ignore_errors=True)

    predictor.predict(load_volume(scans[0]))  # warm-up (oneDNN primitive creation), untimed, nothing written

    def batch_pass() -> tuple[float, Any]:
        start = time.perf_counter()
        done = predict_folder(predictor, inputs, out, overwrite=True, progress=False)
        return time.perf_counter() - start, done

    rss_before = proc_status_mb("VmRSS")
    with RssSampler(_mask_count(out)) as sampler:
        batch_seconds, result = batch_pass()
    rss_first_pass = proc_status_mb("VmRSS")
    # Two more passes over the same folder: memory that grows with the number of scans keeps growing there, while
    # caches filled by the first pass (one entry per input shape, say) do not. Compared by each pass's peak, not
    # its last sample: the heap trimmer (medseg.inference.memory) lets the resident set wander up to its margin
    # above the working level before it trims, so two snapshots differ by up to that margin without any leak,
    # while a leak raises every later pass's peak above the first's.
    pass_peaks = [sampler.max_rss_after(0)]
    rss_pass_ends = [rss_first_pass]
    later_results = []
    for _ in range(2):
        with RssSampler(_mask_count(out)) as later:
            later_results.append(batch_pass()[1])
        rss_pass_ends.append(proc_status_mb("VmRSS"))
        pass_peaks.append(later.max_rss_after(0))
    rss_second_pass = rss_pass_ends[1]
    peaks = [p for p in pass_peaks if p is not None]  # None only where /proc cannot be read
    later_peak_growth = max(peaks[1:]) - peaks[0] if len(peaks) == len(pass_peaks) else None
    peak_batch = proc_status_mb("VmHWM")  # before the bare pass's slices are held in memory
    n_ok = result.n_ok

    # Bare forward over the same slices: read, normalise, slice and pad beforehand (untimed).
    bare_scans = scans[: spec["bare_scans"]] if spec["bare_scans"] else scans
    s = predictor.spec
    batches: list[torch.Tensor] = []
    n_slices = 0
    for scan in bare_scans:
        # What the predictor feeds the model: closest-RAS order, normalised, at the plan's spacing (LA2018's
        # config predicts at 1 mm: its 0.625 mm slices have 2.6x the pixels).
        image = predictor.network_input(load_volume(scan)).image
        slices = volume_to_slices(image, s.slice_axis, s.context_slices)
        target = padded_size(slices.shape[-2:], s.pad_multiple, s.patch_hw)
        padded, _ = pad_to_shape(slices, target)
        tensor = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
        n_slices += int(tensor.shape[0])
        for i in range(0, tensor.shape[0], predictor.batch_size):
            batch = tensor[i : i + predictor.batch_size].to(predictor.device)
            batches.append(batch.contiguous(memory_format=torch.channels_last) if predictor.channels_last else batch)
    flips = TTA_FLIPS if predictor.tta_flips else ((),)
    model = predictor.model

    def bare_pass() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                for dims in flips:
                    with autocast(predictor.device, predictor.dtype):
                        model(torch.flip(x, dims) if dims else x)
        return time.perf_counter() - start

    with torch.inference_mode(), autocast(predictor.device, predictor.dtype):
        model(batches[0])  # warm-up
    # Interleaved rounds (bare pass, then a batch pass right after it), as the training paths are timed: a machine
    # that drifts during the run moves both halves of a round alike, so the ratio of each round can be trusted
    # more than one long pass of each. The reported ratio is the median over the rounds.
    rounds: list[dict[str, Any]] = []
    for _ in range(max(1, int(spec["predict_rounds"]))):
        bare_seconds = bare_pass()
        round_batch_seconds, _ = batch_pass()
        # Per scan, so that a bare pass over fewer scans (--bare-scans) still compares like with like.
        ratio = (round_batch_seconds / len(scans)) / (bare_seconds / len(bare_scans)) if bare_seconds > 0 else None
        rounds.append({"bare_seconds": bare_seconds, "batch_seconds": round_batch_seconds, "batch_over_bare": ratio})
    with (out / "predictions.csv").open(newline="") as fh:  # the last pass's table
        rows = list(csv.DictReader(fh))
    per_scan = {row["input"]: float(row["seconds"]) for row in rows if row["status"] == "ok" and row["seconds"]}
    ratios = [r["batch_over_bare"] for r in rounds if r["batch_over_bare"] is not None]
    bare_seconds = float(np.median([r["bare_seconds"] for r in rounds]))
    round_batch_seconds = float(np.median([r["batch_seconds"] for r in rounds]))
    # Growth needs scans after the 10th; with fewer there is nothing to compare.
    rss_10 = sampler.rss_at(10) if n_ok > 10 else None
    rss_end = sampler.samples[-1][2] if sampler.samples else None
    return {
        "mode": spec["mode"],
        "precision": str(predictor.dtype or "float32").replace("torch.", ""),
        "channels_last": predictor.channels_last,
        "tta_flips": predictor.tta_flips,
        "batch_size": predictor.batch_size,
        "scans": len(scans),
        "scans_ok": n_ok,
        "scans_failed": result.n_failed,
        "first_pass_seconds": batch_seconds,
        "batch_seconds": round_batch_seconds,
        "volumes_per_s": n_ok / round_batch_seconds if round_batch_seconds > 0 else None,
        "per_scan_seconds_sum": sum(per_scan.values()),
        "run_overhead_seconds": rounds[-1]["batch_seconds"] - sum(per_scan.values()),  # the table's pass
        "bare_scans": len(bare_scans),
        "bare_slices": n_slices,
        # Since the fix that made the bare slices the predictor's own (Predictor.network_input): results without
        # this key sliced the scans at their own spacing, even where the plan resamples them (LA2018 at 1 mm).
        "bare_input": "network_input",
        "bare_forward_seconds": bare_seconds,
        "bare_volumes_per_s": len(bare_scans) / bare_seconds if bare_seconds > 0 else None,
        "batch_over_bare": float(np.median(ratios)) if ratios else None,
        "rounds": rounds,
        "rss_before_mb": rss_before,
        "rss_after_10_scans_mb": rss_10,
        "rss_end_mb": rss_end,
        "rss_max_after_10_scans_mb": sampler.max_rss_after(10) if n_ok > 10 else None,
        "rss_growth_10_to_end_mb": (rss_end - rss_10) if rss_end is not None and rss_10 is not None else None,
        "rss_end_first_pass_mb": rss_first_pass,
        "rss_end_second_pass_mb": rss_second_pass,
        "rss_growth_second_pass_mb": (
            rss_second_pass - rss_first_pass if rss_second_pass is not None and rss_first_pass is not None else None
        ),
        "second_pass_ok": later_results[0].n_ok,
        "rss_end_passes_mb": rss_pass_ends,
        "rss_peak_passes_mb": pass_peaks,
        "rss_peak_growth_later_passes_mb": later_peak_growth,
        "heap_trim_margin_mb": DEFAULT_MARGIN_MB,
        "peak_rss_predict_mb": peak_batch,
        "rss_trace": [
            [round(t, 2), k, round(r, 1)] for t, k, r in sampler.samples[:: max(1, len(sampler.samples) // 200)]
        ],
    }


# ------------------------------------------------------------------------------------------- orchestrator


def _run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one measurement in a fresh process (its own peak RSS, no state shared with other measurements)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        spec = {**spec, "result_file": str(result_file)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--worker-spec", json.dumps(spec)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0 or not result_file.exists():
            raise SystemExit(
                f"speed.py: the {kind} measurement ({spec.get('mode', '')}) failed (exit {proc.returncode})"
            )
        result: dict[str, Any] = json.loads(result_file.read_text())
        result["process_seconds"] = time.perf_counter() - start
        return result


def default_train_modes() -> list[str]:
    import torch

    from medseg.inference.precision import cpu_supports_bf16

    if torch.cuda.is_available() or cpu_supports_bf16():
        return ["fp32", "bf16_cl"]
    return ["fp32", "fp32_cl"]


def _modes(text: str, known: dict[str, Any], flag: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in known]
    if bad:
        raise SystemExit(f"speed.py: {flag}: unknown mode(s) {bad}; choose from {', '.join(known)}")
    return modes


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def print_tables(result: dict[str, Any]) -> None:
    if result.get("train"):
        rows = []
        for r in result["train"]:
            rows.append(
                [
                    r["mode"],
                    f"{r['precision']}{' + channels_last' if r['channels_last'] else ''}",
                    fmt(r["a_bare_step"]["slices_per_s"], 1),
                    fmt(r["b_medseg_loop"]["slices_per_s"], 1),
                    fmt(r["c_monai_loader"]["slices_per_s"], 1),
                    fmt(r["b_over_a"], 2),
                    fmt(r["b_over_c"], 2),
                    _pct(r["b_medseg_loop"]["data_wait_share"]) + " / " + _pct(r["c_monai_loader"]["data_wait_share"]),
                    fmt(r["peak_rss_train_mb"], 0),
                ]
            )
        headers = ["mode", "arithmetic", "(a) bare", "(b) medseg", "(c) MONAI", "b/a", "b/c", "wait b/c", "peak MiB"]
        print(f"\nTraining (slices/s; targets b/a >= {B_OVER_A_MIN}, b/c >= {B_OVER_C_MIN}):")
        print(text_table(headers, rows))
    if result.get("predict"):
        rows = []
        for r in result["predict"]:
            rows.append(
                [
                    r["mode"],
                    f"{r['precision']}{' + channels_last' if r['channels_last'] else ''}",
                    str(r["scans_ok"]),
                    fmt(r["volumes_per_s"], 2),
                    fmt(r["bare_volumes_per_s"], 2),
                    fmt(r["batch_over_bare"], 2),
                    fmt(r["peak_rss_predict_mb"], 0),
                    fmt(r["rss_after_10_scans_mb"], 0),
                    fmt(r["rss_end_mb"], 0),
                ]
            )
        headers = ["mode", "arithmetic", "scans", "vol/s", "bare vol/s", "batch/bare", "peak MiB", "RSS@10", "RSS@end"]
        print(
            f"\nBatch prediction (reading and writing included; target batch/bare <= {BATCH_OVER_BARE_MAX}, "
            "no RSS growth):"
        )
        print(text_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.worker:
        spec = json.loads(args.worker_spec)
        worker = {"train": train_worker, "checkpoint": checkpoint_worker, "predict": predict_worker}[args.worker]
        out = worker(spec)
        Path(spec["result_file"]).write_text(json.dumps(out, allow_nan=True))
        return 0

    base = {
        "config": str(args.config.resolve()),
        "data_root": str(args.data_root.resolve()),
        "overrides": list(args.overrides),
        "warmup": args.warmup,
        "measure_seconds": args.measure_seconds,
        "rounds": args.rounds,
        "min_steps": args.min_steps,
        "max_steps": args.max_steps,
    }
    work = args.work_dir.resolve()
    train_modes = _modes(args.modes, TRAIN_MODES, "--modes") if args.modes else default_train_modes()
    predict_modes = _modes(args.predict_modes, PREDICT_MODES, "--predict-modes")
    result: dict[str, Any] = {
        "benchmark": "speed",
        "command": command_line(),
        "config_file": str(args.config),
        "overrides": list(args.overrides),
        "data_root": str(args.data_root),
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_spec")},
        "machine": machine_info(),
        "train": [],
        "predict": [],
    }
    if "bf16_cl" not in train_modes and not args.skip_train:
        result["notes"] = [
            "bf16 + channels_last was not measured: this CPU has no native bf16 (oneDNN), so bf16 autocast is "
            "emulated, slower than fp32, and precision: auto does not use it; --modes fp32,bf16_cl measures it anyway"
        ]
    start = time.perf_counter()
    if not args.skip_train:
        for mode in train_modes:
            log.info("== training speed, %s", mode)
            r = _run_worker("train", {**base, "mode": mode, "work_dir": str(work / f"train_{mode}")})
            result["train"].append(r)
            write_json(args.out, result)
    if not args.skip_predict:
        checkpoint = args.checkpoint
        if checkpoint is None:
            log.info("== training a model for the prediction timings (1 epoch on %d cases)", args.ckpt_cases)
            ck = _run_worker(
                "checkpoint", {**base, "work_dir": str(work / "checkpoint"), "ckpt_cases": args.ckpt_cases}
            )
            checkpoint = Path(ck["checkpoint"])
            result["prediction_model"] = {"trained_here": True, "cases": args.ckpt_cases, "val_dice": ck["val_dice"]}
        else:
            result["prediction_model"] = {"trained_here": False, "checkpoint": str(checkpoint)}
        for mode in predict_modes:
            log.info("== batch prediction, %s", mode)
            spec = {
                **base,
                "mode": mode,
                "checkpoint": str(checkpoint.resolve()),
                "scan_dir": str((args.scan_dir or args.data_root / "imagesTr").resolve()),
                "scans": args.scans,
                "bare_scans": args.bare_scans,
                "predict_rounds": args.predict_rounds,
                "work_dir": str(work / f"predict_{mode}"),
            }
            result["predict"].append(_run_worker("predict", spec))
            write_json(args.out, result)
    result["wall_seconds"] = time.perf_counter() - start
    write_json(args.out, result)
    print_tables(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
