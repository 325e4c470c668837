"""Regexes over names: the config's patterns that name a case or a patient from a file name or case id, and the
naming convention of labels called after their image plus a suffix (ACDC's ``patient001_frame01_gt``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from medseg.errors import ConfigError

#: A name split into a stem and its last ``_``/``-``/``.`` tag: ``patient001_frame01_gt`` -> ``patient001_frame01``,
#: ``_gt``.
_SUFFIXED = re.compile(r"(.+)([_\-.][A-Za-z0-9]+)")


def compile_named(text: str, key: str, group: str) -> re.Pattern[str]:
    """``text`` compiled as the regex config key ``key`` holds, which must have the named group ``group``.

    Raises:
        ConfigError: ``text`` is no valid regex, or lacks ``(?P<group>...)``; the message names ``key``.
    """
    try:
        pattern = re.compile(text)
    except re.error as err:
        raise ConfigError(f"{key} '{text}' is not a valid regex: {err}") from None
    if group not in pattern.groupindex:
        raise ConfigError(f"{key} '{text}' needs a named group (?P<{group}>...)")
    return pattern


def shared_label_suffix(label_ids: Iterable[str], image_ids: Iterable[str]) -> str | None:
    """The one suffix that names every label after an image (``_gt``), or ``None`` when a label is not an image's
    name plus a suffix, the suffixes differ, or there is no label."""
    known = set(image_ids)
    suffixes = set()
    for label in label_ids:
        match = _SUFFIXED.fullmatch(label)
        if match is None or match.group(1) not in known:
            return None
        suffixes.add(match.group(2))
    return suffixes.pop() if len(suffixes) == 1 else None


def suffixed_labels(names: Iterable[str]) -> list[str]:
    """The names that are another of ``names`` plus a suffix (the labels among a folder's images)."""
    known = set(names)
    return [n for n in known if (m := _SUFFIXED.fullmatch(n)) is not None and m.group(1) in known]


def suffix_case_pattern(suffix: str) -> str:
    """The ``data.case_pattern`` that gives an image and its ``<image><suffix>`` label one case id."""
    return f"(?P<case>.+?)({re.escape(suffix)})?\\."
