"""Renders ``benchmarks/RESULTS.md`` from the measured JSON files in ``benchmarks/out/`` (numbers are never typed in).

::

    python benchmarks/report.py                    # rewrite benchmarks/RESULTS.md
    python benchmarks/report.py --check            # exit 1 if RESULTS.md is not what the JSON files give

Reads ``quality_*.json`` (from ``quality.py``) and ``speed*.json`` (from ``speed.py``). The text around the numbers
is fixed here; prose about the choices the numbers justify goes into ``benchmarks/choices.md``, which is
included verbatim (it should name result tags, not copy numbers). The output depends only on the JSON files,
so ``--check`` is stable.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    B_OVER_A_MIN,
    B_OVER_C_MIN,
    BATCH_OVER_BARE_MAX,
    LINEARITY_TOLERANCE,
    OUT_DIR,
    PATCH_COST_MAX,
    REPO,
    fmt,
    fmt_mean_std,
    markdown_table,
    verdict,
)
from benchmarks.target_status import target_status_section

RESULTS = REPO / "benchmarks" / "RESULTS.md"
CHOICES = REPO / "benchmarks" / "choices.md"

#: Issue 7's quality targets: training minutes per fold -> mean Dice over folds it must reach.
QUALITY_TARGETS = {10.0: 0.86, 30.0: 0.88}
#: Targets of other data sets (folder name of data.root -> {minutes: mean Dice}); issue 17 for LA2018.
DATASET_TARGETS = {"LA2018_UAMT": {10.0: 0.90}}
#: The architecture comparisons (issue 13): each a set of quality runs (file-name patterns in ``out/``) made on one
#: machine with the same code, so the paired differences are the architecture's. A 10-minute budget buys about
#: 35 hippocampus epochs on a CPU with native bf16 and 11 on one without (LA2018's 7x larger patches: 2), and the
#: augmentation changed in between (f9a3476), so runs from different groups are never paired.
#: Each group: (title, the dataset folder its runs used, file-name patterns).
ARCHITECTURE_GROUPS: list[tuple[str, str, list[str]]] = [
    (
        "Hippocampus, CPU with native bf16 (bf16 + channels_last), per-sample augmentation (before f9a3476)",
        "Task04_Hippocampus",
        [
            "quality_hippo_unet_auto_10min_sampleaug.json",
            "quality_hippo_attention_unet_fold0_10min.json",
            "quality_hippo_residual_unet_fold0_10min.json",
            "quality_hippo_unet_plus_plus_fold0_10min.json",
        ],
    ),
    (
        "Hippocampus, CPU without native bf16 (float32 + channels_last), batch augmentation",
        "Task04_Hippocampus",
        ["quality_hippo_*_10min_float32.json"],
    ),
    (
        "LA2018, CPU without native bf16 (float32 + channels_last), batch augmentation",
        "LA2018_UAMT",
        ["quality_la2018_*_10min_float32.json"],
    ),
]
#: RSS growth (MiB) of batch prediction between 10 scans and the end that still counts as "no growth"
#: (allocator noise; a leak of one volume per scan would be hundreds of MiB over 91 scans).
RSS_GROWTH_TOLERANCE_MB = 32.0


def _load(folder: Path, pattern: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(folder.glob(pattern)):
        try:
            out.append((path.name, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as err:
            print(f"report.py: skipping {path}: {err}", file=sys.stderr)
    return out


def _machine_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    if not results:
        return ["## Machine", "", "No measurement yet.", ""]
    rows = []
    busy = []
    for name, r in results:
        m = r.get("machine", {})
        load = m.get("load_avg_1_5_15")
        cpus = m.get("usable_cpus")
        if load and cpus and load[0] > cpus:
            busy.append(name)
        rows.append(
            [
                f"`{name}`",
                m.get("date_utc", "–"),
                m.get("cpu", "–"),
                str(cpus if cpus is not None else "–"),
                f"{m['memory_gib']} GiB" if "memory_gib" in m else "–",
                m.get("torch", "–"),
                m.get("monai", "–"),
                {True: "yes", False: "no"}.get(m.get("cpu_native_bf16"), "–"),
                m.get("cuda") or "none",
                " / ".join(str(v) for v in load) if load else "–",
                f"`{m.get('git_commit', '–')}`",
            ]
        )
    headers = ["result", "date (UTC)", "CPU", "cores", "memory", "torch", "MONAI", "native bf16", "GPU", "load 1/5/15"]
    lines = ["## Machine", "", markdown_table([*headers, "commit"], rows), ""]
    if busy:
        lines += [
            f"Load average above the core count when these started: {', '.join(busy)}. Their timings include "
            "other processes' work; rerun them on an idle machine before drawing conclusions from speed numbers.",
            "",
        ]
    return lines


def _quality_rows(name: str, r: dict[str, Any]) -> list[list[str]]:
    rows = []
    classes = r.get("classes", [])[1:]
    minutes = float(r.get("minutes", 0))
    target = DATASET_TARGETS.get(Path(str(r.get("data_root", ""))).name, QUALITY_TARGETS).get(minutes)
    done = r.get("folds_done", [])
    folds_text = f"{len(done)}/{r.get('n_folds', '?')}" + ("" if r.get("complete") else " (incomplete)")
    for which, s in r.get("summary", {}).items():
        # The file's name, not its tag: a rerun under the same tag (another machine, a killed run) stays apart.
        stem = name.removeprefix("quality_").removesuffix(".json")
        label = stem + ("" if which == r.get("primary_evaluation") else f" ({which}.pt)")
        md = s["mean_dice"]
        mean = md.get("mean")
        ok = None if target is None or mean is None or which != r.get("primary_evaluation") else mean >= target
        cell = verdict(ok)
        if ok is False:
            cell += f" by {target - mean:.3f}"
        if ok is not None and len(done) < int(r.get("n_folds", 0) or 0):
            cell += f" on {len(done)} of {r.get('n_folds')} folds only (not a CV figure)"
        rows.append(
            [
                f"`{label}`",
                r.get("method", "–"),
                f"{minutes:g}",
                folds_text,
                str(s.get("n_cases", "–")),
                *[fmt_mean_std(s["per_class"][c]["mean"], s["per_class"][c]["std"]) for c in classes],
                f"**{fmt_mean_std(mean, md.get('std'))}**",
                fmt(target) if target is not None and which == r.get("primary_evaluation") else "–",
                cell,
                *[fmt(s["per_class"][c]["hd95_mm_mean"], 2) for c in classes],
                ", ".join(f"`{o}`" for o in r.get("overrides", [])) or "–",
            ]
        )
    return rows


def _quality_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["## Quality: k-fold cross-validation by case", ""]
    if not results:
        return [*lines, "No quality measurement yet: run `benchmarks/quality.py` (see README.md).", ""]
    lines += [
        "Each fold trains on the other folds' cases for the stated wall-clock budget, predicts its own cases as "
        "whole volumes (masks written and read back) and scores them: Dice per class per case, averaged per fold; "
        "the table gives the mean ± standard deviation over folds (HD95 in mm: mean over folds). medseg rows use "
        "`best.pt` (what a run predicts with; chosen by Dice on the fold's own validation cases, so slightly "
        "optimistic); `(last.pt)` rows are the final weights, with no selection on held-out cases. The MONAI "
        "baseline uses its final weights. Hippocampus targets (issue 7): mean Dice >= 0.86 with 10 minutes, >= 0.88 "
        "with 30; LA2018 target (issue 17): >= 0.90 with 10 minutes. One table per data set.",
        "",
    ]
    # One table per data set and per set of scored classes: a data set scored by its classes and by overlapping
    # regions (quality.py --score-regions, or a region run) gives two tables.
    datasets: dict[tuple[str, tuple[str, ...]], list[tuple[str, dict[str, Any]]]] = {}
    for name, r in results:
        key = (Path(str(r.get("data_root", "?"))).name, tuple(r.get("classes", [])))
        datasets.setdefault(key, []).append((name, r))
    for (dataset, classes), group in datasets.items():
        several = sum(1 for d, _ in datasets if d == dataset) > 1
        title = f"{dataset}, scored by {', '.join(classes[1:])}" if several else dataset
        lines += [f"### {title}", "", *_quality_dataset(group)]
    return lines


#: Tags ending so are the complete-label reference of a sparse-annotation study (``benchmarks/sparse_labels.py``).
SPARSE_PAIR_SUFFIX = "_sparse_pair"


def _is_sparse_study(name: str, r: dict[str, Any]) -> bool:
    return "sparse_labels" in r or str(r.get("tag", "")).endswith(SPARSE_PAIR_SUFFIX)


def _listed(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _sparse_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    if not results:
        return []
    lines = [
        "## Sparse annotation: every k-th slice drawn",
        "",
        "What drawing fewer slices costs. `benchmarks/sparse_labels.py` keeps the label of every k-th slice of each "
        "training case; the other slices hold the `ignore` label (medseg leaves them out of training: "
        "`data.ignore_label`), or 0 (what a user without an ignore label would do: the unannotated structure is "
        "taught as background). Every run is scored on the held-out cases' complete labels "
        "(`quality.py --ground-truth`). Epoch-bounded so the figures do not depend on the machine: with every "
        "k-th slice, an epoch draws one k-th of the slices, so the ignore runs train k times the epochs for the "
        "same number of steps.",
        "",
    ]
    ordered = sorted(results, key=lambda nr: (nr[1].get("sparse_labels", {}).get("every", 1), nr[0]))
    classes = ordered[0][1].get("classes", [])[1:]
    headers = ["run", "labels", "annotated slices", "epochs", "folds", *[f"Dice {c}" for c in classes]]
    headers += ["mean Dice", "command"]
    rows = []
    for name, r in ordered:
        sp = r.get("sparse_labels")
        labels = "complete" if sp is None else f"1 slice in {sp['every']} kept, the rest {sp['unannotated']}"
        s = r.get("summary", {}).get(r.get("primary_evaluation", "best"), {})
        md = s.get("mean_dice", {})
        epochs = sorted({int(f["train"]["epochs"]) for f in r.get("folds", []) if f["train"].get("epochs")})
        rows.append(
            [
                f"`{name.removeprefix('quality_').removesuffix('.json')}`",
                labels,
                "100 %" if sp is None else f"{100 * sp['annotated_slice_share']:.1f} %",
                ", ".join(str(e) for e in epochs),
                f"{len(r.get('folds_done', []))}/{r.get('n_folds', '?')} (folds {_listed(r.get('fold_subset', []))})",
                *[fmt_mean_std(s["per_class"][c]["mean"], s["per_class"][c]["std"]) for c in classes],
                f"**{fmt_mean_std(md.get('mean'), md.get('std'))}**",
                f"`{r.get('command', '')}`",
            ]
        )
    return [*lines, markdown_table(headers, rows), ""]


def _quality_dataset(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    ordered = sorted(results, key=lambda nr: (nr[1].get("method") != "monai", float(nr[1].get("minutes", 0)), nr[0]))
    classes = ordered[0][1].get("classes", [])[1:]
    headers = ["run", "method", "min/fold", "folds", "cases", *[f"Dice {c}" for c in classes], "mean Dice"]
    headers += ["target", "target met", *[f"HD95 {c} (mm)" for c in classes], "overrides"]
    rows = [row for name, r in ordered for row in _quality_rows(name, r)]
    lines += [markdown_table(headers, rows), ""]
    lines += ["Per fold, each run folded (click to open), with its command:", ""]
    for name, r in ordered:
        primary = r.get("primary_evaluation", "best")
        fold_rows = []
        for f in r.get("folds", []):
            ev = f["evaluations"][primary]
            tr = f["train"]
            budget = tr.get("epoch_seconds_sum", tr.get("train_seconds"))
            count = f"{tr['epochs']} epochs ({tr.get('stop_reason', '')})" if "epochs" in tr else f"{tr['steps']} steps"
            fold_rows.append(
                [
                    str(f["fold"]),
                    str(len(ev["per_case"])),
                    fmt(budget, 0),
                    count,
                    fmt(tr.get("slices_per_s_mean", tr.get("slices_per_s")), 1),
                    *[fmt(ev["per_class"][c]["dice_mean"]) for c in classes],
                    fmt(ev["mean_dice"]),
                    fmt(ev.get("volumes_per_s"), 2),
                ]
            )
        heads = [
            "fold",
            "cases",
            "train s",
            "trained",
            "slices/s",
            *[f"Dice {c}" for c in classes],
            "mean",
            "pred vol/s",
        ]
        lines += [
            f"<details><summary><code>{r['tag']}</code> ({name}, {primary})</summary>",
            "",
            f"`{r.get('command', '')}`",
            "",
            markdown_table(heads, fold_rows),
            "",
        ]
        lines += [line for note in r.get("notes", []) for line in (f"Note: {note}", "")]
        lines += ["</details>", ""]
    return lines


def _cpu_kind(machine: dict[str, Any]) -> tuple[str, bool]:
    """The CPU model and whether it has native bf16: results from one kind compare in speed, others do not."""
    return str(machine.get("cpu", "?")), bool(machine.get("cpu_native_bf16"))


def _speed_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["## Training speed", ""]
    if not results:
        return [*lines, "No speed measurement yet: run `benchmarks/speed.py` (see README.md).", ""]
    # ``speed.json`` is the current measurement; other ``speed_*.json`` (e.g. the code before a change, on the same
    # machine) are shown after it, with the current loop's speed-up over theirs.
    current = [(n, r) for n, r in results if n == "speed.json"]
    name, r = current[0] if current else results[-1]
    lines += [
        f"From `{name}`: `{r.get('command', '')}`. (a) the bare model step (forward, loss, backward, clipping, "
        "AdamW) on one ready batch, the ceiling; (b) medseg's own training loop and DataLoader on real slices with "
        "augmentation; (c) the same model fed by a plain MONAI `Dataset` + `DataLoader` with the equivalent "
        "transforms. Slices per second; data wait = share of the loop spent waiting for the next batch. "
        f"Targets: (b)/(a) >= {B_OVER_A_MIN}, (b)/(c) >= {B_OVER_C_MIN}.",
        "",
    ]
    lines += _train_table(r)
    now = {t["mode"]: t["b_medseg_loop"]["slices_per_s"] for t in r.get("train", [])}
    others = [(n, o) for n, o in results if n != name and (o.get("train") or o.get("predict"))]
    if others:
        lines += [
            f"The other speed results, each folded (click to open): earlier code or other settings. A loop speed-up "
            f"over `{name}` is given only for results from the same kind of CPU; across CPUs only the ratios within "
            "one result compare.",
            "",
        ]
    for other_name, other in others:
        m = other.get("machine", {})
        same_cpu = _cpu_kind(m) == _cpu_kind(r.get("machine", {}))
        summary = f"{m.get('cpu', '?')}{', native bf16' if m.get('cpu_native_bf16') else ''}, {m.get('date_utc', '?')}"
        lines += [
            f"<details><summary><code>{other_name}</code> ({summary})</summary>",
            "",
            f"`{other.get('command', '')}`",
            "",
        ]
        if other.get("train"):
            lines += _train_table(other)
            for t in other["train"]:
                then = t["b_medseg_loop"]["slices_per_s"]
                if same_cpu and t["mode"] in now and then:
                    lines.append(
                        f"- `{t['mode']}`: the loop (b) of `{name}` runs {now[t['mode']] / then:.2f}x as fast as "
                        "this one."
                    )
            lines.append("")
        if other.get("predict"):
            lines += _predict_table(other, heading="Its batch prediction:")
        lines += ["</details>", ""]
    lines += _predict_table(r)
    return lines


def _train_table(r: dict[str, Any]) -> list[str]:
    """The a/b/c training table of one speed.py result, with its notes."""
    lines: list[str] = []
    rows = []
    for t in r.get("train", []):
        b_a, b_c = t.get("b_over_a"), t.get("b_over_c")
        rows.append(
            [
                t["mode"],
                t["precision"] + (" + channels_last" if t["channels_last"] else ""),
                f"{t['batch_size']} × {t['patch_hw'][0]}×{t['patch_hw'][1]}",
                str(t["num_workers"]),
                fmt(t["a_bare_step"]["slices_per_s"], 1),
                fmt(t["b_medseg_loop"]["slices_per_s"], 1),
                fmt(t["c_monai_loader"]["slices_per_s"], 1),
                f"{fmt(b_a, 2)} ({verdict(None if b_a is None else b_a >= B_OVER_A_MIN)})",
                f"{fmt(b_c, 2)} ({verdict(None if b_c is None else b_c >= B_OVER_C_MIN)})",
                f"{100 * t['b_medseg_loop']['data_wait_share']:.0f}%",
                f"{100 * t['c_monai_loader']['data_wait_share']:.0f}%",
                fmt(t.get("peak_rss_train_mb"), 0),
            ]
        )
    headers = ["mode", "arithmetic", "batch", "workers", "(a) bare", "(b) medseg", "(c) MONAI", "(b)/(a)", "(b)/(c)"]
    headers += ["data wait (b)", "data wait (c)", "peak RSS MiB"]
    lines += [markdown_table(headers, rows), ""]
    train = {t["mode"]: t for t in r.get("train", [])}
    if "fp32" in train:
        ref = train["fp32"]["b_medseg_loop"]["slices_per_s"]
        for mode, t in train.items():
            if mode != "fp32" and ref:
                lines.append(
                    f"- `{mode}` trains {t['b_medseg_loop']['slices_per_s'] / ref:.2f}x as fast as `fp32` (loop (b))."
                )
        lines.append("")
    for note in r.get("notes", []):
        lines += [f"Note: {note}.", ""]
    return lines


def _predict_table(r: dict[str, Any], heading: str = "## Prediction speed and memory") -> list[str]:
    """The batch-prediction section of one speed.py result, under ``heading``."""
    lines = [heading, ""]
    pm = r.get("prediction_model", {})
    model_text = (
        f"a model trained for one epoch on {pm.get('cases')} cases by speed.py"
        if pm.get("trained_here")
        else f"`{pm.get('checkpoint', '?')}`"
    )
    # Results before the bare pass took Predictor.network_input's slices were sliced at the scan's own spacing.
    prepared = (
        "normalised and resampled to the plan's spacing as the predictor does"
        if any(p.get("bare_input") == "network_input" for p in r.get("predict", []))
        else "normalised at the scan's own spacing"
    )
    margins = {p["heap_trim_margin_mb"] for p in r.get("predict", []) if p.get("heap_trim_margin_mb") is not None}
    margin = " / ".join(f"{m:.0f} MiB" for m in sorted(margins)) or "`medseg.inference.memory.DEFAULT_MARGIN_MB`"
    lines += [
        "Batch prediction of a folder of scans with `predict_folder` (reading, normalising, predicting, "
        "postprocessing and writing each mask) vs the bare forward pass of the model over the same slices (read, "
        f"{prepared}, sliced and padded beforehand). batch/bare is the batch run's wall time per scan over the "
        "bare pass's "
        f"(target <= {BATCH_OVER_BARE_MAX}). RSS sampled during the run against the number of masks written: "
        "after 10 scans vs at the end of the folder, then after a second pass over the same folder. Target: no "
        "growth with the number of scans, up to "
        f"{RSS_GROWTH_TOLERANCE_MB:.0f} MiB counted as noise: where two more passes were run (`later-pass peak`), "
        "neither may peak above the first pass (the heap trimmer lets the resident set wander up to its margin, "
        f"{margin}, before it trims, so snapshots differ by that much without a leak; a leak raises every later "
        "pass's peak); in older results, neither growth column may exceed the noise. "
        f"Model: {model_text}.",
        "",
    ]
    rows = []
    for p in r.get("predict", []):
        ratio = p.get("batch_over_bare")
        growth = p.get("rss_growth_10_to_end_mb")
        growth2 = p.get("rss_growth_second_pass_mb")
        later_peak = p.get("rss_peak_growth_later_passes_mb")
        grew = [later_peak] if later_peak is not None else [g for g in (growth, growth2) if g is not None]
        rows.append(
            [
                p["mode"],
                p["precision"]
                + (" + channels_last" if p["channels_last"] else "")
                + (" + TTA" if p["tta_flips"] else ""),
                f"{p['scans_ok']}" + (f" ({p['scans_failed']} failed)" if p.get("scans_failed") else ""),
                fmt(p.get("volumes_per_s"), 2),
                fmt(p.get("bare_volumes_per_s"), 2),
                f"{fmt(ratio, 2)} ({verdict(None if ratio is None else ratio <= BATCH_OVER_BARE_MAX)})",
                fmt(p.get("peak_rss_predict_mb"), 0),
                fmt(p.get("rss_after_10_scans_mb"), 0),
                fmt(p.get("rss_end_mb"), 0),
                fmt(growth, 1),
                fmt(p.get("rss_end_second_pass_mb"), 0),
                fmt(growth2, 1),
                fmt(later_peak, 1),
                verdict(max(grew) <= RSS_GROWTH_TOLERANCE_MB if grew else None),
            ]
        )
    headers = ["mode", "arithmetic", "scans", "volumes/s", "bare volumes/s", "batch/bare", "peak RSS MiB"]
    headers += ["RSS after 10 scans", "RSS at end", "growth MiB", "RSS after 2nd pass", "2nd-pass growth"]
    headers += ["later-pass peak", "no growth"]
    lines += [markdown_table(headers, rows), ""]
    for p in r.get("predict", []):
        ratios = [x["batch_over_bare"] for x in p.get("rounds", []) if x.get("batch_over_bare") is not None]
        if len(ratios) > 1:  # runs before interleaved rounds timed one pass of each
            listed = " / ".join(f"{x:.2f}" for x in ratios)
            lines.append(f"- `{p['mode']}`: batch/bare per interleaved round {listed}; the table gives their median.")
    if any(len(p.get("rounds", [])) > 1 for p in r.get("predict", [])):
        lines.append("")
    for note in r.get("predict_notes", []):
        lines += [f"Note: {note}", ""]
    return lines


def _engines_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Issue 15: eager PyTorch vs torch.compile vs ONNX Runtime on the same slices (``benchmarks/engines.py``)."""
    if not results:
        return []
    lines = [
        "## Inference engines on CPU",
        "",
        "From `engines_*.json` (`benchmarks/engines.py`): the bare forward pass of a trained model over the slices "
        "of real scans (read, normalised, sliced and padded beforehand), same batches, timed in interleaved "
        "rounds. `eager_fast` is the default (`precision: auto`, `channels_last: auto`); `compile_*` run the "
        "model under `torch.compile` (first pass = compiling every input shape); `onnxruntime_fp32` runs the "
        "exported model with ONNX Runtime's CPU provider; `bn_unfolded_*` keep the checkpoint's BatchNorm layers, "
        "which the predictor folds into the convolutions since 7149d43 (the other rows of files from then on run "
        "the folded model, those of older files the unfolded one); `relu_unfused_*` are folded but run each "
        "convolution and its ReLU as two kernels, as every row did before the fused ConvReLU (files from then on "
        "run it in their other eager rows). Masks are compared voxel by voxel with eager "
        "fp32. "
        "Rule (issue 15): an engine becomes an `inference.engine` option only if it is at least "
        "1.2x as fast as the default.",
        "",
    ]
    for name, r in results:
        lines += [f"From `{name}`: `{r.get('command', '')}`; {r.get('scans')} scans, {r.get('slices')} slices.", ""]
        rows = [
            [
                e["engine"],
                fmt(e["slices_per_s"], 1),
                fmt(e["speedup_vs_eager_fp32"], 2),
                fmt(e.get("speedup_vs_default"), 2),
                fmt(e["first_pass_seconds"], 1),
                f"{100 * e['voxel_agreement_vs_fp32']:.3f}%",
                fmt(e["max_prob_diff_vs_fp32"], 4),
            ]
            for e in r.get("engines", [])
        ]
        headers = ["engine", "slices/s", "x eager fp32", "x default", "first pass (s)", "voxels = fp32", "max abs Δp"]
        kept = r.get("engines_meeting_the_rule", [])
        lines += [
            markdown_table(headers, rows),
            "",
            f"- Engines at least {r.get('keep_speedup')}x as fast as the default: {', '.join(kept) or 'none'}.",
            "",
        ]
    return lines


