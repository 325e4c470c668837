"""Segmentation quality by k-fold cross-validation over cases, for medseg or the plain MONAI baseline.

Each fold trains on the other folds' cases for a wall-clock budget (``training.max_minutes``), predicts its own
cases as whole volumes through :class:`medseg.inference.Predictor` and
:func:`medseg.inference.batch.predict_folder` (reading and writing mask files, as a user's run would), and
scores them with :func:`medseg.evaluation.evaluate` (Dice and HD95 per class per case). The per-fold mean
and the mean ± standard deviation over folds are printed and written to ``benchmarks/out/quality_<tag>.json``.

::

    python benchmarks/quality.py --config configs/hippocampus.yaml \\
        --data-root ../shared/data/Task04_Hippocampus --folds 5 --minutes 10
    python benchmarks/quality.py ... --baseline monai          # the plain MONAI 2D pipeline, same folds/budget
    python benchmarks/quality.py ... --fold-subset 0,1 --set model.base_features=48 --tag width48
    python benchmarks/quality.py ... --architecture attention_unet   # = --set model.architecture=attention_unet

medseg is scored twice per fold: with ``best.pt`` (what ``pipelines.run`` predicts with: the epoch with the
best Dice on these very validation cases, and the postprocessing chosen on them, so mildly optimistic) and with
``last.pt`` (the final weights, no selection on the held-out cases; postprocessing as configured, ``auto`` =
off because only ``best.pt`` carries the decision). The baseline has no validation and uses its final weights.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    DEFAULT_DATA,
    OUT_DIR,
    RUNS_DIR,
    command_line,
    fmt,
    fmt_mean_std,
    machine_info,
    mean_std,
    text_table,
    write_json,
)

log = logging.getLogger("benchmarks.quality")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/quality.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=Path("configs/hippocampus.yaml"), help="medseg YAML config")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="dataset folder (data.root)")
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold split by case (data.folds)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per fold (training.max_minutes)")
    parser.add_argument("--fold-subset", default=None, help="run only these folds, e.g. 0,1 (default: all)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="config override as in pipelines.run (repeatable); recorded in the JSON",
    )
    parser.add_argument(
        "--architecture",
        choices=["unet", "attention_unet", "residual_unet", "unet_plus_plus"],
        default=None,
        help="medseg: model.architecture (default: the config's); part of the default tag",
    )
    parser.add_argument("--baseline", choices=["monai"], default=None, help="measure the plain MONAI pipeline instead")
    parser.add_argument("--baseline-workers", type=int, default=0, help="DataLoader workers of the baseline")
    parser.add_argument("--tag", default=None, help="name of the result: out/quality_<tag>.json (default: derived)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the JSON goes")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where the fold runs (checkpoints, masks) go")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each fold's checkpoints/ (large)")
    parser.add_argument("--no-last", action="store_true", help="medseg: do not also score last.pt")
    parser.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        help="medseg: score against the label file named <case id>.<ending> in this folder instead of the data's "
        "own labels (e.g. the complete labels of a sparsely annotated copy: benchmarks/sparse_labels.py)",
    )
    parser.add_argument(
        "--score-regions",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="medseg: score every model by the overlapping regions that CONFIG's data.regions declares (e.g. a "
        "model of BraTS's classes by whole tumour / core / enhancing, as configs/brats_regions.yaml trains them)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if (args.data_root.expanduser() / "sparse_labels.json").is_file() and args.ground_truth is None:
        parser.error(
            "--data-root is a sparsely annotated copy (sparse_labels.py): pass --ground-truth <the complete labels> "
            "to score its held-out cases"
        )
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.fold_subset:
        try:
            args.fold_list = sorted({int(f) for f in args.fold_subset.split(",") if f.strip()})
        except ValueError:
            parser.error(f"--fold-subset: expected comma-separated fold numbers, got {args.fold_subset!r}")
        bad = [f for f in args.fold_list if not 0 <= f < args.folds]
        if bad:
            parser.error(f"--fold-subset: folds must be in 0..{args.folds - 1}, got {bad}")
    else:
        args.fold_list = list(range(args.folds))
    method = "monai" if args.baseline else "medseg"
    args.method = method
    if args.architecture:
        if args.baseline:
            parser.error("--architecture applies to medseg, not to --baseline")
        args.overrides = [*args.overrides, f"model.architecture={args.architecture}"]
    arch = f"_{args.architecture}" if args.architecture and args.architecture != "unet" else ""
    args.tag = args.tag or f"{method}{arch}_{args.minutes:g}min"
    return args


def fold_config(args: argparse.Namespace, fold: int, run_dir: Path) -> Any:
    """The config of one fold: the user's file and ``--set`` overrides, then the benchmark's own keys."""
    from medseg.config import load_config

    ours = [
        f"data.root={args.data_root.expanduser().resolve()}",
        f"data.folds={args.folds}",
        f"data.fold={fold}",
        f"training.max_minutes={args.minutes}",
        f"output.dir={run_dir.resolve()}",
        "training.resume=false",
        "inference.overwrite=true",
    ]
    return load_config(args.config, [*args.overrides, *ours])


def _float(text: str) -> float | None:
    try:
        return float(text) if text not in ("", "nan") else None
    except ValueError:
        return None


def score(pairs: Sequence[Any], classes: Sequence[str], out_dir: Path, labels: Any = None) -> dict[str, Any]:
    """Runs :func:`medseg.evaluation.evaluate` (mask files read through ``labels``, a ``LabelReading``) and
    condenses its ``metrics.csv`` per case and per class."""
    from medseg.evaluation import evaluate

    start = time.perf_counter()
    summary = evaluate(pairs, classes, out_dir, overlays=0, labels=labels)
    per_case: dict[str, dict[str, dict[str, float | None]]] = {}
    with (out_dir / "metrics.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("error"):
                continue
            per_case.setdefault(row["case"], {})[row["class"]] = {
                "dice": _float(row["dice"]),
                "hd95_mm": _float(row["hd95_mm"]),
            }
    fg = list(classes[1:])
    per_class = {}
    for name in fg:
        d_mean, d_std, n = mean_std([c[name]["dice"] for c in per_case.values() if name in c])
        h_mean, h_std, _ = mean_std([c[name]["hd95_mm"] for c in per_case.values() if name in c])
        per_class[name] = {"dice_mean": d_mean, "dice_std": d_std, "hd95_mm_mean": h_mean, "hd95_mm_std": h_std, "n": n}
    case_means = [mean_std([c[name]["dice"] for name in fg if name in c])[0] for c in per_case.values()]
    return {
        "eval_seconds": time.perf_counter() - start,
        "n_failed": summary.get("n_failed", 0),
        "failed_cases": summary.get("failed_cases", []),
        "mean_dice": mean_std(case_means)[0],
        "per_class": per_class,
        "per_case": per_case,
    }


def ground_truth_file(folder: Path, case_id: str) -> Path:
    """The one label file of ``case_id`` in ``folder`` (any scan ending), for ``--ground-truth``."""
    from medseg.io.scans import case_id_from_path

    found = [p for p in folder.iterdir() if case_id_from_path(p) == case_id]
    if len(found) != 1:
        raise SystemExit(f"--ground-truth: {len(found)} files for case '{case_id}' in '{folder}', expected 1")
    return found[0]


def scoring(cfg: Any, score_regions: Path | None) -> tuple[list[str], Any]:
    """The classes masks are scored by and how their files are read: the run's own (its stored values, ignore
    label and regions), or the regions ``score_regions``'s ``data.regions`` declares."""
    from medseg.config import load_config
    from medseg.data.cases import discover_cases
    from medseg.data.label_reading import LabelReading
    from medseg.data.regions import Regions

    if score_regions is not None:
        data = load_config(score_regions).data
        if data.regions is None:
            raise SystemExit(f"--score-regions: '{score_regions}' sets no data.regions")
        regions = Regions.of(data.regions, data.regions_class_order or [])
        return regions.classes, LabelReading(regions=regions)
    spec = discover_cases(cfg.data)
    return list(spec.classes), LabelReading.of(cfg.data, spec.label_values, spec.ignore_label, spec.regions)


