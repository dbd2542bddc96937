"""The rule generator: committed rules are current, the configuration is validated, and every
rule follows the pack's conventions and has promtool test cases."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmsync_testing.alerting import (
    ALERTS,
    PROMTOOL_TESTS,
    ROOT,
    RULE_FILES,
    load_yaml,
    rules,
    run,
    run_generator,
)

RUNBOOK = ROOT / "docs" / "runbook.md"
RECORD_NAME = re.compile(r"^[a-z_]+:crmsync_[a-z_]+:[a-z0-9_]+$")
DASHBOARD_VARIABLES = {
    "crmsync-status": {"store"},
    "crmsync-object": {"store", "object", "direction"},
    "crmsync-errors": {"store", "object", "error_code"},
}


def alerting_rules() -> list[dict[str, Any]]:
    return rules(ALERTS / "alerting_rules.yml")


def recording_rules() -> list[dict[str, Any]]:
    return rules(ALERTS / "recording_rules.yml")


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in alerting_rules()})


def test_committed_rules_are_current() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    for path in RULE_FILES:
        shutil.copy(path, tmp_path / path.name)
    stale = tmp_path / "alerting_rules.yml"
    stale.write_text(stale.read_text().replace("for: 5m", "for: 6m", 1))

    result = run_generator("--check", "--output-dir", str(tmp_path))

    assert result.returncode == 1
    assert "alerting_rules.yml is not current" in result.stderr
    assert "recording_rules.yml" not in result.stderr


def _config_with(tmp_path: Path, path: str, value: Any) -> Path:
    """The committed configuration with one key (dotted path) replaced or, for None, removed."""
    config = load_yaml(ALERTS / "config.yaml")
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    target = tmp_path / "config.yaml"
    target.write_text(yaml.safe_dump(config), encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("backlog.critical.for", "5 minutes", "backlog.critical.for: expected a duration"),
        ("backlog.limit", -3, "backlog.limit: expected 1 to"),
        ("backlog.window", None, "backlog.window: missing"),
        ("freshness.warning.agee", "1h", "freshness.warning.agee: unknown key"),
        ("latency_slo.threshold", "20m", "latency_slo.threshold: must be a histogram bucket"),
        ("latency_slo.target", 1, "latency_slo.target: expected a value between 0 and 1"),
        ("error_code.rare_share", 0.6, "error_code.rare_share: must be smaller than"),
        ("error_ratio.warning.ratio", "5%", "error_ratio.warning.ratio: expected a number"),
        ("selector", "crmsync", "selector: expected label matchers"),
        ("urls.grafana", "grafana:3000", "urls.grafana: expected an http(s) URL"),
        ("gap_tolerance", "10m", "gap_tolerance: must be shorter than stall.window"),
        ("stall.max_work_share", 1.5, "stall.max_work_share: expected 0 to 1"),
        ("error_ratio.min_attempts", 0, "error_ratio.min_attempts: expected 1 to"),
        ("latency_slo.min_changes", None, "latency_slo.min_changes: missing"),
        ("open_id_gaps.limit", "many", "open_id_gaps.limit: expected a number"),
        ("keep_firing_for", "soon", "keep_firing_for: expected a duration"),
        ("collection_failures.recent", "1h", "collection_failures.recent: must be shorter"),
    ],
)
def test_invalid_configuration_is_reported_with_its_key(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    config = _config_with(tmp_path, path, value)

    result = run_generator("--config", str(config), "--output-dir", str(tmp_path / "out"))

    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_burn_rate_entry_errors_name_their_index(tmp_path: Path) -> None:
    config = load_yaml(ALERTS / "config.yaml")
    config["latency_slo"]["burn_rates"][1]["short"] = "12h"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    result = run_generator("--config", str(path), "--output-dir", str(tmp_path))

    assert result.returncode == 2
    assert "latency_slo.burn_rates[1].short: must be shorter than long" in result.stderr


def test_configuration_drives_the_rules(tmp_path: Path) -> None:
    data = load_yaml(ALERTS / "config.yaml")
    data["selector"] = 'job="crm", env="prod"'
    data["urls"]["grafana"] = "https://grafana.internal/"
    data["stall"]["window"] = "30m"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")

    result = run_generator("--config", str(config), "--output-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    stalled = next(
        r for r in rules(tmp_path / "alerting_rules.yml") if r["alert"] == "CrmSyncStalled"
    )
    assert "[5m])) > 1800\n" in stalled["expr"]
    assert 'crmsync_records_synced_total{job="crm", env="prod"}[30m]' in stalled["expr"]
    assert 'crmsync_up{job="crm", env="prod"}[5m]' in stalled["expr"]
    assert stalled["annotations"]["dashboard_url"].startswith("https://grafana.internal/d/")


def test_scaled_rules_divide_every_duration_and_keep_the_names(tmp_path: Path) -> None:
    result = run_generator("--scale", "60", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr

    scaled_records = rules(tmp_path / "recording_rules.yml")
    assert [r["record"] for r in scaled_records] == [r["record"] for r in recording_rules()]
    scaled = {
        (r["alert"], r["labels"]["severity"], r["labels"].get("long")): r
        for r in rules(tmp_path / "alerting_rules.yml")
    }
    stalled = scaled[("CrmSyncStalled", "critical", None)]
    assert stalled["for"] == "5s"
    assert stalled["keep_firing_for"] == "10s"
    assert "[5s])) > 10\n" in stalled["expr"]  # gap tolerance 5m, stall window 10m
    assert "[10s]" in stalled["expr"]
    burn = scaled[("CrmSyncLatencyBudgetBurn", "warning", "3d")]
    assert burn["for"] == "3m"
    assert burn["labels"]["short"] == "6h"  # names and labels keep the nominal windows
    within = next(
        r for r in scaled_records if r["record"].endswith("within_objective:ratio_rate3d")
    )
    assert "[1h12m]" in within["expr"]
    assert 'le=~"30([.]0)?"' in within["expr"]  # 30m / 60 = the 30s bucket


def test_scaling_refuses_to_overwrite_the_committed_rules() -> None:
    result = run_generator("--scale", "60")
    assert result.returncode == 2
    assert "another --output-dir" in result.stderr


def test_scaling_must_land_on_a_latency_bucket(tmp_path: Path) -> None:
    result = run_generator("--scale", "7", "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert "latency_slo.threshold" in result.stderr


@pytest.mark.parametrize("rule", recording_rules(), ids=lambda rule: rule["record"])
def test_recording_rule_is_named_level_metric_operations(rule: dict[str, Any]) -> None:
    assert RECORD_NAME.match(rule["record"])
    level = rule["record"].split(":")[0].split("_")
    # every label of the level survives the aggregation (quantile is added by the rule)
    for label in level:
        assert label in rule["expr"] or label in rule.get("labels", {})


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_carries_the_pack_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("CrmSync")
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
    if not rule["expr"].startswith("absent("):  # absent() has no series to describe
        assert "$value" in annotations["description"] or "$labels" in annotations["description"]
    assert annotations["runbook_url"].endswith(f"/docs/runbook.md#{rule['alert'].lower()}")

    match = re.match(
        r"^https://grafana\.example\.com/d/([a-z-]+)(?:\?(.*))?$", annotations["dashboard_url"]
    )
    assert match, annotations["dashboard_url"]
    uid, query = match.groups()
    variables = {
        part.split("=")[0].removeprefix("var-") for part in (query or "").split("&") if part
    }
    assert variables <= DASHBOARD_VARIABLES[uid]
    for variable in variables:
        assert (
            f"var-{variable}={{{{ $labels.{variable} | urlquery }}}}"
            in annotations["dashboard_url"]
        )


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^## (\S+)$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE))
    assert set(alert_names()) <= headings


def _promtool_cases() -> list[dict[str, Any]]:
    return [test for path in PROMTOOL_TESTS for test in load_yaml(path)["tests"]]


def test_every_alert_has_firing_and_quiet_promtool_cases() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for case in _promtool_cases():
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            if not expected:
                quiet.add(check["alertname"])
            for alert in expected:
                firing.add((check["alertname"], alert["exp_labels"]["severity"]))
                assert set(alert["exp_annotations"]) == {
                    "summary",
                    "description",
                    "runbook_url",
                    "dashboard_url",
                }
    severities = {(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()}
    assert severities <= firing
    assert set(alert_names()) <= quiet


def test_every_recording_rule_has_promtool_cases() -> None:
    tested = " ".join(
        check["expr"] for case in _promtool_cases() for check in case.get("promql_expr_test", [])
    )
    untested = {rule["record"] for rule in recording_rules()} - set(
        re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", tested)
    )
    assert not untested


def test_incident_timelines_are_current() -> None:
    result = run([sys.executable, "-m", "crmsync_testing.incidents", "--check"])
    assert result.returncode == 0, result.stderr


# Gauges a failed scrape or an unreadable store marks stale: an alert that read them as an
# instant vector would lose its pending state on each such scrape.
GAUGES = (
    "crmsync_pending_records",
    "crmsync_oldest_pending_age_seconds",
    "crmsync_up",
    "crmsync_future_timestamp_rows",
    "crmsync_folded_label_values",
    "crmsync_open_id_gaps",
)
EXPORTER_ALERTS = {"CrmSyncExporterDown", "CrmSyncExporterAbsent"}


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alerts_read_gauges_through_failed_scrapes(rule: dict[str, Any]) -> None:
    for gauge in GAUGES:
        for match in re.finditer(rf"\b{gauge}\{{[^}}]*\}}(.)", rule["expr"]):
            assert match.group(1) == "[", f"{gauge} read as an instant vector in {rule['expr']}"


@pytest.mark.parametrize(
    "rule",
    [r for r in alerting_rules() if "object" in r["annotations"]["description"]],
    ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}",
)
def test_alerts_on_a_store_s_data_end_when_it_is_not_read(rule: dict[str, Any]) -> None:
    """CrmSyncStoreDown speaks for a store that cannot be read, and a wavering condition
    resolves once."""
    assert rule["expr"].endswith(
        'and on (store)\nmax by (store) (max_over_time(crmsync_up{job="crmsync"}[5m])) == 1'
    )
    assert rule["keep_firing_for"] == "10m"