def _architecture_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Issue 13: each architecture against ``unet`` on the same folds (same split, budget, data and machine)."""
    tables: list[str] = []
    for title, dataset, patterns in ARCHITECTURE_GROUPS:
        runs = [
            (name, r)
            for name, r in results
            if any(fnmatch.fnmatch(name, p) for p in patterns)
            and r.get("method") == "medseg"
            and Path(str(r.get("data_root", ""))).name == dataset
        ]
        tables += _architecture_table(title, runs)
    if not tables:
        return []
    return [
        "## Architectures (issue 13)",
        "",
        "Each architecture on the folds of a dataset it has run, against `unet` on the same folds (same split, "
        "10-minute budget, data, plan, code and machine; one table per machine and code, since the budget buys "
        "a different number of epochs on each): mean Dice over those folds (`best.pt`), the paired difference "
        "to `unet`, HD95 (mean over classes), training slices/s and epochs reached. The default stays `unet` "
        "unless a variant wins by more than the fold spread.",
        "",
        *tables,
    ]


def _architecture_table(title: str, results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """One group's architecture table (empty unless ``unet`` and at least one variant are in it)."""
    by_arch: dict[str, dict[int, dict[str, Any]]] = {}
    commands: dict[str, str] = {}
    for name, r in results:
        for f in r.get("folds", []):
            arch = f.get("train", {}).get("architecture")
            if arch and "best" in f.get("evaluations", {}):
                by_arch.setdefault(arch, {})[int(f["fold"])] = f
                commands[arch] = f"`{name}`"
    if "unet" not in by_arch or len(by_arch) < 2:
        return []
    unet = by_arch["unet"]
    unet_std = (
        float(np.std([f["evaluations"]["best"]["mean_dice"] for f in unet.values()], ddof=1)) if len(unet) > 1 else None
    )
    rows = []
    for arch, folds in sorted(by_arch.items(), key=lambda kv: (kv[0] != "unet", kv[0])):
        shared = sorted(set(folds) & set(unet))
        dice = [folds[k]["evaluations"]["best"]["mean_dice"] for k in shared]
        delta = [d - unet[k]["evaluations"]["best"]["mean_dice"] for d, k in zip(dice, shared, strict=True)]
        train = [folds[k]["train"] for k in shared]
        hd95 = [
            float(
                np.mean(
                    [
                        c.get("hd95_mm_mean", np.nan)
                        for c in folds[k]["evaluations"]["best"].get("per_class", {}).values()
                    ]
                )
            )
            for k in shared
        ]
        rows.append(
            [
                arch,
                ", ".join(str(k) for k in shared),
                f"{train[0].get('parameters', 0):,}" if train else "?",
                fmt(float(np.mean([t.get("slices_per_s_mean", np.nan) for t in train])), 1),
                fmt(float(np.mean([t.get("epochs", np.nan) for t in train])), 1),
                fmt(float(np.mean(dice)), 3),
                "–" if arch == "unet" else f"{float(np.mean(delta)):+.3f}",
                fmt(float(np.nanmean(hd95)), 2),
                commands[arch],
            ]
        )
    return [
        f"### {title}",
        "",
        *([f"`unet`'s SD over its {len(unet)} folds: {fmt(unet_std, 3)}.", ""] if unet_std is not None else []),
        markdown_table(
            [
                "architecture",
                "folds",
                "parameters",
                "slices/s",
                "epochs",
                "mean Dice",
                "vs unet",
                "HD95 (mm)",
                "result",
            ],
            rows,
        ),
        "",
    ]