def predict_and_score(
    cfg: Any,
    checkpoint: Path,
    cases: Sequence[Any],
    classes: Sequence[str],
    out: Path,
    ground_truth: Path | None = None,
    labels: Any = None,
) -> dict:
    """Predicts ``cases`` with ``checkpoint`` as ``pipelines.run`` would, writes the masks, scores them (against
    the cases' labels, or their files in ``ground_truth``; read through ``labels``, a ``LabelReading``)."""
    from medseg.evaluation import EvalPair
    from medseg.inference import Predictor, predict_folder

    inf = cfg.inference
    predictor = Predictor.from_config(checkpoint, inf)

    def case_input(c: Any) -> Path:
        # layout folders: a case is predicted from its folder (its channels); otherwise from its image file.
        return c.image.parent if c.channel_files and cfg.data.layout == "folders" else c.image

    start = time.perf_counter()
    result = predict_folder(
        predictor,
        [case_input(c) for c in cases],
        out / "predictions",
        output_format=inf.output_format,
        overwrite=True,
        progress=False,
    )
    predict_seconds = time.perf_counter() - start
    rows = {row["input"]: row for row in result.rows}
    pairs, failed = [], []
    for c in cases:
        row = rows.get(str(case_input(c)))
        if row is None or row["status"] != "ok":
            failed.append({"case": c.id, "error": (row or {}).get("error", "not predicted")})
            continue
        label = c.label if ground_truth is None else ground_truth_file(ground_truth, c.id)
        pairs.append(EvalPair(c.id, Path(row["output"]), label, c.image))
    scored = score(pairs, classes, out / "evaluation", labels)
    scored["failed_predictions"] = failed
    scored["predict_seconds"] = predict_seconds
    scored["volumes_per_s"] = len(pairs) / predict_seconds if predict_seconds > 0 else None
    scored["postprocessing"] = {"largest_component": predictor.largest_component, "fill_holes": predictor.fill_holes}
    scored["precision"] = str(predictor.dtype or "float32").replace("torch.", "")
    scored["tta_flips"] = predictor.tta_flips
    return scored


