"""Per-epoch records: ``metrics.csv``, ``curves.png`` and (when installed) TensorBoard.

The history is a list of plain dicts kept in the checkpoint too, so a resumed run rewrites the full
``metrics.csv`` and curves, not only the epochs of its own session. Files are rewritten atomically each epoch
(they are tiny), so a killed run leaves complete files.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from medseg.class_display import plot_class_curves
from medseg.io.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

BASE_COLUMNS = ("epoch", "lr", "train_loss", "val_dice_mean")
TAIL_COLUMNS = ("seconds", "slices_per_s", "data_wait_share", "steps")


def columns(classes: list[str]) -> list[str]:
    """CSV columns: epoch, lr, train_loss, val_dice_mean, val_dice_<class> per foreground class, timings."""
    return [*BASE_COLUMNS, *(f"val_dice_{c}" for c in classes[1:]), *TAIL_COLUMNS]


def seconds_left(history: list[dict[str, Any]], epochs: int, budget_left: float | None, recent: int = 3) -> float:
    """Estimated seconds until training ends: the epochs left at the mean duration of the ``recent`` last epochs
    (validation included), or what is left of the time budget (``training.max_minutes``) if that ends it first.

    Args:
        history: The epoch rows so far (``epoch`` and ``seconds``), the last one just finished.
        epochs: ``training.epochs``.
        budget_left: Seconds left of the time budget; ``None`` without one.
    """
    if not history:
        return float("nan")
    last = history[-recent:]
    per_epoch = sum(float(r["seconds"]) for r in last) / len(last)
    left = max(0, epochs - int(history[-1]["epoch"])) * per_epoch
    return left if budget_left is None else min(left, max(0.0, budget_left))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class TrainingLog:
    """Writes the epoch history to ``<dir>/metrics.csv`` and ``<dir>/curves.png`` (and TensorBoard).

    Args:
        out_dir: The run's ``train/`` folder.
        classes: Class names, background first.
        history: Rows of earlier sessions (from the checkpoint) to continue.
        tensorboard: Also log to ``<out_dir>/tensorboard`` when the ``tensorboard`` package is installed.
    """

    def __init__(
        self, out_dir: Path, classes: list[str], history: list[dict[str, Any]] | None = None, tensorboard: bool = True
    ) -> None:
        self.out_dir = Path(out_dir)
        self.classes = classes
        self.rows: list[dict[str, Any]] = list(history or [])
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                self._writer = None

    def add(self, row: dict[str, Any], *, draw: bool | None = None) -> None:
        """Appends one epoch's row and rewrites the CSV, TensorBoard scalars and (by default on validation
        epochs, where the Dice curve changes) the curves.

        Args:
            row: The epoch's values (keys as :func:`columns`).
            draw: Redraw ``curves.png``; ``None`` = when the row holds a validation Dice. Drawing costs ~0.2 s,
                which adds up over many short epochs.
        """
        # A resumed run may replay an epoch the killed run had logged but not checkpointed: the replay wins.
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        self.write_csv()
        if draw is None:
            draw = row.get("val_dice_mean") is not None
        if draw:
            self.write_curves()
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def write_csv(self) -> Path:
        """Writes ``metrics.csv`` atomically."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = columns(self.classes)
        writer.writerow(cols)
        for row in self.rows:
            writer.writerow([_fmt(row.get(c)) for c in cols])
        path = self.out_dir / "metrics.csv"
        atomic_write_text(path, buf.getvalue())
        return path

    def write_curves(self) -> Path | None:
        """Draws training loss and validation Dice (mean and per class) against epochs into ``curves.png``."""
        try:
            import matplotlib

            matplotlib.use("Agg")  # no display on training servers
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            return None
        epochs = [r["epoch"] for r in self.rows]
        fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
        ax_loss.plot(epochs, [r["train_loss"] for r in self.rows], marker=".", label="train loss")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.set_title("Training loss")
        ax_loss.grid(alpha=0.3)
        val = [r for r in self.rows if r.get("val_dice_mean") is not None]
        if val:
            ve = [r["epoch"] for r in val]
            plot_class_curves(ax_dice, ve, {c: [r.get(f"val_dice_{c}") for r in val] for c in self.classes[1:]})
            ax_dice.plot(ve, [r["val_dice_mean"] for r in val], "k-", marker="o", ms=4, linewidth=2, label="mean")
            # Beside the axes, not over the curves: with many classes the legend is as tall as the plot.
            ax_dice.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax_dice.set_xlabel("epoch")
        ax_dice.set_ylabel("Dice")
        ax_dice.set_ylim(0, 1)
        ax_dice.set_title("Validation Dice (whole volumes)")
        ax_dice.grid(alpha=0.3)
        path = self.out_dir / "curves.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path

    def close(self) -> None:
        """Draws the final curves and closes the TensorBoard writer."""
        if self.rows:
            self.write_curves()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
