"""Generated files: written into their folder, or checked against what is there (``--check``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path


def write_generated(directory: Path, files: Mapping[str, str]) -> list[Path]:
    """Write each file (name -> text) into ``directory``, made if missing; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def check_generated(directory: Path, files: Mapping[str, str], command: str) -> int:
    """The exit code of ``--check``: 1 after naming on stderr each file of ``directory`` that is
    missing or differs, with the ``command`` that writes it; 0 when every one is current."""
    stale = [
        directory / name
        for name, text in files.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]
    for path in stale:
        print(f"{path} is not current: run {command}", file=sys.stderr)
    return 1 if stale else 0