def _inference_choices_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    if not results:
        return []
    lines = ["## Inference settings on the cross-validation models", ""]
    lines += [
        "From `inference_choices_*.json` (`benchmarks/inference_choices.py`): each fold's `best.pt` re-predicts "
        "the fold's own held-out cases with test-time flips off/on and postprocessing `auto` (as decided in "
        "training on the fold's validation cases) or off, or (`scales` files) with `inference.tta_scales` of one, "
        "three or five in-plane spacings around the plan's; scored as in the quality table (mean ± std over folds).",
        "",
    ]
    for name, r in results:
        summary: dict[str, Any] = r.get("summary", {})
        first: dict[str, Any] = next(iter(summary.values()), {})
        classes = list(first.get("per_class", {}))
        rows = [
            [
                variant,
                f"{fmt(v['mean_dice'])} ± {fmt(v['mean_dice_std'])}",
                *[fmt(v["per_class"][c]) for c in classes],
                fmt(v.get("volumes_per_s"), 2),
            ]
            for variant, v in summary.items()
        ]
        lines += [
            f"`{name}` (models of `{r.get('quality_result', '?')}`): `{r.get('command', '')}`",
            "",
            markdown_table(["variant", "mean Dice", *[f"Dice {c}" for c in classes], "pred vol/s"], rows),
            "",
        ]
        lines += [line for note in r.get("notes", []) for line in (f"Note: {note}", "")]
    return lines


