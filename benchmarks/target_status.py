"""The first section of ``RESULTS.md``: where each open issue's measured target stands, one row per target.

Every number comes from the result file the row names (never typed here). What this file decides is which
result is a target's *current* figure: the latest run of the shipped configuration on an idle machine, one row
per machine kind where the target depends on the arithmetic (a CPU with native bf16 runs ``precision: auto`` in
bf16 + channels_last, one without in float32). A new measurement of a target replaces its file name here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    B_OVER_A_MIN,
    B_OVER_C_MIN,
    BATCH_OVER_BARE_MAX,
    LINEARITY_TOLERANCE,
    PATCH_COST_MAX,
    markdown_table,
    verdict,
)

Result = dict[str, Any]
#: A measure reads its result files (in the order given) and returns the measured text and whether it is met.
Measure = Callable[[Sequence[Result]], tuple[str, bool | None]]


@dataclass(frozen=True)
class Target:
    """One target of an issue and the result files that hold its current figure."""

    issue: int
    target: str
    files: tuple[str, ...]
    measure: Measure


def _mean_dice(minimum: float | None, *, per_class: bool = False) -> Measure:
    """Mean Dice over folds (``minimum``: the target; ``None``: a figure to report, no verdict)."""

    def measure(rs: Sequence[Result]) -> tuple[str, bool | None]:
        r = rs[0]
        summary = r["summary"][r["primary_evaluation"]]
        md = summary["mean_dice"]
        folds = f"{len(r.get('folds_done', []))}/{r.get('n_folds')} folds"
        classes = "; " + ", ".join(f"{c} {v['mean']:.3f}" for c, v in summary["per_class"].items()) if per_class else ""
        text = f"{md['mean']:.3f} ± {md['std']:.3f} ({folds}, {r.get('minutes'):g} min each{classes})"
        return text, None if minimum is None else md["mean"] >= minimum

    return measure


def _train_ratio(mode: str, key: str, minimum: float) -> Measure:
    """A training speed ratio to 3 decimals (near a target 2 decimals would round a miss up to it), with the
    spread of loop / bare step over the interleaved rounds where the result has them."""

    def measure(rs: Sequence[Result]) -> tuple[str, bool | None]:
        row = next(t for t in rs[0]["train"] if t["mode"] == mode)
        a = row.get("a_bare_step", {}).get("slices_per_s_per_round")
        b = row.get("b_medseg_loop", {}).get("slices_per_s_per_round")
        spread = ""
        if key == "b_over_a" and a and b and len(a) == len(b):
            per_round = [y / x for x, y in zip(a, b, strict=True)]
            spread = f"; rounds {min(per_round):.2f}-{max(per_round):.2f}"
        return f"{row[key]:.3f} ({mode}{spread})", row[key] >= minimum

    return measure


def _batch_over_bare(mode: str) -> Measure:
    def measure(rs: Sequence[Result]) -> tuple[str, bool | None]:
        row = next(p for p in rs[0]["predict"] if p["mode"] == mode)
        mode_text = f"{mode}: {row['precision']}{' + channels_last' if row['channels_last'] else ''}"
        ratio = row["batch_over_bare"]
        return f"{ratio:.2f} ({mode_text}; {row['volumes_per_s']:.2f} volumes/s)", ratio <= BATCH_OVER_BARE_MAX

    return measure


def _large_volume_rss(rs: Sequence[Result]) -> tuple[str, bool | None]:
    case = max(rs[0]["cases"], key=lambda c: int(np.prod(c["shape"])))
    peak, limit = case["peak_rss_gib"], case["rss_target_gib"]
    shape = " x ".join(str(v) for v in case["shape"])
    return f"{peak:.2f} GiB at {shape} (limit {limit:.2f})", peak <= limit


def _linearity(rs: Sequence[Result]) -> tuple[str, bool | None]:
    lin = rs[0]["linearity"]
    ratio = lin["per_slice_ratio"]
    return f"{ratio:.3f} (N = {lin['to_slices']} over {lin['from_slices']})", abs(ratio - 1) <= LINEARITY_TOLERANCE


def _pooled_gap(rs: Sequence[Result]) -> tuple[str, bool | None]:
    def pooled(key: str) -> float:
        return float(np.mean([np.mean(row[key]) for r in rs for row in r["per_case"].values()]))

    gap = pooled("ceiling") - pooled("plan")
    centres = pooled("ceiling_centres") - pooled("plan")
    n = sum(len(r["per_case"]) for r in rs)
    text = f"{gap:.4f} over {n} cases (at the coarse voxel centres: {centres:.4f})"
    return text, gap <= rs[0].get("target_gap", 0.005)


def _patch_cost(rs: Sequence[Result]) -> tuple[str, bool | None]:
    la, hippo = (r["train"][0] for r in rs)
    ratio = hippo["b_medseg_loop"]["slices_per_s"] / la["b_medseg_loop"]["slices_per_s"]
    rates = f"{la['b_medseg_loop']['slices_per_s']:.1f} vs {hippo['b_medseg_loop']['slices_per_s']:.1f} slices/s"
    return f"{ratio:.2f} ({rates})", ratio <= PATCH_COST_MAX


def _gpu(rs: Sequence[Result]) -> tuple[str, bool | None]:
    return ("measured", True) if rs else ("not measured: no GPU run has come back", None)


#: The current figure of each target of the open issues (15: speed and memory; 17: any dataset).
TARGETS: tuple[Target, ...] = (
    Target(
        15,
        f"training loop / bare step >= {B_OVER_A_MIN} (fp32), CPU with native bf16",
        ("speed_native_bf16_14e88c3.json",),
        _train_ratio("fp32", "b_over_a", B_OVER_A_MIN),
    ),
    Target(
        15,
        f"training loop / bare step >= {B_OVER_A_MIN} (bf16 + channels_last), CPU with native bf16",
        ("speed_native_bf16_14e88c3.json",),
        _train_ratio("bf16_cl", "b_over_a", B_OVER_A_MIN),
    ),
    Target(
        15,
        f"training loop / bare step >= {B_OVER_A_MIN} (fp32), CPU without native bf16",
        ("speed.json",),
        _train_ratio("fp32", "b_over_a", B_OVER_A_MIN),
    ),
    Target(
        15,
        f"training loop / plain MONAI feed >= {B_OVER_C_MIN} (bf16 + channels_last)",
        ("speed_native_bf16_14e88c3.json",),
        _train_ratio("bf16_cl", "b_over_c", B_OVER_C_MIN),
    ),
    Target(
        15,
        "512 x 512 x 400 prediction, base 32, fp32: peak RSS <= 1.5 GiB + 3 x the scan",
        ("large_volume_fp32_native_bf16_cpu_factor11.json",),
        _large_volume_rss,
    ),
    Target(
        15,
        f"the same: time per slice from N = 100 to 400 within {LINEARITY_TOLERANCE:.0%}",
        ("large_volume_fp32_native_bf16_cpu_factor11.json",),
        _linearity,
    ),
    Target(
        15,
        f"hippocampus batch prediction / bare forward <= {BATCH_OVER_BARE_MAX} (`fast`: what `precision: auto` "
        "picks), CPU without native bf16",
        ("speed.json",),
        _batch_over_bare("fast"),
    ),
    Target(
        15,
        "the same on a CPU with native bf16 (`fast`: bf16 + channels_last)",
        ("speed_predict_hippo_native_bf16_05dccd4.json",),
        _batch_over_bare("fast"),
    ),
    Target(
        15,
        f"LA2018 batch prediction / bare forward <= {BATCH_OVER_BARE_MAX} (`fast`), CPU with native bf16",
        ("speed_predict_la2018_native_bf16_qc_box.json",),
        _batch_over_bare("fast"),
    ),
    Target(
        15,
        "the same in fp32, CPU with native bf16",
        ("speed_predict_la2018_native_bf16_qc_box.json",),
        _batch_over_bare("fp32"),
    ),
    Target(15, "GPU check run on a lent GPU", (), _gpu),
    Target(
        17,
        "hippocampus 5-fold CV, 10 min a fold, stays >= 0.885 (CPU with native bf16)",
        ("quality_hippo_10min_bf16_5fold_batchcut.json",),
        _mean_dice(0.885),
    ),
    Target(
        17,
        "the same on a CPU without native bf16",
        ("quality_hippo_10min_fp32_a285cc5.json",),
        _mean_dice(0.885),
    ),
    Target(
        17,
        "LA2018 5-fold CV, 10 min a fold: >= 0.90 (CPU with native bf16 and AMX)",
        ("quality_la2018_bf16_5fold_88e5521.json",),
        _mean_dice(0.90),
    ),
    Target(
        17,
        "the same on a CPU with native bf16 but no AMX (AVX512-BF16 only: 11-14 epochs a fold, not 19)",
        ("quality_la2018_amd_bf16_5fold_6aea6cc.json",),
        _mean_dice(0.90),
    ),
    Target(
        17,
        "the same on a CPU without native bf16",
        ("quality_la2018_1mm_curve03_heap.json",),
        _mean_dice(0.90),
    ),
    Target(
        17,
        "mixed spacing: 1 mm model on 1.5 x 1.5 x 1 mm scans, ceiling - plan <= 0.005 (5 folds pooled)",
        tuple(f"mixed_spacing_mixed_cv25ep_bf16_fold{k}.json" for k in range(5)),
        _pooled_gap,
    ),
    Target(
        17,
        "the same models, coarse labels and ceiling resampled as medseg resamples labels (one-hot, linear, argmax "
        "at the coarse centres) instead of nearest neighbour",
        tuple(f"mixed_spacing_mixed_cv25ep_bf16_linear_labels_fold{k}.json" for k in range(5)),
        _pooled_gap,
    ),
    Target(
        17,
        "BraTS (FLAIR + T1c per case folder, 6 cases): a 2-channel model trains and predicts end to end; "
        "per-class Dice reported, no target",
        ("quality_brats_folders_2min.json",),
        _mean_dice(None, per_class=True),
    ),
    Target(
        17,
        f"LA2018 training step per slice within {PATCH_COST_MAX}x of a hippocampus step of equal patch pixels",
        ("patch_cost_la2018.json", "patch_cost_hippocampus_176x128.json"),
        _patch_cost,
    ),
)


def target_status_section(out_dir: Path, targets: Sequence[Target] = TARGETS) -> list[str]:
    """The Markdown lines of the section (a row says so when its result file is missing or lacks the figure)."""
    rows = []
    for t in targets:
        paths = [out_dir / f for f in t.files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            rows.append([str(t.issue), t.target, f"result missing: {', '.join(missing)}", "–", "–"])
            continue
        results = [json.loads(p.read_text()) for p in paths]
        try:
            measured, ok = t.measure(results)
        except (KeyError, IndexError, StopIteration, TypeError):  # another run's file under the current name
            measured, ok = f"not in {', '.join(t.files)}: another kind of run", None
        machine = results[0].get("machine", {}) if results else {}
        where = (
            f"{machine.get('cpu', '?')}{', native bf16' if machine.get('cpu_native_bf16') else ''}, "
            f"`{machine.get('git_commit', '?')}`"
            if results
            else "–"
        )
        files = ", ".join(f"`{p.name}`" for p in paths[:2]) + (" …" if len(paths) > 2 else "")
        rows.append([str(t.issue), t.target, measured, verdict(ok), f"{files} ({where})" if files else "–"])
    return [
        "## Where the open issues' targets stand",
        "",
        "The current figure of each target, from the result file named beside it (the sections below hold every "
        "run, older and exploratory ones included, with its command). Which file is current is set in "
        "`benchmarks/target_status.py`.",
        "",
        markdown_table(["issue", "target", "measured", "verdict", "result (machine, commit)"], rows),
        "",
    ]
