"""Durations as Prometheus writes them (`500ms`, `15s`, `1m30s`, `1d`), parsed in one place."""

from __future__ import annotations

import re

UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# ``ms`` before ``m`` and ``s``: the first alternative that matches wins.
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h|d)"
_DURATION = re.compile(rf"(?:{_PART})+")


def parse_duration(text: str) -> float:
    """The seconds of a duration such as ``1m30s``; a ValueError quoting ``text`` if it is none."""
    stripped = text.strip()
    if not _DURATION.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a duration (e.g. 15s, 1m30s, 500ms)")
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in re.findall(_PART, stripped))