def _loss_mode_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    if not results:
        return []
    lines = ["## Sigmoid or softmax by number of classes", ""]
    lines += [
        "From `loss_mode_*.json` (`benchmarks/loss_mode.py`): the `k` largest TotalSegmentator structures of one "
        "CT, cut into 8 crops, trained with `configs/hippocampus.yaml` for a fixed number of epochs in each mode; "
        "mean Dice of the 2 held-out crops (evaluation) and the best validation Dice. The crops share one patient: "
        "compare the modes at each `k`, not across `k`. `loss.mode: auto` follows this table "
        "(`medseg.models.head.resolve_mode`).",
        "",
    ]
    for name, r in results:
        runs: list[dict[str, Any]] = r.get("runs", [])
        modes = list(dict.fromkeys(run["mode"] for run in runs))
        rows = []
        for k in dict.fromkeys(run["classes"] for run in runs):
            by_mode = {run["mode"]: run for run in runs if run["classes"] == k}
            cells = [
                f"{fmt(by_mode[m].get('eval_mean_dice'))} ({fmt(by_mode[m].get('best_val_dice'))})"
                if m in by_mode
                else "–"
                for m in modes
            ]
            epochs = {by_mode[m].get("epochs") for m in by_mode}
            rows.append([str(k), *cells, " / ".join(str(e) for e in sorted(epochs, key=str))])
        lines += [
            f"`{name}`: `{r.get('command', '')}`",
            "",
            markdown_table(["classes", *(f"{m}: Dice (validation)" for m in modes), "epochs"], rows),
            "",
        ]
    return lines


