"""Telling a storage fault (disk full, over quota, read-only, not writable) from a problem with one file.

A batch job records a bad case and goes on, but when the output folder cannot take writes every later case
would fail the same way: the run must stop with one message naming the folder and the reason. Writers report
such faults differently: ``OSError`` with an errno (nibabel, Python's own file writes), a ``RuntimeError`` whose
text holds the errno's message (SimpleITK's MetaImage writer, torch on a read-only disk), or a ``RuntimeError``
with no reason at all (SimpleITK's NRRD writer, torch's ``inline_container`` on a full disk: measured on a
full tmpfs). For the last kind the folder itself is examined (read-only flag, write permission, free space).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import OutputStorageError

#: errno -> the reason given to the user, for faults of the storage rather than of one file.
STORAGE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
}

#: Free space below which a write that failed without a reason is taken to have hit a full disk.
LOW_SPACE_BYTES = 1 << 20


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _existing(folder: Path) -> Path:
    # A folder that a failed mkdir did not create: examine the nearest one that exists.
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return folder


def folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot take writes (read-only, not writable, no free space), or None if it looks fine."""
    where = _existing(Path(folder))
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return STORAGE_ERRNOS[errno.EROFS]
    if not os.access(where, os.W_OK):
        return STORAGE_ERRNOS[errno.EACCES]
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE_BYTES:
        return f"{STORAGE_ERRNOS[errno.ENOSPC]} ({free} bytes free)"
    return None


def storage_problem(err: BaseException, folder: str | Path) -> str | None:
    """The reason when ``err``, raised while writing into ``folder``, is a fault of the storage; else None.

    Args:
        err: The exception a writer raised.
        folder: The folder it was writing into.

    Returns:
        A short reason (``"the disk is full"``, ``"the file system is read-only"``, ...) or None when the error
        belongs to the one file (e.g. a folder where the file should go), so the caller treats it per case.
    """
    chain = list(_chain(err))
    for e in chain:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return STORAGE_ERRNOS[e.errno]
    text = " ".join(str(e) for e in chain)
    for code, reason in STORAGE_ERRNOS.items():
        if os.strerror(code) in text:
            return reason
    if any(isinstance(e, OSError) and e.errno is not None for e in chain):
        return None  # an errno that is not a storage fault (EISDIR, ENAMETOOLONG, ...): this file's problem
    return folder_problem(folder)


@contextlib.contextmanager
def output_storage(folder: str | Path, detail: str = "") -> Iterator[None]:
    """Turns a storage fault raised inside the block into :class:`OutputStorageError` naming ``folder``.

    Other errors pass through unchanged. An :class:`OutputStorageError` from an inner block (e.g. the one
    :func:`medseg.io.atomic.atomic_path` raises) keeps its folder and reason and gets ``detail`` added.

    Args:
        folder: The folder the block writes into.
        detail: Appended to the message (e.g. what was kept).

    Raises:
        OutputStorageError: The block failed because ``folder`` cannot take writes.
    """
    try:
        yield
    except OutputStorageError as err:
        if not detail or err.detail:
            raise
        raise OutputStorageError(err.folder, err.reason, detail) from err
    except (OSError, RuntimeError) as err:
        reason = storage_problem(err, folder)
        if reason is None:
            raise
        raise OutputStorageError(folder, reason, detail) from err
