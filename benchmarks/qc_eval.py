"""How well QC's ``qc_score`` finds the worst predicted hippocampus masks, and how many normal scans it flags.

One fold of a k-fold split by case: the fold's cases are the **test** cases, never seen in training. The other
cases are a dataset of their own, trained on with the config's 80/20 split (its validation cases select the best
epoch, decide postprocessing and give QC its reference of normal outputs), epoch-bounded so the run is
reproducible and does not depend on the machine's speed. Then :func:`medseg.inference.batch.predict_folder`
predicts the test cases (and, as a positive control, one CT scan the MRI model should reject), exactly as a user's
run would, and each test mask is scored against its label (mean Dice over the foreground classes).

Reported (``benchmarks/out/qc_eval_<tag>.json``):

- ``auc``: ROC AUC of ``qc_score`` for "bad" cases: mean Dice < ``--bad-dice`` (0.8), or, when fewer than two are
  that bad, the worst decile (at least one case); 0.5 = no better than chance, 1 = every bad case scores higher
  than every normal one;
- ``flagged_normal`` / ``n_normal``: normal test cases with a QC flag (false alarms), ``flagged_bad`` / ``n_bad``;
- the OOD control's flags; every test case's Dice, score and flags.

::

    python benchmarks/qc_eval.py --config configs/hippocampus.yaml --data-root ../shared/data/Task04_Hippocampus \\
        --folds 5 --fold 0 --epochs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DEFAULT_DATA, OUT_DIR, REPO, RUNS_DIR, command_line, machine_info, write_json

log = logging.getLogger("benchmarks.qc_eval")
DEFAULT_OOD = REPO.parent / "shared" / "data" / "MSD_Spleen_crop" / "spleen_2_img.nii.gz"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/qc_eval.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "hippocampus.yaml", help="medseg config")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="MSD dataset folder")
    parser.add_argument("--folds", type=int, default=5, help="k of the split by case")
    parser.add_argument("--fold", type=int, default=0, help="which fold is the test set")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (epoch-bounded, no time budget)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--ood", type=Path, default=DEFAULT_OOD, help="a scan QC must flag (other modality)")
    parser.add_argument("--bad-dice", type=float, default=0.8, help="mean Dice below which a case is bad")
    parser.add_argument(
        "--reuse", action="store_true", help="use the checkpoint of an earlier run with the same tag (no training)"
    )
    parser.add_argument("--tag", default="fold0", help="output name: benchmarks/out/qc_eval_<tag>.json")
    return parser.parse_args(argv)


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """ROC AUC by the Mann-Whitney statistic (ties count half); ``None`` without both classes."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((1.0 if a > b else 0.5 if a == b else 0.0) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def bad_cases(dice: Sequence[float], threshold: float) -> tuple[list[bool], str]:
    """Which cases count as bad: Dice < threshold, or the worst decile when fewer than two are below it."""
    below = [d < threshold for d in dice]
    if sum(below) >= 2:
        return below, f"mean Dice < {threshold}"
    k = max(1, math.ceil(len(dice) / 10))
    cut = sorted(dice)[k - 1]
    return [d <= cut for d in dice], f"worst decile (mean Dice <= {cut:.4f}; fewer than 2 cases below {threshold})"


