"""The example Alertmanager configuration: valid, routes by severity, inhibits as documented,
checked with amtool and against a real Alertmanager."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.alerts.support import (
    ALERTMANAGER_EXAMPLE,
    ALERTS,
    Received,
    RequireBinary,
    alertmanager,
    alertmanager_config,
    get_json,
    post_json,
    rules,
    run,
    wait_until,
    webhook,
)

pytestmark = pytest.mark.prometheus

RECEIVER_OF = {"critical": "pager", "warning": "ticket"}


def test_example_passes_amtool_check_config(require_binary: RequireBinary) -> None:
    amtool = require_binary("amtool")

    result = run([amtool, "check-config", str(ALERTMANAGER_EXAMPLE)])

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout


def _route(amtool: str, labels: dict[str, str], receiver: str) -> str:
    result = run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_EXAMPLE}",
            f"--verify.receivers={receiver}",
            *(f"{name}={value}" for name, value in labels.items()),
        ]
    )
    assert result.returncode == 0, f"{labels} -> {result.stdout.strip()}, expected {receiver}"
    return result.stdout.strip()


@pytest.mark.parametrize(
    "rule",
    rules(ALERTS / "alerting_rules.yml"),
    ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}",
)
def test_every_alert_routes_by_its_severity(
    require_binary: RequireBinary, rule: dict[str, Any]
) -> None:
    amtool = require_binary("amtool")
    labels = {"alertname": rule["alert"], "store": "main", **rule["labels"]}
    receiver = RECEIVER_OF[rule["labels"]["severity"]]

    assert _route(amtool, labels, receiver) == receiver


def test_unknown_severity_still_opens_a_ticket(require_binary: RequireBinary) -> None:
    amtool = require_binary("amtool")

    assert _route(amtool, {"alertname": "Other", "severity": "info"}, "ticket") == "ticket"


def _alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": name},
        "startsAt": datetime.now(UTC).isoformat(),
    }


def test_real_alertmanager_routes_and_inhibits(
    require_binary: RequireBinary, tmp_path: Path
) -> None:
    """A store that cannot be read silences its backlog alerts; a page silences its ticket."""
    binary = require_binary("prometheus-alertmanager")
    main = {"store": "main", "object": "lead", "direction": "to_crm"}
    other = {"store": "other", "object": "lead", "direction": "to_crm"}
    alerts = [
        _alert("CrmSyncStoreDown", "critical", store="main", job="crmsync"),
        _alert("CrmSyncStalled", "critical", **main),  # inhibited: main cannot be read
        _alert("CrmSyncBacklogGrowing", "warning", **main),  # inhibited: main cannot be read
        _alert("CrmSyncStalled", "critical", **other),
        _alert("CrmSyncBacklogGrowing", "critical", **other),
        _alert("CrmSyncBacklogGrowing", "warning", **other),  # inhibited by its critical twin
        _alert("CrmSyncErrorRatioHigh", "warning", **other),
    ]
    with webhook() as hook, alertmanager(binary, tmp_path, alertmanager_config(hook)) as url:
        post_json(f"{url}/api/v2/alerts", alerts)

        def delivered() -> list[Received] | None:
            received = hook.received()
            return received if len(received) >= 4 else None

        wait_until(delivered, 30, "four notifications")
        state = get_json(f"{url}/api/v2/alerts")
        inhibited = {
            (a["labels"]["alertname"], a["labels"]["store"], a["labels"]["severity"])
            for a in state
            if a["status"]["inhibitedBy"]
        }
        # a few more group intervals (1s here) for anything that should not come
        time.sleep(3)

    assert inhibited == {
        ("CrmSyncStalled", "main", "critical"),
        ("CrmSyncBacklogGrowing", "main", "warning"),
        ("CrmSyncBacklogGrowing", "other", "warning"),
    }
    received = {
        (r.path, r.labels["alertname"], r.labels["store"], r.labels["severity"])
        for r in hook.received()
    }
    assert received == {
        ("/pager", "CrmSyncStoreDown", "main", "critical"),
        ("/pager", "CrmSyncStalled", "other", "critical"),
        ("/pager", "CrmSyncBacklogGrowing", "other", "critical"),
        ("/ticket", "CrmSyncErrorRatioHigh", "other", "warning"),
    }
