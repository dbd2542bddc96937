"""The manifests generated from alerts/ and dashboards/: current, and holding exactly the rule
files promtool tests and exactly the committed dashboards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmsync_testing.kubernetes import KUBERNETES, KUSTOMIZATIONS, ROOT, of_kind, one, render

GENERATOR = KUBERNETES / "generate_manifests.py"
GENERATED = KUBERNETES / "base" / "generated"
COMMAND = "python deploy/kubernetes/generate_manifests.py"
DASHBOARD_UIDS = {"crmsync-status", "crmsync-object", "crmsync-errors", "crmsync-capacity"}


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_committed_manifests_are_current() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr


def test_check_names_each_stale_file_and_the_command_that_fixes_it(tmp_path: Path) -> None:
    assert run_generator("--output-dir", str(tmp_path)).returncode == 0
    stale = tmp_path / "dashboards.yaml"
    stale.write_text(stale.read_text().replace('"schemaVersion"', '"schemaversion"', 1))

    result = run_generator("--check", "--output-dir", str(tmp_path))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{stale} is not current: run {COMMAND}"]
    (tmp_path / "prometheus-rule.yaml").unlink()
    again = run_generator("--check", "--output-dir", str(tmp_path))
    assert f"{tmp_path / 'prometheus-rule.yaml'} is not current: run {COMMAND}" in again.stderr


def test_generating_writes_what_check_accepts(tmp_path: Path) -> None:
    assert run_generator("--output-dir", str(tmp_path)).returncode == 0
    assert {path.name for path in tmp_path.iterdir()} == {p.name for p in GENERATED.iterdir()}
    assert run_generator("--check", "--output-dir", str(tmp_path)).returncode == 0
    assert run_generator("--check", "--output-dir", str(tmp_path / "absent")).returncode == 1


def promtool_rule_files() -> list[Path]:
    """The rule files alerts/tests/*.yml load, in the order they load them."""
    files: list[Path] = []
    for test in sorted((ROOT / "alerts" / "tests").glob("*.yml")):
        for name in yaml.safe_load(test.read_text())["rule_files"]:
            path = (test.parent / name).resolve()
            if path not in files:
                files.append(path)
    return files


def test_promtool_tests_load_the_recording_then_the_alerting_rules() -> None:
    assert promtool_rule_files() == [
        ROOT / "alerts" / "recording_rules.yml",
        ROOT / "alerts" / "alerting_rules.yml",
    ]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_prometheus_rule_is_the_rule_files_promtool_tests(kustomization: str) -> None:
    rule = one(render(kustomization), "PrometheusRule")
    expected: list[Any] = []
    for path in promtool_rule_files():
        expected += yaml.safe_load(path.read_text())["groups"]
    assert rule["spec"]["groups"] == expected
    # The Operator writes one rule file per PrometheusRule: group names must be unique in it.
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_dashboard_config_maps_hold_exactly_the_committed_dashboards(
    kustomization: str,
) -> None:
    maps = [
        m
        for m in of_kind(render(kustomization), "ConfigMap")
        if m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    held: dict[str, str] = {}
    for config_map in maps:
        # One dashboard per ConfigMap: far from the 1 MiB limit of a ConfigMap, and from the
        # 256 KiB of the annotation `kubectl apply` keeps.
        assert len(config_map["data"]) == 1
        assert len(yaml.safe_dump(config_map)) < 256 * 1024
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "CRM sync"
        assert config_map["metadata"]["annotations"]["k8s-sidecar-target-directory"] == "CRM sync"
        held.update(config_map["data"])
    committed = {path.name: path.read_text() for path in (ROOT / "dashboards").glob("*.json")}
    assert held == committed
    assert {json.loads(text)["uid"] for text in held.values()} == DASHBOARD_UIDS