def _qc_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    from benchmarks.qc_eval import bad_cases, roc_auc

    if not results:
        return []
    lines = ["## QC flags: do they find the bad masks?", ""]
    lines += [
        "From `qc_eval_*.json` (`benchmarks/qc_eval.py`): one fold of a split by case is held out as test cases; "
        "a model is trained, epoch-bounded, on the other cases (their own 80/20 split: the validation part picks "
        "the best epoch and gives QC its reference), then `predict_folder` predicts the test cases and one CT "
        "crop. AUC: how well `qc_score` ranks the bad test masks above the normal ones (0.5 = chance). "
        "Flagged: test cases with a `qc_flags` entry (default thresholds). One row per file (fold).",
        "",
    ]
    rows = []
    for name, r in results:
        s = r.get("setup", {})
        ood = r.get("ood") or {}
        rows.append(
            [
                f"`{name}`",
                f"{s.get('n_test')} (fold {s.get('fold')} of {s.get('folds')})",
                f"{s.get('n_train_and_val')}, {s.get('epochs')} epochs",
                fmt(r.get("mean_dice")),
                r.get("bad_rule", ""),
                f"{r.get('n_bad')}",
                fmt(r.get("auc")),
                f"{r.get('flagged_normal')} / {r.get('n_normal')}",
                f"{r.get('flagged_bad')} / {r.get('n_bad')}",
                "yes" if ood.get("qc_flags") else "no",
            ]
        )
    headers = ["result", "test cases", "trained on", "mean Dice", "bad =", "bad", "AUC", "normal flagged"]
    lines += [markdown_table([*headers, "bad flagged", "CT crop flagged"], rows), ""]
    commands = sorted({r.get("command", "") for _, r in results})
    lines += ["Commands: " + "; ".join(f"`{c}`" for c in commands), ""]
    if len(results) > 1:
        # Every test case of every fold, each scored by the model that never saw it.
        cases = [c for _, r in results for c in r.get("cases", [])]
        threshold = float(results[0][1].get("setup", {}).get("bad_dice", 0.8))
        bad, rule = bad_cases([c["dice"] for c in cases], threshold)
        aucs = [float(r["auc"]) for _, r in results if r.get("auc") is not None]
        flagged = [bool(c.get("qc_flags")) for c in cases]
        n_bad = sum(bad)
        pooled = roc_auc([float(c["qc_score"]) for c in cases], bad)
        mean_auc = f"{fmt(float(np.mean(aucs)))} ± {fmt(float(np.std(aucs, ddof=1)))}" if len(aucs) > 1 else "n/a"
        n_ct = sum(bool((r.get("ood") or {}).get("qc_flags")) for _, r in results)
        lines += [
            f"Over the {len(results)} results ({len(cases)} test cases, each predicted by a model that never saw it): "
            f"AUC per fold {mean_auc} (mean ± SD); pooled over all test cases ({rule}: {n_bad} bad) "
            f"AUC {fmt(pooled)}; normal cases flagged "
            f"{sum(f for f, b in zip(flagged, bad, strict=True) if not b)} / {len(cases) - n_bad}, bad cases flagged "
            f"{sum(f for f, b in zip(flagged, bad, strict=True) if b)} / {n_bad}; the CT crop flagged by "
            f"{n_ct} / {len(results)} models.",
            "",
        ]
    per_check: dict[str, list[float]] = {}
    for _, r in results:
        for k, v in (r.get("auc_per_check") or {}).items():
            if v is not None:
                per_check.setdefault(k, []).append(float(v))
    lines += [
        "AUC of each check's ratio alone (mean over results): "
        + ", ".join(f"{k} {fmt(float(np.mean(v)))}" for k, v in sorted(per_check.items())),
        "",
    ]
    return lines