def run_medseg_fold(args: argparse.Namespace, fold: int, run_dir: Path) -> dict[str, Any]:
    from medseg.models.checkpoint import load_checkpoint, model_from_checkpoint, network_spec
    from medseg.runner import RunLayout, prepare_output, run_logging
    from medseg.training import train

    cfg = fold_config(args, fold, run_dir)
    layout = prepare_output(cfg, ["train", "predict", "evaluate"], source=args.config.resolve())
    with run_logging(layout.log_file, verbose=args.verbose):
        start = time.perf_counter()
        result = train(cfg)
        train_wall = time.perf_counter() - start
        history = result.history
        loop = [r for r in history if r.get("slices_per_s") is not None]
        train_info = {
            "wall_seconds_incl_data_prep": train_wall,
            "epoch_seconds_sum": sum(float(r["seconds"]) for r in history),
            "epochs": result.epochs,
            "stop_reason": result.stop_reason,
            "best_epoch": result.best_epoch,
            "in_training_best_val_dice": result.best_dice,
            "slices_per_s_mean": mean_std([r["slices_per_s"] for r in loop])[0],
            "data_wait_share_mean": mean_std([r["data_wait_share"] for r in loop])[0],
            "postprocessing_decided": result.postprocessing,
        }
        cases = list(result.val_cases)
        last = load_checkpoint(result.last)
        split = last.get("split", {})
        train_info["architecture"] = network_spec(last).architecture
        train_info["parameters"] = sum(p.numel() for p in model_from_checkpoint(last)[0].parameters())
        plan = dict(last.get("plan") or {})
        if isinstance(plan.get("fingerprint"), dict):  # the per-case table is in the run's plan.json
            plan["fingerprint"] = {k: v for k, v in plan["fingerprint"].items() if k != "cases"}
        gt = args.ground_truth
        classes, reading = scoring(cfg, args.score_regions)
        evaluations = {"best": predict_and_score(cfg, result.best, cases, classes, run_dir / "eval_best", gt, reading)}
        if not args.no_last:
            evaluations["last"] = predict_and_score(
                cfg, result.last, cases, classes, run_dir / "eval_last", gt, reading
            )
    if not args.keep_checkpoints:
        shutil.rmtree(RunLayout(run_dir).checkpoints, ignore_errors=True)
    return {
        "fold": fold,
        "n_train": len(split.get("train", [])),
        "val_cases": [c.id for c in cases],
        "train": train_info,
        "plan": plan,
        "evaluations": evaluations,
        "config": cfg.model_dump(mode="json"),
        "classes": classes,
        "trained_classes": list(result.classes),
    }


