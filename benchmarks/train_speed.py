"""Training speed: fp32 vs bf16 autocast, NCHW vs channels_last, and how long the model waits for data.

Two measurements on real cases (``sample_data/hippocampus`` by default), through the trainer's own setup and
``Trainer.train_step`` (so what is timed is what ``train()`` runs):

1. **Compute**: batches are drawn once up front (no augmentation), then ``--steps`` optimiser steps are timed for
   each of fp32 / bf16 x NCHW / channels_last -> slices per second.
2. **Loader**: the full default augmentation, with ``num_workers`` 0, 1, 2 (``--workers``): slices per second
   and the share of step time spent waiting for the next batch.

The settings are timed round robin, ``--repeats`` times, and the median is reported: on a shared machine the
load changes during a run, and interleaving spreads that over all settings.

Usage::

    python benchmarks/train_speed.py                       # defaults: base_features 32, batch 32
    python benchmarks/train_speed.py --steps 20 --threads 2 --out benchmarks/out/train_speed.json

Prints a table and writes JSON (``benchmarks/out/train_speed.json``). Timings depend on what else runs on the
machine; the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine_info, write_json  # noqa: E402
from medseg.config import Config, config_from_dict  # noqa: E402
from medseg.inference.precision import cpu_supports_bf16  # noqa: E402
from medseg.training.trainer import Trainer  # noqa: E402


def make_cfg(args: argparse.Namespace, out: Path, *, augment: bool = True, **training: Any) -> Config:
    """The benchmark's run: ``args``' data and model size, the given ``training`` options."""
    raw = {
        "data": {"root": str(args.data), "val_fraction": 0.2},
        "model": {"base_features": args.base_features},
        "augmentation": {"enabled": augment},
        "training": {"batch_size": args.batch_size, "device": "cpu", "epochs": 1, **training},
        "output": {"dir": str(out)},
    }
    return config_from_dict(raw, base_dir=REPO)


class ComputeBench:
    """Optimiser steps on pre-drawn batches: compute only, no data loading."""

    def __init__(self, args: argparse.Namespace, out: Path, precision: str, channels_last: bool) -> None:
        self.precision, self.channels_last = precision, channels_last
        self.steps = args.bf16_steps if precision == "bf16" else args.steps
        self.trainer = Trainer(
            make_cfg(args, out, augment=False, precision=precision, channels_last=channels_last, num_workers=0)
        )
        self.trainer.sampler.set_epoch(0)
        it = iter(self.trainer.loader)
        self.batches = [next(it) for _ in range(min(self.steps, len(self.trainer.loader)))]
        self.trainer.train_step(self.batches[0])  # warm-up: oneDNN primitive creation, allocator
        self.rates: list[float] = []

    def run(self) -> None:
        start = time.perf_counter()
        n = 0
        for i in range(self.steps):
            batch = self.batches[i % len(self.batches)]
            self.trainer.train_step(batch)
            n += int(batch["image"].shape[0])
        self.rates.append(n / (time.perf_counter() - start))

    def summary(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "steps_per_repeat": self.steps,
            "slices_per_s_repeats": self.rates,
            "slices_per_s": statistics.median(self.rates),
        }


class LoaderBench:
    """The real loop (default augmentation, auto precision/layout): slices/s and the data-wait share."""

    def __init__(self, args: argparse.Namespace, out: Path, workers: int) -> None:
        self.workers = workers
        self.steps = args.steps
        self.trainer = Trainer(make_cfg(args, out, num_workers=workers))
        self.epoch = 0
        self.it = self._epoch_iter()
        for _ in range(2):  # warm-up: worker start-up and the first prefetch are not steady state
            self.trainer.train_step(self._next())
        self.rates: list[float] = []
        self.waits: list[float] = []

    def _epoch_iter(self) -> Any:
        self.trainer.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.trainer.loader)

    def _next(self) -> dict[str, torch.Tensor]:
        try:
            return next(self.it)
        except StopIteration:
            self.it = self._epoch_iter()
            return next(self.it)

    def run(self) -> None:
        wait = total = 0.0
        n = 0
        for _ in range(self.steps):
            t0 = time.perf_counter()
            batch = self._next()
            t1 = time.perf_counter()
            self.trainer.train_step(batch)
            wait += t1 - t0
            total += time.perf_counter() - t0
            n += int(batch["image"].shape[0])
        self.rates.append(n / total)
        self.waits.append(wait / total)

    def summary(self) -> dict[str, Any]:
        return {
            "num_workers": self.workers,
            "steps_per_repeat": self.steps,
            "slices_per_s_repeats": self.rates,
            "slices_per_s": statistics.median(self.rates),
            "data_wait_share_repeats": self.waits,
            "data_wait_share": statistics.median(self.waits),
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.trainer.amp_dtype],
            "channels_last": self.trainer.channels_last,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "sample_data" / "hippocampus")
    parser.add_argument("--base-features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat of each fp32 / loader setting")
    parser.add_argument("--bf16-steps", type=int, default=1, help="timed steps per repeat of each bf16 setting")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats; the median is reported")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated num_workers to compare")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "train_speed.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = machine_info()  # before the run: its load average says whether the machine was idle
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        settings = [("fp32", False), ("fp32", True)]
        if not args.skip_bf16:
            settings += [("bf16", False), ("bf16", True)]
        benches: list[ComputeBench | LoaderBench] = [
            ComputeBench(args, Path(tmp) / f"{p}{cl}", p, cl) for p, cl in settings
        ]
        benches += [LoaderBench(args, Path(tmp) / f"w{w}", int(w)) for w in args.workers.split(",")]
        # Round robin over the settings, so a change in the machine's load hits all of them alike.
        for r in range(args.repeats):
            for bench in benches:
                bench.run()
            print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
        compute = [b.summary() for b in benches if isinstance(b, ComputeBench)]
        loader = [b.summary() for b in benches if isinstance(b, LoaderBench)]

    base = compute[0]["slices_per_s"]
    print()
    print(
        f"UNet base_features={args.base_features}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{machine['cpu']}, native bf16: {cpu_supports_bf16()}"
    )
    print(f"{'precision':<10}{'channels_last':<15}{'slices/s':>10}{'vs fp32 NCHW':>14}")
    for row in compute:
        speedup = row["slices_per_s"] / base
        print(f"{row['precision']:<10}{row['channels_last']!s:<15}{row['slices_per_s']:>10.1f}{speedup:>13.2f}x")
    print()
    print(
        f"{'num_workers':<13}{'slices/s':>10}{'data wait':>11}   (default augmentation, {loader[0]['precision']}, "
        f"channels_last={loader[0]['channels_last']})"
    )
    for row in loader:
        print(f"{row['num_workers']:<13}{row['slices_per_s']:>10.1f}{100 * row['data_wait_share']:>10.1f}%")

    machine["torch_threads"] = torch.get_num_threads()
    machine["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    result = {
        "benchmark": "train_speed",
        "command": command_line(),
        "machine": machine,
        "setup": {
            "data": str(args.data),
            "base_features": args.base_features,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "bf16_steps": args.bf16_steps,
            "repeats": args.repeats,
            "statistic": "median over repeats",
        },
        "compute": compute,
        "loader": loader,
    }
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