def _large_volume_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["## Large-volume prediction", ""]
    if not results:
        return [*lines, "No large-volume measurement yet: run `benchmarks/large_volume.py` (see README.md).", ""]
    lines += [
        "A random-initialised UNet (base width in the command: 32 unless `--base`), fp32 unless the path says "
        "otherwise (`--precision auto`: what a user gets, bf16 + channels_last on a CPU with native bf16), "
        "`batch_size: auto` "
        "with the budget from the machine, each case once in its own process. Path `predict` = "
        "`Predictor.predict` (labels slab by slab), `qc` = `predict_with_confidence` (the same plus two float16 "
        "confidence maps: what a batch with QC runs), `probs` = `predict_with_proba` (the whole probability "
        "volume: `save_probabilities`, fractional SEG). Target: peak RSS <= 1.5 GiB + 3 x the scan's float32 "
        "size; the load average (1 min) at the start and end of each case shows how busy the machine was, so "
        "times are indicative. (Issue 15 states the target for N = 400 as 4.4 GiB = 1.5 + 3 x 0.98; a "
        "512 x 512 x 400 float32 scan is 0.39 GiB, so the formula gives 2.67 GiB.)",
        "",
    ]
    for name, r in results:
        m = r.get("machine", {})
        lines += [
            f"From `{name}`: `{r.get('command', '')}`; {m.get('cpu', '?')}, {m.get('usable_cpus', '?')} usable "
            f"CPUs, torch {m.get('torch', '?')}, commit `{m.get('git_commit') or m.get('commit') or '?'}`.",
            "",
        ]
        rows = []
        for c in r.get("cases", []):
            if "error" in c:
                rows.append([str(c.get("case")), "", "error", "", "", "", "", "", ""])
                continue
            arithmetic = c.get("arithmetic", "float32")
            peak, target = c.get("peak_rss_gib"), c.get("rss_target_gib")
            ok = None if peak is None or target is None else peak <= target
            load = f"{c['load_avg_start'][0]} -> {c['load_avg_end'][0]}"
            rows.append(
                [
                    c["case"],
                    c.get("path", "predict") + ("" if arithmetic == "float32" else f" ({arithmetic})"),
                    "x".join(str(v) for v in c["shape"]),
                    str(c["batch_size"]),
                    fmt(c["seconds"], 1),
                    fmt(c["seconds_per_slice"], 3),
                    f"{fmt(peak, 2)} / {fmt(target, 2)}",
                    verdict(ok),
                    load,
                ]
            )
        header = ["case", "path", "shape", "batch", "seconds", "s/slice", "peak RSS / target GiB", "RSS", "load"]
        lines += [markdown_table(header, rows), ""]
        for note in r.get("notes", []):
            lines += [f"Note: {note}", ""]
        lin = r.get("linearity")
        if lin:
            ratio = lin["per_slice_ratio"]
            ok = abs(ratio - 1.0) <= LINEARITY_TOLERANCE
            lines += [
                f"Time per slice at N = {lin['to_slices']} over N = {lin['from_slices']}: {fmt(ratio, 3)} "
                f"(target within {LINEARITY_TOLERANCE:.0%} of 1: {verdict(ok)}).",
                "",
            ]
    lines += _linearity_across(results)
    return lines


