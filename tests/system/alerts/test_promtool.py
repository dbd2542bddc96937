"""promtool on the alert pack: the rules lint clean and pass their unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync_testing.alerting import PROMTOOL_TESTS, RULE_FILES, RequireBinary, run, run_generator

pytestmark = pytest.mark.prometheus


def test_rules_pass_promtool_check_with_lint(require_binary: RequireBinary) -> None:
    promtool = require_binary("promtool")

    result = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, RULE_FILES)])

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_scaled_rules_pass_promtool_check(require_binary: RequireBinary, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    assert run_generator("--scale", "60", "--output-dir", str(tmp_path)).returncode == 0

    result = run(
        [
            promtool,
            "check",
            "rules",
            "--lint=all",
            "--lint-fatal",
            *map(str, tmp_path.glob("*.yml")),
        ]
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(require_binary: RequireBinary, test_file: Path) -> None:
    promtool = require_binary("promtool")

    result = run([promtool, "test", "rules", str(test_file)])

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
