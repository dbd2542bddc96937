"""End to end with the real programs: the simulator writes SQLite stores, the exporter reads
them, Prometheus evaluates the alert pack and Alertmanager notifies a webhook run by the test.

Time is compressed 60 times on both sides: the simulator runs its scenarios at --speed 60
(a simulated minute per real second) and the rules are generated with every window, `for`
and age threshold divided by 60, evaluated every second. One exporter reads four stores, one
per scenario: the stall and the error storm must page, steady and burst must not.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.alerts.support import (
    Process,
    Received,
    Webhook,
    alertmanager,
    alertmanager_config,
    find_binary,
    free_port,
    prometheus,
    query,
    run_generator,
    started,
    wait_ready,
    wait_until,
    webhook,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(240)]

SPEED = 60
"""Simulated seconds per real second, and the factor every rule duration is divided by."""
SCENARIOS = ("stall", "error-storm", "steady", "burst")
OBSERVE = 75.0
"""Real seconds the steady and burst stores are watched: 75 simulated minutes, in which the
burst scenario's backlog peaks three times (bursts every 30 simulated minutes)."""
STALL_EARLIEST = 20.0
"""The stall pages once a change waited 15 scaled minutes, none was synced for as long, and
that held for 5 more: not before 20 real seconds after the simulators started."""
PAGE_DEADLINE = 90.0
"""Real seconds within which the stall and the error storm must have paged."""


def has_schema(path: Path) -> bool:
    """Whether the simulator has created the reference tables in the SQLite file."""
    if not path.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return False
    return {"sync_queue", "sync_history", "sync_error"} <= {name for (name,) in rows}


@dataclass
class Pipeline:
    hook: Webhook
    prometheus_url: str
    started: float
    processes: dict[str, Process]

    def critical(self) -> list[Received]:
        return [
            r
            for r in self.hook.received()
            if r.status == "firing" and r.labels.get("severity") == "critical"
        ]

    def wait_for_page(self, alertname: str, store: str, timeout: float) -> Received:
        def paged() -> Received | None:
            for process in self.processes.values():
                assert process.running(), f"{process.name} exited:\n{process.output()}"
            return next(
                (
                    r
                    for r in self.critical()
                    if r.path == "/pager"
                    and r.labels["alertname"] == alertname
                    and r.labels.get("store") == store
                ),
                None,
            )

        return wait_until(paged, timeout, f"the {alertname} page of store {store}")

    def wait_observed(self) -> None:
        """Sleep until the stores have been watched for OBSERVE seconds, all programs alive."""
        while (left := self.started + OBSERVE - time.monotonic()) > 0:
            for process in self.processes.values():
                assert process.running(), f"{process.name} exited:\n{process.output()}"
            time.sleep(min(left, 1.0))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    prometheus_binary = find_binary("prometheus")
    alertmanager_binary = find_binary("prometheus-alertmanager")
    work = tmp_path_factory.mktemp("end-to-end")
    rules = work / "rules"
    generated = run_generator("--scale", str(SPEED), "--output-dir", str(rules))
    assert generated.returncode == 0, generated.stderr

    with ExitStack() as stack:
        hook = stack.enter_context(webhook())
        processes: dict[str, Process] = {}
        stores = []
        for seed, scenario in enumerate(SCENARIOS, start=1):
            url = f"sqlite:///{work / f'{scenario}.db'}"
            stores.append({"name": scenario, "url": url, "interval": "1s"})
            processes[scenario] = stack.enter_context(
                started(
                    f"simulator-{scenario}",
                    [
                        sys.executable,
                        "-m",
                        "exporter.simulator",
                        "--store.url",
                        url,
                        "--create-schema",
                        "--scenario",
                        scenario,
                        "--speed",
                        str(SPEED),
                        "--rate",
                        "1",
                        "--seed",
                        str(seed),
                    ],
                    work,
                )
            )
        begin = time.monotonic()
        for scenario in SCENARIOS:
            simulator = processes[scenario]

            def schema_ready(simulator: Process = simulator, scenario: str = scenario) -> bool:
                assert simulator.running(), f"{simulator.name} exited:\n{simulator.output()}"
                return has_schema(work / f"{scenario}.db")

            wait_until(schema_ready, 30, f"the {scenario} store's schema")

        config = work / "exporter.yml"
        config.write_text(yaml.safe_dump({"stores": stores}, sort_keys=False), encoding="utf-8")
        address = f"127.0.0.1:{free_port()}"
        exporter = stack.enter_context(
            started(
                "exporter",
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    "--config.file",
                    str(config),
                    "--web.listen-address",
                    address,
                ],
                work,
            )
        )
        processes["exporter"] = exporter
        wait_ready(f"http://{address}/metrics", exporter)

        alertmanager_url = stack.enter_context(
            alertmanager(alertmanager_binary, work, alertmanager_config(hook))
        )
        prometheus_url = stack.enter_context(
            prometheus(
                prometheus_binary,
                work,
                rule_files=sorted(rules.glob("*.yml")),
                targets=[address],
                alertmanager_url=alertmanager_url,
            )
        )
        yield Pipeline(hook, prometheus_url, begin, processes)


