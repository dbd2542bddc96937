"""The incidents the alert pack must page on and the ones it must sleep through, with times.

Stores are scraped, collected and evaluated every 15 seconds, each by an exporter of its own,
with the defaults of alerts/config.yaml. Times are minutes since the scenario's start; incidents
begin at minute 30, after half an hour of healthy traffic. crmsync_testing/timeline.py turns
them into alerts/tests/incidents_test.yml:

    python -m crmsync_testing.incidents            # rewrite alerts/tests/incidents_test.yml
    python -m crmsync_testing.incidents --check    # exit 1 if it is not current
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crmsync_testing.timeline import (
    Exporter,
    Failures,
    Fire,
    Flow,
    Scenario,
    Store,
    Stuck,
    every,
    failing,
    per_minute,
    render,
    steps,
)
from crmsync_tools.generated_files import check_generated, write_generated

OUTPUT = Path(__file__).resolve().parents[1] / "alerts" / "tests" / "incidents_test.yml"

ONSET = 30
"""Minute at which the incidents begin."""


def lead(**settings: Any) -> Flow:
    return Flow("lead", "to_crm", per_minute(start=20), **settings)


def contact(**settings: Any) -> Flow:
    return Flow("contact", "to_crm", per_minute(start=10), **settings)


def account(**settings: Any) -> Flow:
    return Flow("account", "from_crm", per_minute(start=6), **settings)


def opportunity(**settings: Any) -> Flow:
    return Flow("opportunity", "from_crm", per_minute(start=6), **settings)


def page(alert: str, store: Store, flow: Flow, first: str, last: str | None = None) -> Fire:
    """A critical alert about one object and direction of a store."""
    labels = {"store": store.name, "object": flow.object, "direction": flow.direction}
    return Fire(alert, {**labels, "severity": "critical"}, first, last)


def store_labels(store: Store, severity: str) -> dict[str, str]:
    return {
        "store": store.name,
        "job": "crmsync",
        "instance": f"{store.name}:9312",
        "severity": severity,
    }


ONE_IN_EIGHT = Exporter(failed_scrapes=steps(lambda k, t: k % 8 == 5))
"""One scrape in eight fails: up 0, and every series of the target is marked stale."""
FLAPPING = Exporter(unreadable=steps(lambda k, t: t >= 20 * 60 and k % 2 == 1))
"""From minute 20 every other collection cannot read the store: crmsync_up alternates, and
the gauges are there every other scrape."""


def collections_failing(store: Store) -> Fire:
    """Half of the collections fail from minute 20: over collection_failures.window (30m) the
    failed share passes 10% once a fifth of the window flaps, at minute 25m15s; for 15m."""
    return Fire("CrmSyncCollectionsFailing", {"store": store.name, "severity": "warning"}, "40m15s")


INF = float("inf")
HEALTHY = (lead(), contact(), account())
"""Traffic the engine keeps up with, 1% of the attempts failing."""


def _stall() -> Scenario:
    flows = tuple(
        make(capacity=per_minute((ONSET, 0), start=INF)) for make in (lead, contact, account)
    )
    stores = (
        Store("stall", flows),
        Store("stall-gaps", flows, ONE_IN_EIGHT),
        Store("stall-flapping", flows, FLAPPING),
    )
    return Scenario(
        "stall, also with failed scrapes and flapping collections",
        "The engine stops at minute 30; changes keep arriving. The first of them has waited "
        "more than stall.window (10m) at minute 40, when the engine has done nothing for 10m; "
        "for 5m: the stall pages at minute 45 for each object, 15m after it began. The same "
        "when one scrape in eight fails (stall-gaps) and when every other collection fails "
        "(stall-flapping, which also opens the collection failure ticket).",
        minutes=60,
        stores=stores,
        fires=(
            *(page("CrmSyncStalled", store, flow, "45m") for store in stores for flow in flows),
            collections_failing(stores[2]),
        ),
    )


def _near_stall() -> Scenario:
    flows = (
        lead(capacity=per_minute((ONSET, 1), start=INF)),
        contact(capacity=per_minute((ONSET, 0.5), start=INF)),
    )
    stores = (
        Store("near-stall", flows),
        Store("near-stall-gaps", flows, ONE_IN_EIGHT),
        Store("near-stall-flapping", flows, FLAPPING),
    )
    return Scenario(
        "near-stall, also with failed scrapes and flapping collections",
        "From minute 30 the engine syncs one change in twenty of those arriving (1 of 20 lead "
        "changes a minute, 0.5 of 10 contact changes): its work is 5% of the arrivals, under "
        "stall.max_work_share (10%). Working oldest first, it moves the oldest change's "
        "enqueue time on by 3s a minute, so that change's age passes 10m at minute 40m30s; "
        "for 5m: the stall pages at minute 45m30s, 15.5m after it began.",
        minutes=60,
        stores=stores,
        fires=(
            *(page("CrmSyncStalled", store, flow, "45m30s") for store in stores for flow in flows),
            collections_failing(stores[2]),
        ),
    )


def _error_storm() -> Scenario:
    usual = {"DUPLICATE_VALUE": 0.01}

    def storm(share: float) -> Failures:
        return failing((0, usual), (ONSET, {**usual, "REQUEST_LIMIT_EXCEEDED": share - 0.01}))

    flows = (
        lead(failures=storm(0.25)),
        contact(failures=storm(0.25)),
        account(failures=storm(0.30)),
        opportunity(failures=storm(0.25)),
    )
    stores = (Store("error-storm", flows), Store("error-storm-gaps", flows, ONE_IN_EIGHT))
    return Scenario(
        "error storm of 25%, every object pages within 15m",
        "From minute 30 a quarter of the attempts fail (30% for accounts), on four objects "
        "with 6 to 20 attempts a minute (60 to 200 in the 10m window, over "
        "error_ratio.min_attempts). The 10m ratio passes the critical 20% once about 7.5m of "
        "the window storm (6m at 30%: increase() extrapolates to the window's edges); for 2m: "
        "every object pages at minute 39m30s, 9.5m after the storm began (38m15s for "
        "accounts), also when one scrape in eight fails.",
        minutes=45,
        stores=stores,
        fires=tuple(
            page(
                "CrmSyncErrorRatioHigh",
                store,
                flow,
                "38m15s" if flow.object == "account" else "39m30s",
            )
            for store in stores
            for flow in flows
        ),
    )


def _backlog() -> Scenario:
    flow = Flow(
        "lead",
        "to_crm",
        per_minute((60, 175), start=700),
        capacity=per_minute((70, 2675), start=175),
    )
    store = Store("flood", (flow,), ONE_IN_EIGHT)
    return Scenario(
        "backlog far past the limit keeps paging while above it",
        "700 lead changes arrive a minute and the engine syncs 175: the backlog grows by 525 "
        "a minute and passes backlog.limit (10000) at minute 19 (10106 waiting). From minute 60 "
        "(31631 waiting) it no longer grows; from minute 70 it drains by 2500 a minute and is "
        "below the limit from minute 78m30s. One scrape in eight fails. "
        "CrmSyncBacklogTooLarge fires after backlog.limit_for (5m) at minute 24, holds while "
        "the backlog stands still and while it drains, and resolves keep_firing_for (10m) "
        "after the backlog fell below the limit: last firing at 88m15s.",
        minutes=95,
        stores=(store,),
        fires=(page("CrmSyncBacklogTooLarge", store, flow, "24m", "88m15s"),),
        watch=("CrmSyncBacklogTooLarge",),
    )


def _quiet() -> Scenario:
    down = Store(
        "down",
        HEALTHY,
        Exporter(
            failed_scrapes=steps(lambda k, t: k % 8 == 5),
            unreadable=steps(lambda k, t: 20 * 60 <= t < 50 * 60),
        ),
    )
    return Scenario(
        "a store down pages once; bursts, restarts, gaps, nights and flapping stay quiet",
        "down: from minute 20 to 50 the exporter cannot read the store (the engine goes on), "
        "and one scrape in eight fails. crmsync_up reads 0 from minute 20: CrmSyncStoreDown "
        "fires after store_down.for (5m) at minute 25 and resolves when the store is read "
        "again at 50. Its other alerts stop once it was not read for gap_tolerance (5m), "
        "before any could fire; when it is back its counters catch up in one scrape, and the "
        "collection failures of the outage are over. "
        "burst: 300 lead changes a minute arrive from minute 30 to 40 against an engine "
        "syncing 150: the backlog peaks at 1500 and drains by minute 52; no change waits 10m, "
        "the engine syncs half of what arrives; one scrape in eight fails. "
        "restarts: the exporter restarts at minute 20 (two failed scrapes, counters back at 0) "
        "and at minute 40, when it cannot read the store for its first two minutes (no "
        "counters until then). "
        "gaps: Prometheus makes no scrape from minute 20 to 23 and cannot scrape the exporter "
        "from 40 to 44 (up 0, series stale): under exporter_down.for (5m), bridged by "
        "gap_tolerance. "
        "night: a lead change every 10 minutes and a contact change every 20; one lead change "
        "waits 40 minutes (a locked record, retried every 5 minutes) and one contact change "
        "fails every 2 minutes for 55 minutes: far fewer than latency_slo.min_changes (100) "
        "changes an hour and error_ratio.min_attempts (50) attempts in 10m, and the engine "
        "keeps working, so nothing has stalled. "
        "flapping: every other collection fails from minute 20; the data alerts read through "
        "the gaps and only the collection failure ticket fires.",
        minutes=70,
        stores=(
            down,
            Store(
                "burst",
                (
                    Flow(
                        "lead",
                        "to_crm",
                        per_minute((30, 300), (40, 20), start=20),
                        per_minute(start=150),
                    ),
                    contact(),
                ),
                ONE_IN_EIGHT,
            ),
            Store(
                "restarts",
                (lead(failures=failing((0, {"DUPLICATE_VALUE": 0.02}))), contact(), account()),
                Exporter(
                    restarts=(20 * 4, 40 * 4),
                    unreadable=steps(lambda k, t: 40 * 60 <= t < 42 * 60),
                ),
            ),
            Store(
                "gaps",
                HEALTHY,
                Exporter(
                    missed_scrapes=steps(lambda k, t: 20 * 60 <= t < 23 * 60),
                    failed_scrapes=steps(lambda k, t: 40 * 60 <= t < 44 * 60),
                ),
            ),
            Store(
                "night",
                (
                    Flow("lead", "to_crm", every(600), stuck=(Stuck(20, 60, retry=300),)),
                    Flow(
                        "contact",
                        "to_crm",
                        every(1200, offset=300),
                        stuck=(Stuck(5, 60, retry=120, code="FIELD_CUSTOM_VALIDATION_EXCEPTION"),),
                    ),
                ),
            ),
            flapping := Store("flapping", HEALTHY, FLAPPING),
        ),
        fires=(
            Fire("CrmSyncStoreDown", store_labels(down, "critical"), "25m", "49m45s"),
            collections_failing(flapping),
        ),
    )


SCENARIOS: tuple[Scenario, ...] = (_stall(), _near_stall(), _error_storm(), _backlog(), _quiet())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the file is current")
    args = parser.parse_args(argv)
    files = {OUTPUT.name: render(SCENARIOS)}
    if args.check:
        return check_generated(OUTPUT.parent, files, "python -m crmsync_testing.incidents")
    write_generated(OUTPUT.parent, files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