def run_baseline_fold(args: argparse.Namespace, fold: int, run_dir: Path) -> dict[str, Any]:
    from benchmarks.monai_baseline import predict_baseline, train_baseline
    from medseg.data.cases import discover_cases
    from medseg.data.splits import split_cases
    from medseg.evaluation import EvalPair
    from medseg.inference.precision import resolve_device

    cfg = fold_config(args, fold, run_dir)
    spec = discover_cases(cfg.data)
    train_cases, val_cases = split_cases(
        spec.cases, 0.0, cfg.data.seed, folds=cfg.data.folds, fold=cfg.data.fold, group_pattern=cfg.data.group_pattern
    )
    device = str(resolve_device(cfg.training.device))
    run_dir.mkdir(parents=True, exist_ok=True)
    model, train_info = train_baseline(
        train_cases,
        len(spec.classes),
        minutes=args.minutes,
        seed=cfg.training.seed,
        num_workers=args.baseline_workers,
        device=device,
    )
    written, pred_info = predict_baseline(model, val_cases, run_dir / "eval_final" / "predictions", device=device)
    by_id = {c.id: c for c in val_cases}
    pairs = [EvalPair(cid, path, Path(str(by_id[cid].label)), by_id[cid].image) for cid, path in written]
    scored = score(pairs, spec.classes, run_dir / "eval_final" / "evaluation")
    scored.update(pred_info)
    return {
        "fold": fold,
        "n_train": len(train_cases),
        "val_cases": [c.id for c in val_cases],
        "train": train_info,
        "evaluations": {"final": scored},
        "classes": list(spec.classes),
    }


