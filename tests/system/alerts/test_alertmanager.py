"""The example Alertmanager configuration: valid, routes by severity, inhibits as documented,
checked with amtool and against a real Alertmanager."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crmsync_testing.alerting import (
    ALERTMANAGER_EXAMPLE,
    ALERTS,
    ROOT,
    Received,
    RequireBinary,
    alertmanager,
    alertmanager_config,
    get_json,
    load_yaml,
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
    assert "4 inhibit rules" in result.stdout


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
    """A store that cannot be read silences its other alerts; a page silences its ticket."""
    binary = require_binary("prometheus-alertmanager")
    main = {"store": "main", "object": "lead", "direction": "to_crm"}
    other = {"store": "other", "object": "lead", "direction": "to_crm"}
    alerts = [
        _alert("CrmSyncStoreDown", "critical", store="main", job="crmsync"),
        _alert("CrmSyncStalled", "critical", **main),  # inhibited: main cannot be read
        _alert("CrmSyncBacklogGrowing", "warning", **main),  # inhibited: main cannot be read
        _alert("CrmSyncCollectionsFailing", "warning", store="main"),  # inhibited: same
        _alert("CrmSyncBacklogTooLarge", "critical", **other),
        _alert("CrmSyncBacklogGrowing", "critical", **other),  # inhibited: past the limit
        _alert("CrmSyncErrorRatioHigh", "critical", **other),
        _alert("CrmSyncErrorRatioHigh", "warning", **other),  # inhibited by its critical twin
        _alert("CrmSyncFutureTimestamps", "warning", store="other", table="history"),
    ]
    with webhook() as hook, alertmanager(binary, tmp_path, alertmanager_config(hook)) as url:
        post_json(f"{url}/api/v2/alerts", alerts)

        def delivered() -> list[Received] | None:
            received = hook.received()
            return received if len(received) >= 4 else None

        wait_until(delivered, 30, "four notified alerts")
        state = get_json(f"{url}/api/v2/alerts")
        # a few more group intervals (1s here) for anything that should not come
        time.sleep(3)

    inhibited = {
        (a["labels"]["alertname"], a["labels"]["store"], a["labels"]["severity"])
        for a in state
        if a["status"]["inhibitedBy"]
    }
    assert inhibited == {
        ("CrmSyncStalled", "main", "critical"),
        ("CrmSyncBacklogGrowing", "main", "warning"),
        ("CrmSyncCollectionsFailing", "main", "warning"),
        ("CrmSyncBacklogGrowing", "other", "critical"),
        ("CrmSyncErrorRatioHigh", "other", "warning"),
    }
    received = {
        (r.path, r.labels["alertname"], r.labels["store"], r.labels["severity"])
        for r in hook.received()
    }
    assert received == {
        ("/pager", "CrmSyncStoreDown", "main", "critical"),
        ("/pager", "CrmSyncBacklogTooLarge", "other", "critical"),
        ("/pager", "CrmSyncErrorRatioHigh", "other", "critical"),
        ("/ticket", "CrmSyncFutureTimestamps", "other", "warning"),
    }
    # the two pages of store "other" came as one notification
    assert (
        len(
            {
                r.notification
                for r in hook.received()
                if r.path == "/pager" and r.labels["store"] == "other"
            }
        )
        == 1
    )


def _flow(store: str, object_: str, direction: str = "to_crm") -> dict[str, str]:
    return {"store": store, "object": object_, "direction": direction}


def test_one_stall_is_one_page(require_binary: RequireBinary, tmp_path: Path) -> None:
    """The alerts of a stall, sent the way Prometheus sends them, page once, as one incident.

    The stall pages for two objects at once; then its consequences fire (a backlog past the
    limit, the latency burn of the trickle that still gets through, the oldest change's age,
    the backlog forecast); later a third object stalls too. Another store pages meanwhile.
    """
    binary = require_binary("prometheus-alertmanager")
    lead, contact, account = (
        _flow("main", "lead"),
        _flow("main", "contact"),
        _flow("main", "account", "from_crm"),
    )
    first = [
        _alert("CrmSyncStalled", "critical", **lead),
        _alert("CrmSyncStalled", "critical", **contact),
        _alert("CrmSyncStalled", "critical", **_flow("other", "lead")),
    ]
    consequences = [
        _alert("CrmSyncBacklogTooLarge", "critical", **lead),
        _alert("CrmSyncLatencyBudgetBurn", "critical", **contact, long="1h", short="5m"),
        _alert("CrmSyncOldestPendingTooOld", "warning", **lead),
        _alert("CrmSyncOldestPendingTooOld", "critical", **contact),
        _alert("CrmSyncBacklogGrowing", "warning", **contact),
    ]
    later = [_alert("CrmSyncStalled", "critical", **account)]
    with webhook() as hook, alertmanager(binary, tmp_path, alertmanager_config(hook)) as url:

        def notifications(count: int) -> set[int] | None:
            seen = {r.notification for r in hook.received()}
            return seen if len(seen) >= count else None

        post_json(f"{url}/api/v2/alerts", first)
        wait_until(lambda: notifications(2), 30, "the first pages of both stores")
        post_json(f"{url}/api/v2/alerts", first + consequences)
        time.sleep(4)  # four group intervals: long enough for a notification that must not come
        quiet = {r.notification for r in hook.received()}
        post_json(f"{url}/api/v2/alerts", first + consequences + later)
        wait_until(lambda: notifications(3), 30, "the stall of a third object")
        time.sleep(3)
        state = get_json(f"{url}/api/v2/alerts")

    main = [r for r in hook.received() if r.labels["store"] == "main"]
    # the consequences of the stall were inhibited: they never reached anyone
    assert {r.labels["alertname"] for r in main} == {"CrmSyncStalled"}
    assert {r.path for r in main} == {"/pager"}
    assert quiet == {1, 2}, "an inhibited alert joining the group notified again"
    assert {
        a["labels"]["alertname"]
        for a in state
        if a["labels"]["store"] == "main" and a["status"]["inhibitedBy"]
    } == {a["labels"]["alertname"] for a in consequences}
    # one incident: a single group for the store, whose first notification held both objects
    # that stalled together, and whose update added the third
    assert len({r.group_key for r in main}) == 1
    by_notification: dict[int, set[str]] = {}
    for r in main:
        by_notification.setdefault(r.notification, set()).add(r.labels["object"])
    first_main, *updates = sorted(by_notification)
    assert by_notification[first_main] == {"lead", "contact"}
    assert [by_notification[n] for n in updates] == [{"lead", "contact", "account"}]
    # the other store is an incident of its own
    other = {r.group_key for r in hook.received() if r.labels["store"] == "other"}
    assert len(other) == 1
    assert other.isdisjoint({r.group_key for r in main})


def test_demo_alertmanager_inhibits_like_the_example() -> None:
    """The docker-compose demo's Alertmanager keeps the example's inhibitions and grouping."""
    demo = load_yaml(ROOT / "deploy" / "alertmanager" / "alertmanager.yml")
    example = load_yaml(ALERTMANAGER_EXAMPLE)

    assert demo["inhibit_rules"] == example["inhibit_rules"]
    assert demo["route"]["group_by"] == example["route"]["group_by"]
    pages = [r for r in example["route"]["routes"] if r["matchers"] == ['severity="critical"']]
    demo_pages = [r for r in demo["route"]["routes"] if r["matchers"] == ['severity="critical"']]
    assert [r["group_by"] for r in demo_pages] == [r["group_by"] for r in pages] == [["store"]]
