"""Merge ``quality.py`` results of fold subsets (``--fold-subset``) of one k-fold split into one result.

Folds of one split can be run in separate sessions (``--fold-subset 0``, then ``--fold-subset 1,2,3,4``); this
joins their JSON files into the one cross-validation result ``report.py`` renders, recomputing the summary
from the folds. It refuses files that do not describe the same split (data root, number of folds, method,
budget, overrides) or that hold the same fold twice.

::

    python benchmarks/merge_folds.py benchmarks/out/quality_a.json benchmarks/out/quality_b.json --tag la2018_10min
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json
from benchmarks.quality import summarize

#: Fields that must agree for two results to be folds of one split.
SAME_SPLIT = ("benchmark", "method", "data_root", "n_folds", "minutes", "overrides", "classes", "primary_evaluation")


def merge(results: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    """One result holding every fold of ``results`` (which must be fold subsets of the same split).

    Raises:
        ValueError: The results differ in a :data:`SAME_SPLIT` field, or hold the same fold twice.
    """
    first = results[0]
    for other in results[1:]:
        diffs = [k for k in SAME_SPLIT if other.get(k) != first.get(k)]
        if diffs:
            raise ValueError(f"not folds of one split: they differ in {', '.join(diffs)}")
    folds = sorted((f for r in results for f in r["folds"]), key=lambda f: int(f["fold"]))
    numbers = [int(f["fold"]) for f in folds]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"a fold appears twice: {numbers}")
    merged = {k: v for k, v in first.items() if k not in ("folds", "summary", "folds_done", "command", "tag")}
    merged.update(
        tag=tag,
        command=" ; ".join(str(r.get("command", "")) for r in results),
        machines=[r.get("machine") for r in results],
        fold_subset=None if len(numbers) == int(first["n_folds"]) else numbers,
        folds=folds,
        folds_done=numbers,
        complete=all(r.get("complete") for r in results),
        summary=summarize(folds),
        wall_seconds=sum(float(r.get("wall_seconds", 0.0)) for r in results),
        merged_from=[str(r.get("tag")) for r in results],
    )
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="quality_*.json files of one split")
    parser.add_argument("--tag", required=True, help="name of the merged result: out/quality_<tag>.json")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args(argv)
    results = [json.loads(p.read_text(encoding="utf-8")) for p in args.files]
    try:
        merged = merge(results, args.tag)
    except ValueError as err:
        print(f"merge_folds: {err}", file=sys.stderr)
        return 2
    out = write_json(args.out_dir / f"quality_{args.tag}.json", merged)
    print(f"wrote {out}: folds {merged['folds_done']}, mean Dice {merged['summary']['best']['mean_dice']['mean']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
