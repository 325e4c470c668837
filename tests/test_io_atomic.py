"""Atomic writes: nothing half-written, normal permissions, no overwrite unless asked."""

from __future__ import annotations

import os
import stat

import pytest

from medseg.errors import OutputExistsError
from medseg.io.atomic import atomic_path, atomic_write_text


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644


def test_failure_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_without_overwrite(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match=r"a\.txt"):
        atomic_write_text(target, "new", overwrite=False)
    assert target.read_text() == "old"
