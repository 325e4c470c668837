"""Helpers shared by the benchmark scripts: paths, machine description, memory readings, JSON and tables.

Nothing here imports torch at module level, so ``report.py`` renders results without loading it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Measured JSON files (what ``report.py`` reads).
OUT_DIR = REPO / "benchmarks" / "out"
#: Training runs, checkpoints and predicted masks of the benchmarks (large; ``runs/`` is git-ignored).
RUNS_DIR = REPO / "runs" / "benchmarks"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "Task04_Hippocampus"
#: Speed targets of issue 15 (issue 7 had set 0.90, 1.0 and 1.25): ``speed.py`` prints them and ``report.py``
#: judges by them.
B_OVER_A_MIN, B_OVER_C_MIN, BATCH_OVER_BARE_MAX = 0.95, 1.3, 1.15
#: Large-volume prediction: time per slice at N = 400 over N = 100 within this of 1 (issue 15).
LINEARITY_TOLERANCE = 0.15
#: Issue 17: LA2018's training step time per slice at most this times a hippocampus step of equal patch pixels.
PATCH_COST_MAX = 1.3


def ensure_repo_on_path() -> None:
    """Makes ``import medseg`` work when a script is run as ``python benchmarks/x.py`` without installing."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------------------------- memory


def proc_status_mb(key: str, pid: int | str = "self") -> float | None:
    """A ``/proc/<pid>/status`` memory field in MiB (``VmRSS`` = now, ``VmHWM`` = peak), or None off Linux."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except OSError:
        return None
    return None


def children_peak_rss_mb() -> float | None:
    """Peak RSS of the largest waited-for child process (``getrusage(RUSAGE_CHILDREN)``), in MiB."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # Linux reports kB


class RssSampler:
    """Samples this process's ``VmRSS`` in a background thread, with a caller-supplied progress counter.

    Args:
        progress: Returns how much work is done (e.g. the number of masks written so far).
        interval: Seconds between samples.

    Attributes:
        samples: ``(seconds since start, progress, rss MiB)`` tuples.
    """

    def __init__(self, progress: Callable[[], int], interval: float = 0.05) -> None:
        self.progress = progress
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0

    def _sample(self) -> None:
        rss = proc_status_mb("VmRSS")
        if rss is not None:
            self.samples.append((time.perf_counter() - self._start, int(self.progress()), rss))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def rss_at(self, done: int) -> float | None:
        """RSS at the first sample where at least ``done`` units were finished (None if never reached)."""
        for _, progress, rss in self.samples:
            if progress >= done:
                return rss
        return None

    def max_rss_after(self, done: int) -> float | None:
        """Largest RSS over the samples taken once ``done`` units were finished."""
        values = [rss for _, progress, rss in self.samples if progress >= done]
        return max(values) if values else None


# ------------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    # Read-only queries; GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing (writing) the index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, library versions, commit, load at the start."""
    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        info["load_avg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        from medseg.inference.precision import cpu_supports_bf16

        info["cpu_native_bf16"] = cpu_supports_bf16()
    except ImportError:
        pass
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is not None:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        info["git_commit"] = commit + ("+uncommitted changes" if dirty else "")
    return info


def command_line() -> str:
    """The command that produced a result, as it would be typed from the repository root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


# ------------------------------------------------------------------------------------------ JSON, stats


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: an undefined metric (e.g. HD95 of an empty mask) is null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Writes ``data`` as indented JSON, atomically (a killed benchmark never leaves half a file)."""
    ensure_repo_on_path()
    from medseg.io.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    return path


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation of the finite values (std None for fewer than two), and their count."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None, None, 0
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None, len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var), len(finite)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std`` (or just the mean when there is no spread)."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (for the console)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    """A target's verdict cell: ``met``, ``**missed**`` (bold, to stand out), or ``–`` when there is no target."""
    return "–" if ok is None else ("met" if ok else "**missed**")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (for RESULTS.md)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join((c if isinstance(c, str) else fmt(c)).replace("|", "\\|") for c in row) + " |")
    return "\n".join(out)