def summarize(folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per evaluation (best/last/final): per-class and overall Dice as fold means, mean ± std over folds, pooled."""
    if not folds:
        return {}
    classes = folds[0]["classes"][1:]
    out: dict[str, Any] = {}
    for which in folds[0]["evaluations"]:
        evs = [f["evaluations"][which] for f in folds if which in f["evaluations"]]
        entry: dict[str, Any] = {"per_class": {}}
        for name in classes:
            fold_means = [e["per_class"][name]["dice_mean"] for e in evs]
            hd = [e["per_class"][name]["hd95_mm_mean"] for e in evs]
            pooled = [c[name]["dice"] for e in evs for c in e["per_case"].values() if name in c]
            m, s, _ = mean_std(fold_means)
            entry["per_class"][name] = {
                "fold_means": fold_means,
                "mean": m,
                "std": s,
                "pooled_mean": mean_std(pooled)[0],
                "hd95_mm_fold_means": hd,
                "hd95_mm_mean": mean_std(hd)[0],
            }
        fold_means = [e["mean_dice"] for e in evs]
        m, s, n = mean_std(fold_means)
        entry["mean_dice"] = {"fold_means": fold_means, "mean": m, "std": s, "n_folds": n}
        entry["n_cases"] = sum(len(e["per_case"]) for e in evs)
        out[which] = entry
    return out


def print_tables(result: dict[str, Any]) -> None:
    classes = result["classes"][1:]
    primary = result["primary_evaluation"]
    headers = ["fold", "cases", "train s", "epochs/steps", *[f"Dice {c}" for c in classes], "mean Dice"]
    headers += [f"HD95 {c}" for c in classes]
    rows = []
    for f in result["folds"]:
        ev = f["evaluations"][primary]
        tr = f["train"]
        seconds = tr.get("epoch_seconds_sum", tr.get("train_seconds"))
        count = tr.get("epochs", tr.get("steps"))
        rows.append(
            [
                str(f["fold"]),
                str(len(ev["per_case"])),
                fmt(seconds, 0),
                str(count),
                *[fmt(ev["per_class"][c]["dice_mean"]) for c in classes],
                fmt(ev["mean_dice"]),
                *[fmt(ev["per_class"][c]["hd95_mm_mean"], 2) for c in classes],
            ]
        )
    print(f"\n{result['method']} ({result['tag']}), {result['minutes']:g} min per fold, scored with {primary}:")
    print(text_table(headers, rows))
    print()
    for which, s in result["summary"].items():
        parts = [f"{c} {fmt_mean_std(s['per_class'][c]['mean'], s['per_class'][c]['std'])}" for c in classes]
        md = s["mean_dice"]
        print(
            f"  {which:5s}: mean Dice {fmt_mean_std(md['mean'], md['std'])} over {md['n_folds']} fold(s) "
            f"({', '.join(parts)}; {s['n_cases']} cases)"
        )


def _sparse_labels(data_root: Path) -> dict[str, Any]:
    """What ``benchmarks/sparse_labels.py`` kept, when ``data_root`` is such a copy (``{}`` otherwise)."""
    record = data_root.expanduser() / "sparse_labels.json"
    return {"sparse_labels": json.loads(record.read_text())} if record.is_file() else {}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    out_json = args.out_dir / f"quality_{args.tag}.json"
    run_root = args.runs_dir / f"quality_{args.tag}"
    result: dict[str, Any] = {
        "benchmark": "quality",
        "tag": args.tag,
        "method": args.method,
        "command": command_line(),
        "config_file": str(args.config),
        "overrides": list(args.overrides),
        "data_root": str(args.data_root),
        "ground_truth": str(args.ground_truth) if args.ground_truth else None,
        "score_regions": str(args.score_regions) if args.score_regions else None,
        **_sparse_labels(args.data_root),
        "n_folds": args.folds,
        "fold_subset": args.fold_list,
        "minutes": args.minutes,
        "primary_evaluation": "final" if args.baseline else "best",
        "machine": machine_info(),
        "complete": False,
        "folds_done": [],
    }
    if args.baseline:
        from benchmarks.monai_baseline import BASELINE_AUGMENTATION, BASELINE_SETTINGS

        result["baseline"] = {**BASELINE_SETTINGS, "augmentation": BASELINE_AUGMENTATION.model_dump(mode="json")}
    folds: list[dict[str, Any]] = []
    start = time.perf_counter()
    for fold in args.fold_list:
        log.info("== %s fold %d of %d (%g min)", args.method, fold, args.folds, args.minutes)
        t = time.perf_counter()
        run_dir = run_root / f"fold{fold}"
        record = run_baseline_fold(args, fold, run_dir) if args.baseline else run_medseg_fold(args, fold, run_dir)
        record["wall_seconds"] = time.perf_counter() - t
        if "config" in record and "config" not in result:
            result["config"] = record.pop("config")
        record.pop("config", None)
        folds.append(record)
        result.update(
            classes=record["classes"],
            folds=folds,
            folds_done=[f["fold"] for f in folds],
            summary=summarize(folds),
            wall_seconds=time.perf_counter() - start,
        )
        write_json(out_json, result)  # after every fold: a killed run keeps the folds it finished
    result["complete"] = True
    write_json(out_json, result)
    print_tables(result)
    print(f"\nwrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
