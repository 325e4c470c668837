"""Atomic writes: a temp file in the destination folder, then ``os.replace``.

A run killed mid-write leaves either the old file or none, never a half-written mask or checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medseg.errors import OutputExistsError
from medseg.io.storage import output_storage

log = logging.getLogger(__name__)


def _suffixes(path: Path) -> str:
    # Keep the full suffix (".nii.gz") so writers that dispatch on the extension see the right one.
    return "".join(path.suffixes) or ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name.split('.')[0]}."


def _temp_name_pattern(path: Path) -> re.Pattern[str]:
    # Exactly the names atomic_path gives temp files for ``path``: prefix, tempfile's 8 random characters
    # (lower-case letters, digits, "_"), the full suffix. Nothing else in the folder can match.
    return re.compile(re.escape(_temp_prefix(path)) + r"[a-z0-9_]{8}" + re.escape(_suffixes(path)) + r"\Z")


def stale_temp_files(paths: Iterable[str | Path]) -> list[Path]:
    """Temp files :func:`atomic_path` left next to these destinations (a killed process cannot remove them).

    Args:
        paths: Final destinations (e.g. a run's mask paths, ``best.pt``); only their temp files are matched.

    Returns:
        The existing temp files, sorted.
    """
    by_folder: dict[Path, list[re.Pattern[str]]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, []).append(_temp_name_pattern(path))
    found: list[Path] = []
    for folder, patterns in by_folder.items():
        try:
            names = [e.name for e in os.scandir(folder) if e.name.startswith(".") and e.is_file()]
        except OSError:  # no such folder yet
            continue
        found += [folder / n for n in names if any(p.match(n) for p in patterns)]
    return sorted(found)


def remove_stale_temp_files(paths: Iterable[str | Path]) -> list[Path]:
    """Removes the temp files :func:`atomic_path` left next to these destinations; returns those removed.

    Call it before writing into a folder a killed run may have written into (only this run's own destinations
    are matched, so temp files of another process writing other files there are left alone). A file that
    cannot be removed (read-only folder) is left with a debug message; the write that follows says why.
    """
    removed = []
    for tmp in stale_temp_files(paths):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            log.debug("Cannot remove %s left by an interrupted write: %s", tmp, err)
            continue
        log.info("Removed %s left by an interrupted write", tmp)
        removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on success it is renamed onto ``path``.

    Args:
        path: Final destination.
        overwrite: If False and ``path`` exists, raise before writing anything.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        OutputStorageError: The folder cannot take the write: disk full, over quota, read-only, not writable
            (see ``medseg.io.storage``; other write errors pass through unchanged).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    with output_storage(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_suffixes(path), dir=path.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; outputs on a shared disk must be readable by collaborators like any other file.
        os.chmod(tmp, 0o666 & ~_umask())
        # Inside the temp file's lifetime: a writer that failed without saying why (torch's inline_container,
        # SimpleITK's NRRD writer) is judged while its partial file still takes the space it used.
        with output_storage(path.parent):
            yield tmp
            if not overwrite and path.exists():
                raise OutputExistsError(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