def _linearity_across(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Linearity from single-N results of one commit, base width and machine, run one after the other."""
    groups: dict[tuple[str, str, str], list[tuple[int, float, str]]] = {}
    for name, r in results:
        cmd = str(r.get("command", "")).split()
        base = cmd[cmd.index("--base") + 1] if "--base" in cmd else "32"
        m = r.get("machine", {})
        for c in r.get("cases", []):
            if "seconds_per_slice" in c and "synthetic" in c["case"] and c.get("path", "predict") == "predict":
                key = (str(m.get("git_commit")), str(m.get("cpu")), base)
                groups.setdefault(key, []).append((int(c["shape"][2]), float(c["seconds_per_slice"]), name))
    lines = []
    for (commit, _, base), cases in sorted(groups.items()):
        files = {n for _, _, n in cases}
        if len(files) < 2 or len({n for n, _, _ in cases}) < 2:
            continue  # within one file the line above already says it
        lo, hi = min(cases), max(cases)
        ratio = hi[1] / lo[1]
        ok = abs(ratio - 1.0) <= LINEARITY_TOLERANCE
        lines += [
            f"Across `{lo[2]}` and `{hi[2]}` (commit `{commit}`, base {base}, run one after the other): time per "
            f"slice at N = {hi[0]} over N = {lo[0]}: {fmt(ratio, 3)} (target within {LINEARITY_TOLERANCE:.0%} of 1: "
            f"{verdict(ok)}).",
            "",
        ]
    return lines


def _patch_cost_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """``patch_cost_*.json``: ``speed.py --skip-predict`` runs, one per data set, with patches of equal pixel count."""
    rows, rates = [], {}
    for name, r in results:
        for t in r.get("train", []):
            if "b_medseg_loop" not in t:
                continue
            h, w = t["patch_hw"]
            b = t["b_medseg_loop"]["slices_per_s"]
            rates[name] = (h * w, b)
            rows.append(
                [
                    f"`{name}`",
                    Path(str(r.get("config_file", ""))).name or "?",
                    f"{h} x {w} ({h * w} px)",
                    str(t["batch_size"]),
                    t["mode"],
                    fmt(t["a_bare_step"]["slices_per_s"], 1),
                    fmt(b, 1),
                    fmt(1000.0 / b, 2),
                    f"{t['b_medseg_loop']['data_wait_share']:.0%}",
                ]
            )
    if not rows:
        return []
    lines = [
        "## Cost follows the patch (issue 17)",
        "",
        "From `patch_cost_*.json` (`benchmarks/speed.py --skip-predict`, one run per data set, one after the "
        "other on the idle machine): the trainer's own loop (b) on LA2018 with its planned patch, and on the "
        "hippocampus crops with the patch and batch forced to the same size (their slices are padded up to it). "
        f"Target: the LA2018 step time per slice within {PATCH_COST_MAX}x of the hippocampus one.",
        "",
        markdown_table(
            [
                "result",
                "config",
                "patch",
                "batch",
                "mode",
                "(a) bare slices/s",
                "(b) loop slices/s",
                "ms/slice (b)",
                "data wait (b)",
            ],
            rows,
        ),
        "",
    ]
    la = [v for k, v in rates.items() if "la2018" in k]
    hippo = [v for k, v in rates.items() if "hippo" in k]
    if la and hippo and la[0][0] == hippo[0][0]:
        ratio = hippo[0][1] / la[0][1]
        lines += [
            f"LA2018 time per slice / hippocampus time per slice at {la[0][0]} px: {fmt(ratio, 2)} "
            f"(target <= {PATCH_COST_MAX}: {verdict(ratio <= PATCH_COST_MAX)}).",
            "",
        ]
    return lines


def _gpu_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["## GPU check", ""]
    real = [(n, r) for n, r in results if not r.get("smoke")]
    if not real:
        return [
            *lines,
            "Not measured yet. Only one session was lent a GPU (an H100, 2026-12-05): the machine stopped answering "
            "during the run and nothing came back, and no further machine was lent that session. "
            "`benchmarks/gpu_check.py` is ready (under 8 minutes on one GPU; its CPU smoke run is in the tests).",
            "",
        ]
    for name, r in real:
        cuda = r.get("cuda") or {}
        lines += [f"From `{name}`: `{r.get('command', '')}`; {cuda.get('device')} x {cuda.get('count')}.", ""]
        lines += [
            markdown_table(
                ["base", "patch", "mode", "batch", "steps/s", "slices/s", "peak GPU GiB"],
                [
                    [
                        t["base"],
                        "x".join(map(str, t["patch"])),
                        t["mode"],
                        t["batch"],
                        fmt(t["steps_per_s"], 1),
                        fmt(t["slices_per_s"], 0),
                        fmt(t["peak_gpu_gib"], 2),
                    ]
                    for t in r.get("train", [])
                ],
            ),
            "",
            markdown_table(
                ["scans", "n", "base", "precision", "volumes/s", "peak GPU GiB"],
                [
                    [
                        p["scans"],
                        p["n"],
                        p["base"],
                        p["precision"],
                        fmt(p["volumes_per_s"], 2),
                        fmt(p["peak_gpu_gib"], 2),
                    ]
                    for p in r.get("predict", [])
                ],
            ),
            "",
            markdown_table(
                ["scan", "device", "precision", "equal voxels vs CPU fp32", "Dice per class"],
                [
                    [
                        a["scan"],
                        a["device"],
                        a["precision"],
                        fmt(a["equal_voxels"], 6),
                        ", ".join(fmt(d, 4) for d in a["dice_per_class"]),
                    ]
                    for a in r.get("agreement", [])
                ],
            ),
            "",
        ]
        ddp = r.get("ddp") or {}
        lines += [
            f"DDP smoke run: {ddp.get('gpus')} GPU(s), backend {ddp.get('backend')}, exit status "
            f"{ddp.get('exit_status')}, {ddp.get('seconds')} s, best.pt written: {ddp.get('best_checkpoint_written')}.",
            "",
        ]
    return lines


def _case_means(result: dict[str, Any], key: str) -> dict[str, float]:
    """Each case's mean Dice over the foreground classes under ``key`` (``ceiling``, ``plan``, ``no_plan``)."""
    return {case: float(np.mean(row[key])) for case, row in result.get("per_case", {}).items() if row.get(key)}


def _gap_cell(ceiling: dict[str, float], plan: dict[str, float]) -> str:
    """``ceiling - plan`` over the cases both have, with its standard error (cases paired) when there are 2+."""
    cases = sorted(set(ceiling) & set(plan))
    if not cases:
        return "–"
    diffs = np.array([ceiling[c] - plan[c] for c in cases])
    if len(diffs) < 2:
        return fmt(float(diffs.mean()), 4)
    return f"{diffs.mean():.4f} ± {diffs.std(ddof=1) / np.sqrt(len(diffs)):.4f}"


def _fold_groups(results: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Results of one series run fold by fold (file names that differ only in ``_fold<k>``), 2+ folds each."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, r in results:
        stem = re.sub(r"_fold\d+", "_fold*", name)
        if stem != name:
            groups.setdefault(stem, []).append((name, r))
    return {stem: members for stem, members in groups.items() if len(members) > 1}


def _mixed_spacing_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    from benchmarks.mixed_spacing import CASE_KEYS

    lines = ["## Mixed spacing: a 1 mm model on scans from a coarser grid", ""]
    if not results:
        return [*lines, "Not measured yet: run `benchmarks/mixed_spacing.py` (see README.md).", ""]
    lines += [
        "From `mixed_spacing_*.json` (`benchmarks/mixed_spacing.py`): a model trained on one fold's training cases "
        "at 1 mm predicts the held-out cases re-sampled to a coarser grid (SimpleITK: images linear, labels "
        "nearest). *ceiling*: the model's 1 mm predictions re-sampled onto the coarse grid; *plan*: the coarse scans "
        "predicted through the plan's target spacing (re-sampled to 1 mm, probabilities back); *no plan*: the "
        "coarse scans predicted as they are. Target (issue 17): ceiling - plan <= 0.005. The gap's ± is its "
        "standard error over the cases (each case's ceiling and plan paired). A series run fold by fold "
        "(`..._fold<k>.json`) also gets a row pooling its folds' held-out cases (each case once).",
        "",
        "*at centres*: the 1 mm probabilities sampled (linear) at the coarse voxel centres, where *plan* predicts. "
        "The nearest-neighbour coarse labels come from the 1 mm voxel nearest each centre, 0.25 mm beside it at "
        "1.5 mm, and *ceiling* samples the 1 mm prediction at exactly those points, which no prediction made on the "
        "coarse scan can; *at centres - plan* is what the coarser scan itself costs. *label offset*: Dice of the "
        "nearest-neighbour coarse labels against the 1 mm labels taken at the centres (one-hot, linear, argmax).",
        "",
        "*labels*: how the coarse labels, and the ceiling's 1 mm predictions with them, were put on the coarse grid: "
        "`nearest` (the issue's example), or `linear` (`--labels linear`: the argmax of the one-hot maps "
        "interpolated linearly at the coarse voxel centres, as medseg resamples training labels, so ground truth, "
        "ceiling and plan read the 1 mm grid at the same points and in the same smooth way).",
        "",
    ]

    def row(label: str, members: Sequence[dict[str, Any]]) -> list[str]:
        per = {k: {c: v for r in members for c, v in _case_means(r, k).items()} for k in CASE_KEYS}
        pooled = len(members) > 1
        means = {k: (float(np.mean(list(v.values()))) if v else None) for k, v in per.items()}
        if not pooled:  # the file's own summary (identical for new files; old ones may lack per-case rows)
            means = {k: members[0].get("mean_dice", {}).get(k, means[k]) for k in means}
        gap = None if means["ceiling"] is None or means["plan"] is None else means["ceiling"] - means["plan"]
        target = members[0].get("target_gap", 0.005)
        return [
            label,
            "x".join(f"{v:g}" for v in members[0].get("coarse_spacing", [])),
            members[0].get("label_resampling", "nearest"),
            str(len(per["plan"]) if pooled else members[0].get("n_cases")),
            fmt(means["ceiling"]),
            fmt(means["plan"]),
            fmt(means["no_plan"]),
            _gap_cell(per["ceiling"], per["plan"]) if per["plan"] else fmt(gap, 4),
            verdict(None if gap is None else gap <= target),
            fmt(means["ceiling_centres"]),
            _gap_cell(per["ceiling_centres"], per["plan"]),
            fmt(means["label_offset_dice"]),
        ]

    rows = [row(f"`{name}`", [r]) for name, r in results]
    for stem, members in _fold_groups(results).items():
        spacings = {tuple(r.get("coarse_spacing", [])) for _, r in members}
        if len(spacings) == 1:
            rows.append(row(f"**{len(members)} folds pooled** (`{stem}`)", [r for _, r in members]))
    headers = ["run", "coarse mm", "labels", "cases", "ceiling", "plan", "no plan", "ceiling - plan", "target"]
    headers += ["at centres", "at centres - plan", "label offset"]
    lines += [markdown_table(headers, rows), ""]
    lines += [f"- `{name}`: `{r.get('command', '')}`" for name, r in results]
    return [*lines, ""]


def _train_memory_section(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["## Training memory: what setting up a run's data holds", ""]
    if not results:
        return [*lines, "Not measured yet: run `benchmarks/train_memory.py` (see its docstring).", ""]
    lines += [
        "From `train_memory_*.json` (`benchmarks/train_memory.py`): peak RSS of `Trainer(cfg)` (every training and "
        "validation case read, normalised, planned, resampled and sliced; the training dataset built), each commit "
        "in its own process on the same machine in one run. *data peak* = peak RSS minus the RSS before the data "
        "(interpreter, torch, MONAI); *bytes/voxel* = data peak / the prepared voxels (slice pixels of all cases, "
        "at the plan's spacing), which carries over to larger datasets.",
        "",
    ]
    rows = []
    for name, r in results:
        m = r.get("machine", {})
        load = m.get("load_avg_1_5_15")
        for commit, run in r.get("runs", {}).items():
            rows.append(
                [
                    f"`{name}`",
                    f"`{commit}`",
                    f"{run.get('dataset_voxels', 0) / 1e6:.1f} M",
                    str(run.get("context_slices")),
                    fmt(run.get("peak_rss_mb"), 0),
                    fmt(run.get("data_peak_mb"), 0),
                    fmt(run.get("bytes_per_voxel"), 1),
                    fmt(run.get("setup_seconds"), 1),
                    f"{m.get('cpu', '–')}, load {load[0] if load else '–'}",
                ]
            )
    headers = ["result", "commit", "voxels", "context", "peak RSS MiB", "data peak MiB", "bytes/voxel", "setup s"]
    lines += [markdown_table([*headers, "machine"], rows), ""]
    for name, r in results:
        ratio = r.get("ratio_peak_data")
        versus = "" if ratio is None else f"data peak {fmt(ratio, 2)} of the reference commit's; "
        lines.append(f"- `{name}`: {versus}`{r.get('command', '')}`")
    return [*lines, ""]


def render(out_dir: Path, choices: Path | None = CHOICES) -> str:
    """The text of RESULTS.md for the JSON files in ``out_dir``."""
    quality = _load(out_dir, "quality_*.json")
    speed = _load(out_dir, "speed*.json")  # patch_cost_*.json are speed.py runs too, rendered on their own
    lines = [
        "# Benchmark results",
        "",
        "<!-- Generated by `python benchmarks/report.py` from benchmarks/out/*.json; do not edit by hand. -->",
        "",
        "Every number below was measured by `benchmarks/quality.py` or `benchmarks/speed.py` and copied here by "
        "`benchmarks/report.py` from their JSON output; the command of each result is given with it. "
        "See `benchmarks/README.md` for how to run them.",
        "",
    ]
    lines += target_status_section(out_dir)
    lines += _machine_section([*quality, *speed])
    sparse = [(n, r) for n, r in quality if _is_sparse_study(n, r)]
    lines += _quality_section([(n, r) for n, r in quality if not _is_sparse_study(n, r)])
    lines += _sparse_section(sparse)
    lines += _architecture_section(quality)
    lines += _inference_choices_section(_load(out_dir, "inference_choices_*.json"))
    lines += _loss_mode_section(_load(out_dir, "loss_mode_*.json"))
    lines += _speed_section(speed)
    lines += _engines_section(_load(out_dir, "engines_*.json"))
    lines += _qc_section(_load(out_dir, "qc_eval_*.json"))
    lines += _large_volume_section(_load(out_dir, "large_volume*.json"))
    lines += _train_memory_section(_load(out_dir, "train_memory_*.json"))
    lines += _mixed_spacing_section(_load(out_dir, "mixed_spacing_*.json"))
    lines += _patch_cost_section(_load(out_dir, "patch_cost_*.json"))
    lines += _gpu_section(_load(out_dir, "gpu_check*.json"))
    if choices is not None and choices.is_file():
        lines += ["## Choices and the measurements behind them", "", choices.read_text().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="folder of the measured JSON files")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the Markdown file to write")
    parser.add_argument("--choices", type=Path, default=CHOICES, help="prose included as the last section")
    parser.add_argument("--check", action="store_true", help="only check that --output is up to date")
    args = parser.parse_args(argv)
    text = render(args.out_dir, args.choices)
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    from medseg.io.atomic import atomic_write_text

    atomic_write_text(args.output, text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