def _subset_dataset(root: Path, keep: set[str], folder: Path) -> Path:
    """An MSD folder listing only the ``keep`` cases (symlinks to the original image and label folders)."""
    from medseg.io import case_id_from_path

    folder.mkdir(parents=True, exist_ok=True)
    ds = json.loads((root / "dataset.json").read_text())
    ds["training"] = [e for e in ds["training"] if case_id_from_path(Path(e["image"])) in keep]
    ds["numTraining"] = len(ds["training"])
    for sub in ("imagesTr", "labelsTr"):
        link = folder / sub
        if not link.exists():
            link.symlink_to((root / sub).resolve(), target_is_directory=True)
    (folder / "dataset.json").write_text(json.dumps(ds, indent=1))
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    import numpy as np

    from medseg.config import load_config
    from medseg.data.cases import discover_cases
    from medseg.data.splits import split_cases
    from medseg.inference import Predictor
    from medseg.inference.batch import predict_folder
    from medseg.io import load_volume
    from medseg.metrics import dice
    from medseg.training import train
    from medseg.training.checkpoint import load_checkpoint

    data_root = args.data_root.resolve()
    base = load_config(args.config, [f"data.root={data_root}", *args.overrides])
    spec = discover_cases(base.data)
    rest, test = split_cases(
        spec.cases, 0.0, base.data.seed, folds=args.folds, fold=args.fold, group_pattern=base.data.group_pattern
    )
    work = RUNS_DIR / f"qc_eval_{args.tag}"
    subset = _subset_dataset(data_root, {c.id for c in rest}, work / "data")
    overrides = [
        f"data.root={subset}",
        f"output.dir={work / 'run'}",
        f"training.epochs={args.epochs}",
        "training.max_minutes=null",
        "training.device=cpu",
        "inference.device=cpu",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    log.info(
        "Training on %d of %d cases (%d test cases held out), %d epochs",
        len(rest),
        len(spec.cases),
        len(test),
        args.epochs,
    )
    best = work / "run" / "checkpoints" / "best.pt"
    if args.reuse and best.is_file():
        log.info("Reusing %s (--reuse): no training", best)
        ckpt = load_checkpoint(best)
        best_epoch, best_dice = int(ckpt["best_epoch"]), float(ckpt["best_dice"])
    else:
        result = train(cfg)
        best_epoch, best_dice = result.best_epoch, result.best_dice
    predictor = Predictor.from_config(best, cfg.inference)
    scans = [c.image for c in test] + ([args.ood] if args.ood.is_file() else [])
    batch = predict_folder(predictor, scans, work / "predictions", overwrite=True, progress=False)
    rows = {r["input"]: r for r in batch.rows}
    cases: list[dict[str, Any]] = []
    for case in test:
        row = rows[str(case.image)]
        pred = np.asarray(load_volume(Path(row["output"])).array)
        gt = np.rint(np.asarray(load_volume(case.label).array))  # type: ignore[arg-type]
        per_class = [dice(pred == c, gt == c) for c in range(1, len(spec.classes))]
        # The per-check ratios are not in the table: one more forward pass gives them (same weights, same mask).
        volume = load_volume(case.image)
        mask, probs = predictor.predict_with_proba(volume)
        checks = predictor.assess_quality(volume, np.asarray(mask.array), probs).checks
        cases.append(
            {
                "case": case.id,
                "dice": float(np.mean(per_class)),
                "dice_per_class": per_class,
                "qc_score": float(row["qc_score"]),
                "qc_flags": row["qc_flags"],
                "checks": checks,
            }
        )
    dices = [c["dice"] for c in cases]
    bad, rule = bad_cases(dices, args.bad_dice)
    scores = [c["qc_score"] for c in cases]
    flagged = [bool(c["qc_flags"]) for c in cases]
    ood_row = rows.get(str(args.ood))
    summary = {
        "benchmark": "qc_eval",
        "tag": args.tag,
        "command": command_line(),
        "machine": machine_info(),
        "setup": {
            "config": str(args.config),
            "overrides": overrides,
            "data_root": str(data_root),
            "folds": args.folds,
            "fold": args.fold,
            "n_train_and_val": len(rest),
            "n_test": len(test),
            "epochs": args.epochs,
            "bad_dice": args.bad_dice,
            "best_epoch": best_epoch,
            "best_val_dice": best_dice,
            "qc_thresholds": cfg.inference.qc.model_dump(),
        },
        "bad_rule": rule,
        "n_bad": int(sum(bad)),
        "n_normal": int(len(bad) - sum(bad)),
        "auc": roc_auc(scores, bad),
        "auc_per_check": {
            name: roc_auc([c["checks"].get(name, 0.0) for c in cases], bad)
            for name in sorted({k for c in cases for k in c["checks"]})
        },
        "flagged_bad": int(sum(f and b for f, b in zip(flagged, bad, strict=True))),
        "flagged_normal": int(sum(f and not b for f, b in zip(flagged, bad, strict=True))),
        "mean_dice": float(np.mean(dices)),
        "ood": None
        if ood_row is None
        else {"scan": str(args.ood), "qc_score": ood_row["qc_score"], "qc_flags": ood_row["qc_flags"]},
        "cases": sorted(cases, key=lambda c: c["dice"]),
    }
    out = write_json(OUT_DIR / f"qc_eval_{args.tag}.json", summary)
    print(
        f"test cases {len(test)}, mean Dice {summary['mean_dice']:.4f}; bad ({rule}): {summary['n_bad']}; "
        f"AUC {summary['auc']}; flagged normal {summary['flagged_normal']}/{summary['n_normal']}, "
        f"flagged bad {summary['flagged_bad']}/{summary['n_bad']}; OOD flagged: {bool(ood_row and ood_row['qc_flags'])}"
    )
    with (work / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "dice", "qc_score", "qc_flags"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary["cases"])
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
