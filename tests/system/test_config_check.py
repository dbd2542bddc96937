"""The exporter's command with a configuration: --config.check, and mistakes found at start,
reported in one line without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MINIMAL = """
stores:
  - name: main
    url: postgresql+psycopg://exporter@db:5432/sync
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(MINIMAL)
    result = run_cli("--config.file", str(path), "--config.check")
    assert result.returncode == 0, result.stderr
    assert "valid, 1 store(s): main" in result.stdout


def test_config_check_rejects_a_bad_file_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("stores:\n  - name: main\n    url: sqlite://\n    interval: often\n")
    result = run_cli("--config.file", str(path), "--config.check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "stores[0].interval: 'often' is not a duration" in result.stderr
    assert str(path) in result.stderr


@pytest.mark.parametrize("check", [True, False])
def test_a_database_without_a_driver_is_named(tmp_path: Path, check: bool) -> None:
    path = tmp_path / "oracle.yml"
    path.write_text("stores: [{name: main, url: 'nosuchdb://u@h/db'}]\n")
    mode = ["--config.check"] if check else ["--web.listen-address", "127.0.0.1:0"]
    result = run_cli("--config.file", str(path), *mode)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "stores[0].url" in result.stderr


def test_the_password_from_the_environment_never_shows_in_the_check(tmp_path: Path) -> None:
    secret = "Sup3r-s3cret-pa55word"
    path = tmp_path / "env.yml"
    path.write_text(
        "stores: [{name: main, url: 'postgresql+psycopg://exporter@127.0.0.1:1/sync', "
        "password_env: CRMSYNC_TEST_PASSWORD}]\n"
    )
    env = {"CRMSYNC_TEST_PASSWORD": secret, "PATH": "/usr/bin:/bin"}
    result = run_cli("--config.file", str(path), "--config.check", env=env)
    assert result.returncode == 0
    assert secret not in result.stdout + result.stderr


def test_an_unset_password_variable_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "env.yml"
    path.write_text(
        "stores: [{name: main, url: 'postgresql+psycopg://u@127.0.0.1:1/d', "
        "password_env: CRMSYNC_UNSET_VARIABLE}]\n"
    )
    result = run_cli("--config.file", str(path), "--web.listen-address", "127.0.0.1:0")
    assert result.returncode == 1
    assert "environment variable CRMSYNC_UNSET_VARIABLE is not set" in result.stderr
    assert "Traceback" not in result.stderr
