"""Evaluation of predicted masks against ground truth: metrics table, summary and PNG overlays."""

from __future__ import annotations

from medseg.evaluation.overlays import draw_overlay
from medseg.evaluation.report import EvalPair, evaluate, match_predictions

__all__ = ["EvalPair", "draw_overlay", "evaluate", "match_predictions"]