def test_stall_pages(pipeline: Pipeline) -> None:
    page = pipeline.wait_for_page("CrmSyncStalled", "stall", PAGE_DEADLINE)

    assert page.at - pipeline.started >= STALL_EARLIEST
    assert page.labels["object"] in {"lead", "contact", "account", "opportunity"}
    assert page.labels["direction"] in {"to_crm", "from_crm"}
    assert page.annotations["runbook_url"].endswith("#crmsyncstalled")
    assert "var-store=stall" in page.annotations["dashboard_url"]
    assert "in store stall were synced" in page.annotations["description"]


def test_error_storm_pages(pipeline: Pipeline) -> None:
    page = pipeline.wait_for_page("CrmSyncErrorRatioHigh", "error-storm", PAGE_DEADLINE)

    assert page.annotations["runbook_url"].endswith("#crmsyncerrorratiohigh")
    assert "var-store=error-storm" in page.annotations["dashboard_url"]
    assert "(threshold 25%)" in page.annotations["description"]


@pytest.mark.parametrize("store", ["steady", "burst"])
def test_no_critical_alert_without_a_problem(pipeline: Pipeline, store: str) -> None:
    pipeline.wait_observed()

    pages = [r for r in pipeline.critical() if r.labels.get("store", store) == store]
    tickets = [r for r in pipeline.hook.received() if r.labels.get("store") == store]

    assert not pages, [dict(r.labels) for r in pages]
    # nothing is wrong with these stores: not even a ticket
    assert not tickets, [dict(r.labels) for r in tickets]
    # the store was really watched: its changes were synced, and Prometheus evaluated it
    synced = query(
        pipeline.prometheus_url,
        f'sum(increase(crmsync_records_synced_total{{store="{store}"}}[1m]))',
    )
    assert synced, f"no synced changes of store {store} in Prometheus"
    assert float(synced[0]["value"][1]) > 100


def test_burst_backlog_peaked_and_drained(pipeline: Pipeline) -> None:
    """The burst scenario did what it says, so its quiet is meaningful."""
    pipeline.wait_observed()

    def backlog(function: str, store: str) -> float:
        """``function`` over the store's backlog, sampled every second while observed."""
        series = f'sum(crmsync_pending_records{{store="{store}"}})[{int(OBSERVE)}s:1s]'
        promql = function.replace("SERIES", series)
        return float(query(pipeline.prometheus_url, promql)[0]["value"][1])

    peak = backlog("max_over_time(SERIES)", "burst")
    # each burst adds about (5 - 1.5) x 60 changes a real second for 1.5 seconds...
    assert peak > backlog("max_over_time(SERIES)", "steady") + 150
    # ...and drains within seconds: most of the time the backlog is far below its peak
    assert backlog("quantile_over_time(0.5, SERIES)", "burst") < peak / 3
