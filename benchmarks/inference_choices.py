"""Test-time flips, test-time scales and postprocessing, measured on the models of a finished cross-validation run.

Inference settings need no retraining to compare: this re-predicts each fold's own held-out cases with the fold's
``best.pt`` (kept by ``quality.py --keep-checkpoints``) under each variant of one family, and scores them exactly
as ``quality.py`` does. Writes ``benchmarks/out/inference_choices_<tag>[_<family>].json``. Families:

* ``flips`` (default): every combination of ``inference.tta_flips`` (off / on) and postprocessing (``auto`` =
  what training decided on the fold's validation cases / ``off``);
* ``scales``: ``inference.tta_scales`` of one, three and five in-plane spacings around the plan's.

::

    python benchmarks/quality.py --config configs/hippocampus.yaml --folds 5 --minutes 10 \\
        --tag medseg_10min --keep-checkpoints
    python benchmarks/inference_choices.py --tag medseg_10min
    python benchmarks/inference_choices.py --tag medseg_10min --family scales
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, RUNS_DIR, command_line, fmt, machine_info, mean_std, text_table, write_json
from benchmarks.quality import predict_and_score

#: Each variant: ``inference`` keys to set (``postprocessing: None`` = the run's own, ``False`` = both steps off).
FAMILIES: dict[str, dict[str, dict[str, Any]]] = {
    "flips": {
        "no flips, postprocessing auto": {"tta_flips": False, "postprocessing": None},
        "no flips, postprocessing off": {"tta_flips": False, "postprocessing": False},
        "flips, postprocessing auto": {"tta_flips": True, "postprocessing": None},
        "flips, postprocessing off": {"tta_flips": True, "postprocessing": False},
    },
    "scales": {
        "scales 1": {"tta_scales": [1.0]},
        "scales 0.9 / 1 / 1.1": {"tta_scales": [0.9, 1.0, 1.1]},
        "scales 0.8 / 0.9 / 1 / 1.1 / 1.2": {"tta_scales": [0.8, 0.9, 1.0, 1.1, 1.2]},
    },
}
#: The first family's variants (what the JSON files written before families existed hold).
VARIANTS = FAMILIES["flips"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/inference_choices.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tag", default="medseg_10min", help="the quality run: out/quality_<tag>.json")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the quality JSON is and this JSON goes")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where the quality run's folds are")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: the run's)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="flips", help="which variants to compare")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from medseg.config import PostprocessingConfig, load_config
    from medseg.data.cases import discover_cases

    args = parse_args(argv)
    quality = json.loads((args.out_dir / f"quality_{args.tag}.json").read_text())
    root = Path(args.data_root or quality["data_root"]).resolve()
    run_root = args.runs_dir / f"quality_{args.tag}"
    started = time.perf_counter()
    variants = FAMILIES[args.family]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for fold in quality["folds"]:
        run_dir = run_root / f"fold{fold['fold']}"
        checkpoint = run_dir / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint} is missing: run quality.py with --keep-checkpoints first")
        cfg = load_config(run_dir / "config.resolved.yaml", [f"data.root={root}"])
        # The fold's held-out cases, found the way training found them (same layout rules, same ids).
        by_id = {c.id: c for c in discover_cases(cfg.data).cases}
        cases = [by_id[c] for c in fold["val_cases"]]
        for name, variant in variants.items():
            update = dict(variant)
            if update.get("postprocessing") is False:
                update["postprocessing"] = PostprocessingConfig(largest_component=False, fill_holes=False)
            else:
                update["postprocessing"] = cfg.inference.postprocessing
            fold_cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update=update)})
            out = run_dir / "inference_choices" / name.replace(", ", "_").replace(" / ", "-").replace(" ", "-")
            scored = predict_and_score(fold_cfg, checkpoint, cases, fold["classes"], out)
            scored.pop("per_case")
            results[name].append({"fold": fold["fold"], **scored})
            print(f"fold {fold['fold']} {name:<34} mean Dice {scored['mean_dice']:.4f}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for name, folds in results.items():
        m, s, n = mean_std([f["mean_dice"] for f in folds])
        per_class = {c: mean_std([f["per_class"][c]["dice_mean"] for f in folds])[0] for c in quality["classes"][1:]}
        vps = mean_std([f["volumes_per_s"] for f in folds])[0]
        summary[name] = {"mean_dice": m, "mean_dice_std": s, "folds": n, "per_class": per_class, "volumes_per_s": vps}
    rows = [
        [
            name,
            fmt(v["mean_dice"], 4),
            fmt(v["mean_dice_std"], 4),
            *(fmt(x, 4) for x in v["per_class"].values()),
            fmt(v["volumes_per_s"], 2),
        ]
        for name, v in summary.items()
    ]
    print(text_table(["variant", "mean Dice", "std", *quality["classes"][1:], "vol/s"], rows))
    suffix = "" if args.family == "flips" else f"_{args.family}"
    path = write_json(
        args.out_dir / f"inference_choices_{args.tag}{suffix}.json",
        {
            "benchmark": "inference_choices",
            "tag": args.tag,
            "family": args.family,
            "command": command_line(),
            "quality_result": f"quality_{args.tag}.json",
            "machine": machine_info(),
            "variants": variants,
            "folds": results,
            "summary": summary,
            "wall_seconds": time.perf_counter() - started,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
