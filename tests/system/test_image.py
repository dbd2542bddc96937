"""The container image installs the runtime alone: its build, repeated here as the Dockerfile
runs it (the same files, the same edit, pip), makes a wheel of the exporter package only."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def build_stage() -> str:
    """The instructions of the stage that installs the runtime (``AS build``)."""
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)
    (stage,) = [text for text in stages if re.match(r"\S+ AS build\n", text)]
    return re.sub(r"\\\n", " ", stage)


def test_the_image_installs_the_exporter_package_and_its_command_only(tmp_path: Path) -> None:
    stage = build_stage()
    copied = [line.split()[1:-1] for line in stage.splitlines() if line.startswith("COPY ")]
    assert copied == [["pyproject.toml", "README.md"], ["exporter"]]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "exporter", source / "exporter", ignore=shutil.ignore_patterns("__pycache__")
    )
    edits = re.findall(r"sed -i '([^']+)' pyproject\.toml", stage)
    assert edits, "the build stage no longer edits pyproject.toml"
    for edit in edits:
        subprocess.run(["sed", "-i", edit, str(source / "pyproject.toml")], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("crmsync_exporter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    packages = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"exporter"}
    assert {f"exporter/{path.name}" for path in (ROOT / "exporter").glob("*.py")} <= set(names)
    commands = re.findall(r"^(\S+) = (\S+)$", scripts, flags=re.MULTILINE)
    assert commands == [("crmsync-exporter", "exporter.cli:main")]
