"""Whole-body CT-sized prediction: time, peak RSS and linearity in the number of slices (issue 15).

Each case runs in its own process (so ``VmHWM`` is that case's peak alone): a random-initialised base-32 UNet
(prediction cost does not depend on the weights) predicts, through :meth:`Predictor.predict` with the default
``batch_size: auto`` and ``memory_gb`` from the machine, either a synthetic 512 x 512 x N float32 CT-like
volume (seeded noise in Hounsfield range) or a real scan (``--scan``, e.g. the TotalSegmentator CT DICOM
series). Targets: peak RSS <= 1.5 GiB + 3 x the scan's float32 size (4.4 GiB at N = 400) and a time per slice
constant within 15 % from N = 100 to N = 400.

These runs are heavy (minutes of CPU each at 512 x 512): run each case once, when the figure matters, on a
machine as idle as you can get; the JSON records the load average at the start and end of every case.

::

    python benchmarks/large_volume.py --slices 100 400                       # benchmarks/out/large_volume.json
    python benchmarks/large_volume.py --slices 0 --scan ../shared/data/TotalSegmentator_examples/example_ct_dicom
    python benchmarks/large_volume.py --slices 8 --size 128 --out /tmp/lv.json  # a quick look (seconds)
    python benchmarks/large_volume.py --slices 200 --base 8 --path predict qc probs \
        --out benchmarks/out/large_volume_paths.json

``--path`` compares what each prediction path keeps: ``predict`` (labels slab by slab), ``qc`` (the same plus two
float16 confidence maps: what a batch with QC does) and ``probs`` (the whole probability volume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, command_line, machine_info, proc_status_mb, write_json

_GIB = 2**30


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def build_predictor(
    base: int,
    batch_size: str | int,
    memory_gb: float | None,
    seed: int,
    precision: str = "fp32",
    n_classes: int = 2,
) -> Any:
    """A random-initialised UNet (depth 4) wrapped in a :class:`Predictor` with CT normalisation.

    ``precision`` is ``inference.precision``: ``fp32`` (the default here, comparable across CPUs) or ``auto``
    (what a user gets: bf16 + channels_last on a CPU with native bf16). ``n_classes`` (background included)
    sizes the softmax head: a multi-organ model's probabilities are many times a binary one's.
    """
    import torch

    from medseg.data.normalization import NormalizationParams
    from medseg.inference.predictor import ModelSpec, Predictor
    from medseg.models.unet import UNet

    torch.manual_seed(seed)
    model = UNet(1, n_classes, base_features=base, depth=4)
    spec = ModelSpec(
        classes=("background", "foreground") if n_classes == 2 else tuple(f"c{k}" for k in range(n_classes)),
        mode="softmax",
        normalization=NormalizationParams("ct", clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=500.0),
        slice_axis=2,
        context_slices=0,
    )
    return Predictor(
        model,
        spec,
        device="cpu",
        precision=precision,
        batch_size="auto" if batch_size == "auto" else int(batch_size),
        memory_gb=memory_gb,
    )


def case_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One case in this process: build the volume, predict it once, report time and memory."""
    import numpy as np
    import torch

    from medseg.volume import Volume

    predictor = build_predictor(
        spec["base"],
        spec["batch_size"],
        spec["memory_gb"],
        spec["seed"],
        spec.get("precision", "fp32"),
        spec.get("classes", 2),
    )
    if spec.get("scan"):
        from medseg.io import load_volume

        volume = load_volume(spec["scan"])
        what = str(spec["scan"])
    else:
        rng = np.random.default_rng(spec["seed"])
        n, size = int(spec["slices"]), int(spec["size"])
        array = rng.normal(0.0, 400.0, size=(size, size, n)).astype(np.float32)
        volume = Volume(array=array, affine=np.diag([0.8, 0.8, 1.5, 1.0]))
        what = f"synthetic {size}x{size}x{n}"
    shape = tuple(int(s) for s in volume.array.shape)
    scan_gib = float(np.prod(shape)) * 4 / _GIB
    settings = predictor.settings_for(shape)  # what predict() will use (canonical order = this order here)
    rss_before = proc_status_mb("VmRSS")
    load_start = _load()
    t0 = time.perf_counter()
    path = spec.get("path", "predict")
    if path == "predict":
        mask = predictor.predict(volume)
    elif path == "qc":  # a batch with QC: labels and float16 confidence maps slab by slab
        mask, _ = predictor.predict_with_confidence(volume)
    else:  # "probs": the whole probability volume (save_probabilities / fractional SEG; batch QC before)
        mask, _ = predictor.predict_with_proba(volume)
    seconds = time.perf_counter() - t0
    n_slices = shape[predictor.spec.slice_axis]
    peak_mb = proc_status_mb("VmHWM")
    return {
        "case": what,
        "path": path,
        "shape": list(shape),
        "scan_float32_gib": round(scan_gib, 3),
        "rss_target_gib": round(1.5 + 3 * scan_gib, 3),
        "batch_size": settings.batch_size,
        "batch_size_option": spec["batch_size"],
        "memory_gb": predictor.memory_gb,
        "torch_threads": torch.get_num_threads(),
        "precision": spec.get("precision", "fp32"),
        "classes": spec.get("classes", 2),
        "arithmetic": str(predictor.dtype or "float32").replace("torch.", "")
        + (" + channels_last" if predictor.channels_last else ""),
        "seconds": round(seconds, 2),
        "seconds_per_slice": round(seconds / max(1, n_slices), 4),
        "rss_before_predict_mb": rss_before,
        "peak_rss_mb": peak_mb,
        "peak_rss_gib": round(peak_mb / 1024, 3) if peak_mb is not None else None,
        "mask_dtype": str(mask.array.dtype),
        "load_avg_start": load_start,
        "load_avg_end": _load(),
    }


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs :func:`case_worker` in a fresh process (its own peak RSS) and returns its JSON."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"case": spec, "error": proc.stderr.strip()[-2000:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def linearity(cases: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Time per slice of the largest synthetic case over the smallest's (1.0 = linear; target within 15 %)."""
    synth = sorted(
        (
            c
            for c in cases
            if "seconds_per_slice" in c and "synthetic" in c["case"] and c.get("path", "predict") == "predict"
        ),
        key=lambda c: c["shape"][2],
    )
    if len(synth) < 2:
        return None
    lo, hi = synth[0], synth[-1]
    return {
        "from_slices": lo["shape"][2],
        "to_slices": hi["shape"][2],
        "per_slice_ratio": round(hi["seconds_per_slice"] / lo["seconds_per_slice"], 3),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 400], help="synthetic N values (0 = none)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the synthetic volumes")
    parser.add_argument("--scan", type=Path, action="append", default=[], help="a real scan to predict too")
    parser.add_argument("--base", type=int, default=32, help="UNet base_features")
    parser.add_argument("--batch-size", default="auto", help="inference.batch_size (an int or auto)")
    parser.add_argument("--memory-gb", type=float, default=None, help="inference.memory_gb (default: the machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--path",
        nargs="+",
        choices=["predict", "qc", "probs"],
        default=["predict"],
        help="what is measured: Predictor.predict (slab labels), predict_with_confidence (a batch with QC: slab "
        "labels + confidence maps), predict_with_proba (the whole probability volume); each case once per path",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "auto"],
        default="fp32",
        help="inference.precision: fp32 (comparable across CPUs) or auto (bf16 + channels_last with native bf16)",
    )
    parser.add_argument("--classes", type=int, default=2, help="classes of the model, background included")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "large_volume.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(case_worker(json.loads(args.worker))))
        return 0
    batch: str | int = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    common = {
        "base": args.base,
        "batch_size": batch,
        "memory_gb": args.memory_gb,
        "seed": args.seed,
        "precision": args.precision,
        "classes": args.classes,
    }
    cases: list[dict[str, Any]] = []
    for path in args.path:
        for n in [n for n in args.slices if n > 0]:
            cases.append(run_case({**common, "path": path, "slices": n, "size": args.size}))
            print(json.dumps(cases[-1]), flush=True)
        for scan in args.scan:
            cases.append(run_case({**common, "path": path, "scan": str(scan)}))
            print(json.dumps(cases[-1]), flush=True)
    result = {
        "benchmark": "large_volume",
        "command": command_line(),
        "machine": machine_info(),
        "cases": cases,
        "linearity": linearity(cases),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0 if all("error" not in c for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
