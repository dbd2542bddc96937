"""Generated files: written, and ``--check`` naming each file that is missing or differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync_tools.generated_files import check_generated, write_generated

FILES = {"a.yml": "a: 1\n", "b.json": '{"b": "é"}\n'}


def test_written_files_are_current_and_read_back_as_given(tmp_path: Path) -> None:
    folder = tmp_path / "made" / "here"
    assert write_generated(folder, FILES) == [folder / "a.yml", folder / "b.json"]
    assert {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()} == FILES
    assert check_generated(folder, FILES, "make-them") == 0


def test_check_names_each_missing_or_different_file_and_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_generated(tmp_path, FILES)
    (tmp_path / "b.json").write_text('{"b": "e"}\n', encoding="utf-8")
    assert check_generated(tmp_path, {**FILES, "c.txt": "c"}, "make-them") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path / 'b.json'} is not current: run make-them",
        f"{tmp_path / 'c.txt'} is not current: run make-them",
    ]
    assert (tmp_path / "a.yml").read_text(encoding="utf-8") == FILES["a.yml"]
    assert not (tmp_path / "c.txt").exists(), "a check writes nothing"
