"""``<output.dir>/report.html``: one self-contained page per run (what ran, how training went, which scans to check).

:func:`write_report` rebuilds the page from what the run left on disk, so each stage can call it when it ends and
the page grows as the run goes (a batch prediction also calls it while it runs):

- **Run**: the command, medseg/torch versions, the machine, time per stage (``run.json``, kept by
  :func:`record_stage`), the data plan (``plan.json`` when present) and the resolved config;
- **Training**: loss, learning rate and validation Dice per class by epoch (``train/metrics.csv``), best epoch,
  stop reason and postprocessing decision (``checkpoints/best.pt``);
- **Prediction**: every scan of ``predictions/predictions.csv`` with status, class volumes and QC flags; failed
  scans first, then flagged ones by ``qc_score``;
- **Evaluation**: mean/median/spread per class (``evaluation/summary.json``), Dice per case as a plot and a table
  (``evaluation/metrics.csv``), the best and worst overlays (``evaluation/overlays/*.png``).

The page needs nothing but itself: pictures are embedded PNG (``data:`` URIs), the CSS is inline, there is no
remote script or font; it reads on a phone (tables scroll sideways, the layout is one column) and prints (no
shadows, tables not cut through rows). Tables sort by a click on a column header (a few lines of inline
JavaScript; without JavaScript they stay in the order described above). It is written atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.class_display import class_palette, listed, plot_class_curves
from medseg.data.regions import Regions
from medseg.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
RUN_RECORD = "run.json"

_CSS = """
:root{--fg:#1d2430;--muted:#5b6573;--line:#d7dce3;--bg:#fff;--head:#f1f4f8;--bad:#b42318;--warn:#9a6700;--ok:#1a7f37}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;max-width:1100px;padding:12px}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.25em;border-bottom:2px solid var(--line);padding-bottom:.2em;
margin-top:1.6em}h3{font-size:1.05em}
nav a{margin-right:1em}
.muted{color:var(--muted)}.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn)}.ok{color:var(--ok)}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid var(--line);border-radius:6px;padding:6px 10px;
min-width:9em}.card b{display:block;font-size:1.2em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
th{background:var(--head);position:sticky;top:0}
table.sortable th{cursor:pointer}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fdecea}tr.flagged td{background:#fff8e1}
img{max-width:100%;height:auto;border:1px solid var(--line)}
figure{margin:.5em 0}figcaption{color:var(--muted);font-size:.85em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px}
pre{background:var(--head);padding:8px;overflow-x:auto;font-size:.8em;white-space:pre-wrap;word-break:break-word}
details{margin:.5em 0}
@media (max-width:600px){body{font-size:14px;padding:6px}th,td{padding:2px 4px}}
@media print{nav,.noprint{display:none}body{max-width:none;font-size:11px}th{position:static}
h2{break-after:avoid}tr,img,figure{break-inside:avoid}.scroll{overflow:visible}a{color:inherit}}
"""

# Click a header to sort that table; numbers sort as numbers, empty cells last. No JavaScript: the page still
# reads in its written order.
_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){t.querySelectorAll('th').forEach(function(h,i){
h.addEventListener('click',function(){var b=t.tBodies[0],r=Array.prototype.slice.call(b.rows),
d=h.dataset.dir==='asc'?-1:1;h.dataset.dir=d===1?'asc':'desc';r.sort(function(x,y){
var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent,
p=parseFloat(a),q=parseFloat(c);if(a===''&&c!=='')return 1;if(c===''&&a!=='')return -1;
if(!isNaN(p)&&!isNaN(q))return d*(p-q);return d*a.localeCompare(c);});
r.forEach(function(e){b.appendChild(e);});});});});
document.documentElement.setAttribute('data-report-js','ok');
"""


# ------------------------------------------------------------------------------------------------- run record


def record_stage(root: Path, stage: str, seconds: float, *, command: str | None = None) -> None:
    """Adds a finished stage (and the command that ran it) to ``<root>/run.json``, for the report's run section.

    Args:
        root: ``output.dir``.
        stage: ``train`` | ``predict`` | ``evaluate``.
        seconds: Wall-clock time the stage took.
        command: The command line of this run.
    """
    path = Path(root) / RUN_RECORD
    record = _read_json(path) or {}
    stages = record.get("stages") or {}
    stages[stage] = {"seconds": round(float(seconds), 2), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    record["stages"] = stages
    if command:
        record["command"] = command
    try:
        atomic_write_text(path, json.dumps(record, indent=1))
    except OSError as err:  # the record only feeds the report; the stage's own outputs are what matter
        log.warning("Could not write '%s': %s", path, err)


def command_line() -> str:
    """This process's command line, as a user would type it (``python -m pipelines.run ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("pipelines", "run.py")):
        return " ".join(["python -m pipelines.run", *argv[1:]])
    return " ".join(["python", *argv]) if argv else ""


# ---------------------------------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _num(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _fmt(value: Any, digits: int = 3) -> str:
    number = _num(value)
    if number is None:
        return html.escape(str(value or ""))
    if float(number).is_integer() and abs(number) < 1e9:
        return str(int(number))
    # Significant digits for large and for small numbers: a learning rate of 1e-4 is not 0.000.
    tiny = 0 < abs(number) < 0.01
    return f"{number:.{digits}g}" if abs(number) >= 1000 or tiny else f"{number:.{digits}f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    classes: Sequence[str] | None = None,
    sortable: bool = True,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for cell in row:
            number = _num(cell)
            if number is not None:
                cells.append(f'<td class="num" data-v="{number:.6g}">{_fmt(cell)}</td>')
            else:
                cells.append(f"<td>{_e(cell if cell is not None else '')}</td>")
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    kind = ' class="sortable"' if sortable else ""
    return (
        f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def _cards(items: Sequence[tuple[str, Any]]) -> str:
    return (
        '<div class="cards">' + "".join(f'<div class="card"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in items) + "</div>"
    )


# --------------------------------------------------------------------------------------------------- sections


def _machine() -> list[tuple[str, str]]:
    import medseg

    rows = [("medseg", medseg.__version__), ("python", platform.python_version())]
    try:
        import torch

        rows.append(("torch", str(torch.__version__)))
        rows.append(("CUDA", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"))
        rows.append(("torch threads", str(torch.get_num_threads())))
    except Exception:  # pragma: no cover - torch is a dependency; the report must still render without it
        rows.append(("torch", "not importable"))
    rows += [("machine", f"{platform.node()} ({platform.platform()})"), ("CPUs", str(os.cpu_count()))]
    return rows


def _section_run(root: Path, checkpoint: dict[str, Any] | None) -> str:
    record = _read_json(root / RUN_RECORD) or {}
    parts = ['<section id="run"><h2>Run</h2>']
    if record.get("command"):
        parts.append(f"<p>Command: <code>{_e(record['command'])}</code></p>")
    parts.append(f"<p class='muted'>Output folder: <code>{_e(root.resolve())}</code></p>")
    stages = record.get("stages") or {}
    if stages:
        rows = [(s, v.get("seconds"), v.get("finished", "")) for s, v in stages.items()]
        parts.append("<h3>Time per stage</h3>" + _table(["stage", "seconds", "finished"], rows, sortable=False))
    parts.append("<h3>Software and machine</h3>" + _table(["", "value"], _machine(), sortable=False))
    if checkpoint and checkpoint.get("versions"):
        trained = ", ".join(f"{k} {v}" for k, v in sorted(checkpoint["versions"].items()))
        parts.append(f"<p class='muted'>Model trained with: {_e(trained)}</p>")
    plan = _read_json(root / "plan.json")
    if plan is not None:
        parts.append(
            "<details open><summary>Data plan (plan.json)</summary>"
            f"<pre>{_e(json.dumps(plan, indent=1))}</pre></details>"
        )
    cfg = root / "config.resolved.yaml"
    if cfg.is_file():
        parts.append(
            f"<details><summary>Resolved config</summary><pre>{_e(cfg.read_text(encoding='utf-8'))}</pre></details>"
        )
    return "".join(parts) + "</section>"


def _load_checkpoint(root: Path, name: str = "best.pt") -> dict[str, Any] | None:
    path = root / "checkpoints" / name
    if not path.is_file():
        return None
    try:
        from medseg.training.checkpoint import load_checkpoint

        return load_checkpoint(path)
    except Exception as err:  # a report must never fail a run: say what is missing instead
        log.warning("report: cannot read %s: %s", path, err)
        return None


def _section_training(root: Path, checkpoint: dict[str, Any] | None) -> str:
    rows = _read_csv(root / "train" / "metrics.csv")
    if not rows and checkpoint is None:
        return ""
    parts = ['<section id="training"><h2>Training</h2>']
    if checkpoint is not None:
        last = _load_checkpoint(root, "last.pt")
        classes = list(checkpoint.get("classes") or [])
        plan = checkpoint.get("postprocessing") or {}

        def names(key: str) -> str:
            return ", ".join(classes[c] for c in plan.get(key, []) if 0 < c < len(classes)) or "none"

        qc_ref = checkpoint.get("qc_reference")
        parts.append(
            _cards(
                [
                    ("best epoch", checkpoint.get("best_epoch", "")),
                    ("best mean val Dice", _fmt(checkpoint.get("best_dice"), 4)),
                    # best.pt holds the state at the best epoch; the run went on to last.pt's.
                    ("epochs run", (last or checkpoint).get("epoch", "")),
                    ("stopped by", (last or checkpoint).get("stop_reason") or "running"),
                ]
            )
        )
        stored = checkpoint.get("label_values")
        regions = Regions.from_stored(checkpoint.get("regions"))
        if regions is not None:
            parts.append(
                f"<p>{_e(regions.describe())}. Each region is scored as its own mask; predicted masks are written "
                "with the painted values.</p>"
            )
        elif stored and len(stored) == len(classes):
            shown = ", ".join(f"{name} = {value}" for name, value in zip(classes, stored, strict=True))
            parts.append(f"<p>Label files store the classes as {_e(shown)}; predicted masks are written so.</p>")
        parts.append(
            "<p>Postprocessing decided on the validation cases: largest component "
            f"<b>{_e(names('largest_component'))}</b>, "
            f"fill holes <b>{_e(names('fill_holes'))}</b>"
            + ("" if checkpoint.get("postprocessing_decided") else " (not decided yet)")
            + ".</p>"
        )
        if qc_ref:
            parts.append(
                f"<p>QC reference: {_e(qc_ref.get('n_train'))} training scans, {_e(qc_ref.get('n_val'))} validation "
                "predictions"
                + (
                    f" (the default output thresholds flag {_e(qc_ref['val_flagged_by_default'])} of them)"
                    if "val_flagged_by_default" in qc_ref
                    else ""
                )
                + ".</p>"
            )
        else:
            parts.append("<p class='warn'>This checkpoint has no QC reference: predictions get no QC flags.</p>")
    if rows:
        parts.append(
            f"<figure><img alt='training curves' src='{_training_plot(rows)}'>"
            "<figcaption>Loss and learning rate per epoch (left); validation Dice per class (right)."
            "</figcaption></figure>"
        )
        headers = list(rows[0].keys())
        parts.append(
            "<details><summary>Per-epoch table (train/metrics.csv)</summary>"
            + _table(headers, [[r.get(h, "") for h in headers] for r in rows])
            + "</details>"
        )
    return "".join(parts) + "</section>"


def _training_plot(rows: list[dict[str, str]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [_num(r.get("epoch")) or 0.0 for r in rows]  # metrics.csv always has the epoch
    # Constrained layout keeps room for the twin axis and for a legend beside the axes (tight_layout cannot).
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    loss = [_num(r.get("train_loss")) for r in rows]
    ax1.plot(epochs, loss, "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [_num(r.get("lr")) for r in rows], "--", color="tab:gray", label="learning rate")
    ax2.set_ylabel("learning rate", color="tab:gray")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    class_keys = [k for k in rows[0] if k.startswith("val_dice_") and k != "val_dice_mean"]
    plot_class_curves(ax3, epochs, {k[len("val_dice_") :]: [_num(r.get(k)) for r in rows] for k in class_keys})
    pts = [(e, d) for e, r in zip(epochs, rows, strict=True) if (d := _num(r.get("val_dice_mean"))) is not None]
    if pts:
        ax3.plot(*zip(*pts, strict=True), "k-", lw=2, label="mean")
    ax3.set_xlabel("epoch")
    for ax in (ax1, ax3):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax3.set_ylabel("validation Dice")
    ax3.set_ylim(0, 1)
    ax3.grid(alpha=0.3)
    if ax3.lines:
        ax3.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def _section_prediction(root: Path) -> str:
    rows = _read_csv(root / "predictions" / "predictions.csv")
    if not rows:
        return ""
    n_failed = sum(r.get("status") == "failed" for r in rows)
    n_flagged = sum(bool(r.get("qc_flags")) for r in rows)
    qc_known = any(r.get("qc_score") for r in rows)

    def order(r: dict[str, str]) -> tuple[int, float, str]:
        failed = r.get("status") == "failed"
        return (0 if failed else 1 if r.get("qc_flags") else 2, -(_num(r.get("qc_score")) or 0.0), r.get("case", ""))

    rows = sorted(rows, key=order)
    volume_cols = [c for c in rows[0] if c.startswith("volume_ml_")]
    # Many classes: a column per class would make the table a hundred columns wide; the CSV keeps them all.
    per_class = listed(len(volume_cols))
    volume_headers = (
        [f"{c[len('volume_ml_') :]} (mL)" for c in volume_cols] if per_class else ["classes found", "foreground (mL)"]
    )

    def volumes(r: dict[str, str]) -> list[Any]:
        if per_class:
            return [r.get(c, "") for c in volume_cols]
        known = [v for c in volume_cols if (v := _num(r.get(c))) is not None]
        return [sum(v > 0 for v in known), sum(known)] if known else ["", ""]

    headers = ["case", "status", *volume_headers, "qc_score", "qc_flags", "error", "seconds"]
    table_rows, classes = [], []
    for r in rows:
        table_rows.append(
            [
                r.get("case", ""),
                r.get("status", ""),
                *volumes(r),
                r.get("qc_score", ""),
                r.get("qc_flags", "").replace(";", ";\n"),
                r.get("error", ""),
                r.get("seconds", ""),
            ]
        )
        classes.append("failed" if r.get("status") == "failed" else "flagged" if r.get("qc_flags") else "")
    parts = ['<section id="prediction"><h2>Prediction</h2>']
    parts.append(_cards([("scans", len(rows)), ("failed", n_failed), ("QC flagged", n_flagged if qc_known else "n/a")]))
    if not qc_known:
        parts.append(
            "<p class='warn'>No QC for these scans: the checkpoint has no QC reference (a last.pt, or trained "
            "before QC existed) or QC is off (inference.qc.enabled).</p>"
        )
    parts.append(
        "<p class='muted'>Failed scans first, then scans flagged by QC (highest qc_score first): look at "
        "these masks first. qc_score &ge; 1 means flagged; see medseg.inference.qc for the checks."
        + ("" if per_class else f" Volumes of each of the {len(volume_cols)} classes: predictions/predictions.csv.")
        + "</p>"
    )
    parts.append(_table(headers, table_rows, classes=classes))
    return "".join(parts) + "</section>"


def _dice_plot(per_case: dict[str, dict[str, float]], class_names: list[str]) -> tuple[str, str]:
    """The Dice figure and its caption: per case (up to ``MAX_LISTED`` classes) or per class (more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_of(values: list[float]) -> float:
        known = [v for v in values if np.isfinite(v)]
        return float(np.mean(known)) if known else float("nan")

    if not listed(len(class_names)):
        # Many classes: which structures fail matters more than which case; one column per class.
        by_class = {n: [per_case[c].get(n, np.nan) for c in per_case] for n in class_names}
        rank = {n: k for k, n in enumerate(class_names)}  # ties in label order
        order = sorted(class_names, key=lambda n: (np.nan_to_num(mean_of(by_class[n]), nan=-1.0), rank[n]))
        fig, ax = plt.subplots(figsize=(min(max(10.0, 0.16 * len(order)), 24.0), 3.6), layout="constrained")
        x = np.arange(len(order))
        for k, name in enumerate(order):
            ax.plot(np.full(len(by_class[name]), k), by_class[name], "o", ms=3, color="0.6", alpha=0.6)
        ax.plot(x, [mean_of(by_class[n]) for n in order], "k_", ms=10, mew=2, label="mean over cases")
        ax.plot([], [], "o", ms=3, color="0.6", label="one case")
        ax.set_xticks(x)
        ax.set_xticklabels(order, rotation=90, fontsize=7 if len(order) <= 60 else 5)
        ax.set_xlabel("class (sorted by mean Dice)")
        caption = (
            f"Dice per class over the cases, {len(order)} classes sorted by mean Dice: the structures that fail sit "
            "at the left."
        )
    else:
        cases = sorted(per_case, key=lambda c: mean_of([per_case[c].get(n, np.nan) for n in class_names]))
        fig, ax = plt.subplots(figsize=(10, 3.2), layout="constrained")
        x = np.arange(len(cases))
        for name, colour in zip(class_names, class_palette(len(class_names)), strict=True):
            ax.plot(x, [per_case[c].get(name, np.nan) for c in cases], "o", ms=4, color=colour, label=name)
        means = [mean_of([per_case[c].get(n, np.nan) for n in class_names]) for c in cases]
        ax.plot(x, means, "k-", lw=1, label="mean")
        ax.set_xlabel("case (sorted by mean Dice)")
        if len(cases) <= 40:
            ax.set_xticks(x)
            ax.set_xticklabels(cases, rotation=70, fontsize=7)
        caption = "Dice per case and class, cases sorted by mean Dice: outliers sit at the left."
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig), caption


def _both_empty_note(summary: dict[str, Any]) -> str:
    """How the Dice means treat classes absent from both masks, where there are any (``evaluation.both_empty``)."""
    pairs = sum((m.get("flags") or {}).get("both_empty", 0) for m in (summary.get("classes") or {}).values())
    if not pairs:
        return ""
    if summary.get("both_empty") == "skip":
        how = "are left out of the Dice means (evaluation.both_empty: skip)"
        left_out = summary.get("n_evaluated", 0) - summary.get("n_in_mean_dice", summary.get("n_evaluated", 0))
        if left_out:
            how += f"; {left_out} case(s) had no class left and are not in the mean Dice"
    else:
        how = (
            "count as Dice 1 (evaluation.both_empty: one); where many structures lie outside many scans, "
            "evaluation.both_empty: skip leaves them out of the means"
        )
    return f"<p class='muted'>{pairs} case/class pair(s) absent from both masks {_e(how)}.</p>"


def _section_evaluation(root: Path) -> str:
    folder = root / "evaluation"
    summary = _read_json(folder / "summary.json")
    rows = _read_csv(folder / "metrics.csv")
    if summary is None and not rows:
        return ""
    parts = ['<section id="evaluation"><h2>Evaluation</h2>']
    if summary:
        parts.append(
            _cards(
                [
                    ("mean Dice", _fmt(summary.get("mean_dice"), 4)),
                    ("cases", summary.get("n_evaluated", "")),
                    ("failed", summary.get("n_failed", 0)),
                ]
            )
        )
        parts.append(_both_empty_note(summary))
        # One row per class (sortable by any column): with dozens of structures, a row per class and metric
        # made the table four times as long and hid which class is worst.
        stats_rows = []
        for name, metrics in (summary.get("classes") or {}).items():
            dice, hd95, assd, nsd, vol = (
                (metrics.get(m) or {}) for m in ("dice", "hd95_mm", "assd_mm", "nsd", "vol_diff_ml")
            )
            flags = ", ".join(f"{k} {v}" for k, v in (metrics.get("flags") or {}).items() if v)
            stats_rows.append(
                [
                    name,
                    *(dice.get(k) for k in ("mean", "median", "std", "n")),
                    *(hd95.get(k) for k in ("mean", "median")),
                    assd.get("mean"),
                    nsd.get("mean"),
                    vol.get("mean"),
                    flags,
                ]
            )
        if stats_rows:
            headers = ["class", "Dice mean", "Dice median", "Dice std", "cases"]
            tolerance = summary.get("nsd_tolerance_mm")
            nsd_header = f"NSD at {_fmt(tolerance)} mm mean" if tolerance is not None else "NSD mean"
            headers += ["HD95 mean (mm)", "HD95 median (mm)", "ASSD mean (mm)", nsd_header, "volume diff mean (mL)"]
            headers += ["flags"]
            parts.append("<h3>Per class</h3>" + _table(headers, stats_rows))
        failed = summary.get("failed_cases") or []
        if failed:
            parts.append(
                "<p class='bad'>Not evaluated: "
                + _e("; ".join(f"{f.get('case')}: {f.get('error')}" for f in failed))
                + "</p>"
            )
    if rows:
        per_case: dict[str, dict[str, float]] = {}
        for r in rows:
            d = _num(r.get("dice"))
            if d is not None:
                per_case.setdefault(r.get("case", ""), {})[r.get("class", "")] = d
        # Class order as in metrics.csv (label order), not alphabetical: organ_10 does not come before organ_2.
        class_names = list(dict.fromkeys(r["class"] for r in rows if r.get("class")))
        if per_case:
            figure, caption = _dice_plot(per_case, class_names)
            parts.append(
                f"<figure><img alt='Dice per case' src='{figure}'><figcaption>{_e(caption)}</figcaption></figure>"
            )
        headers = [h for h in rows[0] if h != "flag" or any(r.get("flag") for r in rows)]
        parts.append("<h3>Per case</h3>" + _table(headers, [[r.get(h, "") for h in headers] for r in rows]))
    overlays = sorted((folder / "overlays").glob("*.png")) if (folder / "overlays").is_dir() else []
    if overlays:
        figs = "".join(
            f"<figure><img alt='{_e(p.stem)}' src='{_file_png(p)}'><figcaption>{_e(p.stem)}</figcaption></figure>"
            for p in overlays
        )
        parts.append(f"<h3>Best and worst cases</h3><div class='grid'>{figs}</div>")
    return "".join(parts) + "</section>"


# -------------------------------------------------------------------------------------------------------- page


def render_report(root: str | Path) -> str:
    """The report page for the run in ``root`` (``output.dir``) as an HTML string (see the module docstring)."""
    root = Path(root)
    checkpoint = _load_checkpoint(root)
    sections = [
        _section_run(root, checkpoint),
        _section_training(root, checkpoint),
        _section_prediction(root),
        _section_evaluation(root),
    ]
    nav = " ".join(
        f'<a href="#{s}">{s.capitalize()}</a>'
        for s in ("run", "training", "prediction", "evaluation")
        if f'id="{s}"' in "".join(sections)
    )
    title = f"medseg report: {root.resolve().name}"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p class='muted'>Updated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"
        f"<nav class='noprint'>{nav}</nav></header>" + "".join(sections) + f"<script>{_JS}</script></body></html>\n"
    )


def write_report(root: str | Path) -> Path | None:
    """Writes ``<root>/report.html`` atomically; a failure is logged, never raised (a report must not stop a run).

    Returns:
        The report's path, or ``None`` when it could not be written.
    """
    path = Path(root) / REPORT_NAME
    try:
        atomic_write_text(path, render_report(root))
    except Exception as err:
        log.warning("Could not write the run report '%s': %s", path, err, exc_info=True)
        return None
    return path


class ReportUpdater:
    """Rewrites the report at most every ``min_seconds`` (for a long batch prediction to call as it goes).

    Args:
        root: ``output.dir``.
        min_seconds: Least time between two rewrites (rendering embeds plots: about a second).
    """

    def __init__(self, root: str | Path, min_seconds: float = 30.0) -> None:
        self.root = Path(root)
        self.min_seconds = float(min_seconds)
        self._last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._last >= self.min_seconds:
            write_report(self.root)
            self._last = time.monotonic()
