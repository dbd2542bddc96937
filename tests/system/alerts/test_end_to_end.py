"""End to end with the real programs: simulators write the stores, the exporter reads them,
Prometheus evaluates the alert pack and Alertmanager notifies a webhook run by the test.

Time is compressed 60 times on both sides: the simulators run their scenarios at --speed 60
(a simulated minute per real second) and the rules are generated with every window, `for`
and age threshold divided by 60, evaluated every second: a real second stands for a minute.
One exporter reads six stores: the engines of "stall", "near-stall" and "flapping" stop or
nearly stop after a simulated minute, "error-storm" fails 60% of its attempts from then on,
"steady" and "burst" are healthy. And everything goes wrong around them: one scrape in eight
fails, "flapping" (PostgreSQL, behind a TCP proxy cut before every other collection) can be
read every other collection only, and the exporter restarts (before the incidents).
"""

from __future__ import annotations

import http.client
import re
import sqlite3
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from crmsync_testing.alerting import (
    FlakyScrapes,
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
    wait_ready,
    wait_until,
    webhook,
)
from crmsync_testing.servers import postgres_schema, unavailable
from crmsync_testing.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(300)]

SPEED = 60
"""Simulated seconds per real second, and the factor every rule duration is divided by: a
real second stands for a minute of the alert pack's time."""
SQLITE_SCENARIOS = {"stall": 2, "near-stall": 3, "error-storm": 3, "steady": 1, "burst": 1}
"""Scenario (and store name) -> changes arriving per simulated second: enough that the
smallest object and direction (6% of the changes) has well over the 50 attempts of
error_ratio.min_attempts in a 10 minute window, that a near-stall's one change in twenty is
more than a few, and that the stall's backlog heads for its limit (its backlog alert fires,
and must not page)."""
INCIDENTS = ("stall", "near-stall", "error-storm", "flapping")
"""Stores whose engine runs the steady scenario first, for HEALTHY seconds after Prometheus
started, and then their incident's scenario (flapping: stall)."""
HEALTHY = 16.0
"""Real seconds of healthy traffic Prometheus sees before the incidents: the exporter
restart, then more than the 10 minute windows of the stall and the error ratio."""
WARMUP = 1.0
"""Real seconds of a scenario before its event (60 simulated seconds)."""
SYNC_INTERVAL = 0.25
"""Real seconds between the simulated engines' sync cycles (15 seconds of the pack's time)."""
FAIL_EVERY = 8
"""One scrape in eight fails."""
RESTART_AT = 4.0
"""Real seconds after Prometheus started when the exporter restarts, among healthy traffic:
its restart (a few seconds, minutes at this scale) must not page."""
COUNTER_HOLD = {"new_counter_hold": "2s"}
"""New counter series read 0 for two real seconds (two scrapes, one of which may fail), not the
default minute, which here would be an hour of the pack's time."""
OBSERVE = 72.0
"""Real seconds the stores are watched after the incidents began: 72 minutes of the pack's
time, in which a stalled change waits past the 1h freshness objective, and (with the time
before) the burst scenario's backlog peaks three times (bursts every 30 simulated minutes)."""
STALL_PAGE = 20.0
"""A stall or near-stall must fire within 20 minutes of its onset (Prometheus' firing time)."""
STORM_PAGE = 15.0
"""An error storm must fire within 15 minutes, for every object and direction."""
SCRAPE_INTERVAL = 1.0
COLLECTION_INTERVAL = {"flapping": 2.0}
"""Real seconds between the collections of a store (1 when not listed)."""


def pipeline_delay(store: str) -> float:
    """The exporter's collection and Prometheus' scrape stand for minutes at this scale (15
    seconds each in a real deployment): a change reaches the rules up to this much of the
    pack's time later than it would there."""
    return COLLECTION_INTERVAL.get(store, 1.0) + SCRAPE_INTERVAL


DELIVERY = 3.0
"""Prometheus' evaluation and resend (1s each) and Alertmanager's group wait (1s) stand for
minutes at this scale: the notification may follow the firing by this much."""
OBJECTS = ("lead", "contact", "account", "opportunity")
DIRECTIONS = ("to_crm", "from_crm")


def unix_time(stamp: datetime | str | None) -> float | None:
    """A naive UTC timestamp read from a store (SQLite's is text) as Unix time."""
    if stamp is None:
        return None
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    return float(stamp.replace(tzinfo=UTC).timestamp())


def first_arrival(url: str, since: float = 0.0) -> float | None:
    """Unix time of the first change written to a store at or after ``since`` (Unix time),
    or None before there is one."""
    moment = datetime.fromtimestamp(since, UTC).replace(tzinfo=None)
    statement = sa.text(
        "SELECT MIN(at) FROM ("
        "SELECT MIN(enqueued_at) AS at FROM sync_queue WHERE enqueued_at >= :since "
        "UNION ALL SELECT MIN(enqueued_at) FROM sync_history WHERE enqueued_at >= :since"
        ") AS firsts"
    ).bindparams(sa.bindparam("since", moment, type_=sa.DateTime()))
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            first = connection.execute(statement).scalar_one()
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return unix_time(first)


def last_sync(url: str) -> float | None:
    """Unix time of the last change synced in a store."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            last = connection.execute(
                sa.text("SELECT MAX(synced_at) FROM sync_history")
            ).scalar_one()
    finally:
        engine.dispose()
    return unix_time(last)


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


class Flapper:
    """Makes every other collection of a store fail: it watches the exporter's metrics and
    cuts the TCP proxy in front of the store after each successful collection, and restores
    it after each failed one, or while the exporter restarts."""

    def __init__(self, proxy: TcpProxy, exporter: str, store: str) -> None:
        self.proxy = proxy
        self._url = f"http://{exporter}/metrics"
        self._up = re.compile(
            rf'^crmsync_up{{[^}}]*store="{re.escape(store)}"[^}}]*}} (\S+)$', re.MULTILINE
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _last_collection_succeeded(self) -> bool | None:
        try:
            with urllib.request.urlopen(self._url, timeout=1) as response:
                match = self._up.search(response.read().decode())
        except (OSError, http.client.HTTPException):
            return None  # the exporter restarts
        return float(match.group(1)) == 1 if match else None

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            # while the exporter restarts there is nothing to follow: the store is fine
            if self._last_collection_succeeded():
                self.proxy.refuse()
            else:
                self.proxy.restore()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.proxy.restore()


@dataclass
class Pipeline:
    hook: Webhook
    prometheus_url: str
    started: float
    """time.time() when the simulators started."""
    processes: dict[str, Process]
    store_urls: dict[str, str]
    scrapes: FlakyScrapes
    incidents: float = 0.0
    """time.time() when the incidents' scenarios were started."""
    switched: dict[str, float] = field(default_factory=dict)
    """time.time() when the healthy simulator of each incident's store had stopped."""
    restarted: bool = False

    def check_alive(self) -> None:
        for process in self.processes.values():
            assert process.running(), f"{process.name} exited:\n{process.output()}"

    def onset(self, store: str) -> float:
        """When the incident of ``store`` began, read from the store.

        A stall began with the last change synced. The error storm and the near-stall began
        with their scenario's event: the first change of the incident's simulator plus the
        scenario's warm-up (during which its engine worked at full speed).
        """
        url, switched = self.store_urls[store], self.switched[store]
        if store in ("stall", "flapping"):
            last = last_sync(url)
            assert last is not None, f"nothing was ever synced in store {store}"
            return last
        # the healthy simulator stamps its last changes up to a tick ahead
        first = first_arrival(url, switched + 0.5)
        assert first is not None, f"no change in store {store} since the incidents began"
        return first + WARMUP

    def critical(self) -> list[Received]:
        return [
            r
            for r in self.hook.received()
            if r.status == "firing" and r.labels.get("severity") == "critical"
        ]

    def wait_for_page(self, alertname: str, store: str, timeout: float) -> Received:
        def paged() -> Received | None:
            self.check_alive()
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
        """Sleep until OBSERVE seconds after the incidents began, all programs alive."""
        until(self.incidents + OBSERVE, self)

    def first_firing(self, alertname: str, store: str) -> dict[tuple[str, str], float]:
        """When each page of an alert of ``store`` first fired, by (object, direction)."""
        span = int(time.time() - self.started) + 5
        selector = f'alertname="{alertname}", alertstate="firing", store="{store}"'
        promql = f'min_over_time(timestamp(ALERTS{{{selector}, severity="critical"}})[{span}s:1s])'
        return {
            (r["metric"].get("object", ""), r["metric"].get("direction", "")): float(r["value"][1])
            for r in query(self.prometheus_url, promql)
        }

    def ever_fired(self, selector: str) -> list[dict[str, str]]:
        span = int(time.time() - self.started) + 5
        promql = f'max_over_time(ALERTS{{alertstate="firing", {selector}}}[{span}s])'
        return [r["metric"] for r in query(self.prometheus_url, promql)]


def _exporter(config: Path, address: str, work: Path, name: str) -> Process:
    argv = [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        address,
    ]
    return Process(name, argv, work)


def _simulator(scenario: str, url: str, rate: int, seed: int, work: Path) -> Process:
    argv = [
        sys.executable,
        "-m",
        "crmsync_tools.simulator",
        "--store.url",
        url,
        "--create-schema",
        "--scenario",
        scenario,
        "--speed",
        str(SPEED),
        "--rate",
        str(rate),
        "--seed",
        str(seed),
        # a sync cycle every 15 simulated seconds, as the scaled rules see it
        "--sync-interval",
        str(SYNC_INTERVAL),
    ]
    return Process(f"simulator-{seed}-{scenario}", argv, work)


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
        store_urls: dict[str, str] = {}
        stores = []

        def launch(name: str, process: Process) -> None:
            processes[name] = process
            stack.callback(process.stop)

        rates = dict(SQLITE_SCENARIOS)
        for seed, scenario in enumerate(SQLITE_SCENARIOS, start=1):
            url = f"sqlite:///{work / f'{scenario}.db'}"
            store_urls[scenario] = url
            stores.append({"name": scenario, "url": url, "interval": "1s", **COUNTER_HOLD})
            first = "steady" if scenario in INCIDENTS else scenario
            launch(scenario, _simulator(first, url, rates[scenario], seed, work))
        try:
            postgres: str | None = stack.enter_context(postgres_schema())
        except pytest.skip.Exception:
            postgres = None  # no PostgreSQL here: the other stores run without "flapping"
        if postgres is not None:
            # the stalled engine writes to PostgreSQL directly; the exporter reads through a
            # proxy that is cut before every other collection
            store_urls["flapping"] = postgres
            rates["flapping"] = 1
            launch("flapping", _simulator("steady", postgres, 1, 9, work))
            parsed = sa.make_url(postgres)
            proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
            stack.callback(proxy.close)
            proxied = parsed.set(host="127.0.0.1", port=proxy.port)
            stores.append(
                {
                    "name": "flapping",
                    "url": proxied.render_as_string(hide_password=False),
                    # each outcome stands for two scaled minutes: seen by a scrape at least
                    # once, whatever the phase of the scrapes against the collections
                    "interval": f"{COLLECTION_INTERVAL['flapping']:g}s",
                    "query_timeout": "5s",
                    **COUNTER_HOLD,
                }
            )
        begin = time.time()
        for name, url in store_urls.items():

            def schema_ready(name: str = name, url: str = url) -> bool:
                assert processes[name].running(), processes[name].output()
                if url.startswith("sqlite"):
                    return has_schema(Path(url.removeprefix("sqlite:///")))
                return first_arrival(url) is not None

            wait_until(schema_ready, 30, f"the {name} store's schema")

        config = work / "exporter.yml"
        config.write_text(yaml.safe_dump({"stores": stores}, sort_keys=False), encoding="utf-8")
        address = f"127.0.0.1:{free_port()}"
        launch("exporter", _exporter(config, address, work, "exporter"))
        wait_ready(f"http://{address}/metrics", processes["exporter"])
        scrapes = FlakyScrapes(address, FAIL_EVERY)
        stack.callback(scrapes.close)

        alertmanager_url = stack.enter_context(
            alertmanager(alertmanager_binary, work, alertmanager_config(hook))
        )
        prometheus_url = stack.enter_context(
            prometheus(
                prometheus_binary,
                work,
                rule_files=sorted(rules.glob("*.yml")),
                targets=[scrapes.address],
                alertmanager_url=alertmanager_url,
            )
        )
        pipeline = Pipeline(hook, prometheus_url, begin, processes, store_urls, scrapes)
        watched = time.time()

        # Prometheus watches healthy traffic; the exporter restarts on the way (its counters
        # start again), and then the flapping store begins to flap
        until(watched + RESTART_AT, pipeline)
        processes["exporter"].stop()
        launch("exporter", _exporter(config, address, work, "exporter-restarted"))
        wait_ready(f"http://{address}/metrics", processes["exporter"])
        pipeline.restarted = True
        if postgres is not None:
            stack.callback(Flapper(proxy, address, "flapping").stop)

        # then the incidents begin
        until(watched + HEALTHY, pipeline)
        pipeline.incidents = time.time()
        for seed, name in enumerate(INCIDENTS, start=11):
            if name in store_urls:
                processes[name].stop()
                pipeline.switched[name] = time.time()
                scenario = "stall" if name == "flapping" else name
                launch(name, _simulator(scenario, store_urls[name], rates[name], seed, work))
        yield pipeline


def until(moment: float, pipeline: Pipeline) -> None:
    """Wait until ``moment`` (time.time()), all programs alive."""
    while time.time() < moment:
        pipeline.check_alive()
        time.sleep(0.2)


def _scaled_minutes(seconds: float) -> str:
    return f"{seconds:.1f} min"


@pytest.mark.parametrize("store", ["stall", "near-stall", "flapping"])
def test_stall_pages_within_20_minutes(
    pipeline: Pipeline, store: str, record_property: Callable[[str, object], None]
) -> None:
    if store not in pipeline.store_urls:
        unavailable("PostgreSQL is not reachable: no flapping store")
    page = pipeline.wait_for_page("CrmSyncStalled", store, OBSERVE)

    onset = pipeline.onset(store)
    fired = pipeline.first_firing("CrmSyncStalled", store)
    first = min(fired.values())
    record_property("fired_after_onset", _scaled_minutes(first - onset))
    record_property("paged_after_onset", _scaled_minutes(page.at - onset))
    # 10 minutes of waiting and of (almost) no work, then 5 minutes of `for`
    assert 10 <= first - onset <= STALL_PAGE + pipeline_delay(store), (first - onset, fired)
    assert page.at - onset <= STALL_PAGE + pipeline_delay(store) + DELIVERY
    assert page.annotations["runbook_url"].endswith("#crmsyncstalled")
    assert f"var-store={store}" in page.annotations["dashboard_url"]
    assert f"in store {store} has stalled" in page.annotations["description"]


def test_error_storm_pages_every_object_within_15_minutes(
    pipeline: Pipeline, record_property: Callable[[str, object], None]
) -> None:
    pipeline.wait_for_page("CrmSyncErrorRatioHigh", "error-storm", OBSERVE)
    everywhere = {(o, d) for o in OBJECTS for d in DIRECTIONS}

    def all_fired() -> dict[tuple[str, str], float] | None:
        pipeline.check_alive()
        fired = pipeline.first_firing("CrmSyncErrorRatioHigh", "error-storm")
        return fired if set(fired) >= everywhere else None

    fired = wait_until(all_fired, 30, "the error storm's page for every object")
    onset = pipeline.onset("error-storm")
    latest = max(fired.values()) - onset
    record_property("fired_after_onset", _scaled_minutes(latest))
    for (object_, direction), at in sorted(fired.items()):
        record_property(f"{object_}_{direction}", _scaled_minutes(at - onset))
    assert latest <= STORM_PAGE + pipeline_delay("error-storm"), {
        k: round(v - onset, 1) for k, v in fired.items()
    }
    paged = {
        (r.labels["object"], r.labels["direction"])
        for r in pipeline.critical()
        if r.path == "/pager" and r.labels.get("store") == "error-storm"
    }
    assert paged >= everywhere
    page = next(r for r in pipeline.critical() if r.labels.get("store") == "error-storm")
    assert page.annotations["runbook_url"].endswith("#crmsyncerrorratiohigh")
    assert "(threshold 20%)" in page.annotations["description"]


@pytest.mark.parametrize("store", ["stall", "near-stall", "flapping"])
def test_a_stall_is_one_incident(pipeline: Pipeline, store: str) -> None:
    """The pages of a stall form one group, and what the stall explains never pages."""
    if store not in pipeline.store_urls:
        unavailable("PostgreSQL is not reachable: no flapping store")
    pipeline.wait_observed()

    received = [r for r in pipeline.hook.received() if r.labels.get("store") == store]
    pages = [r for r in received if r.path == "/pager"]
    assert pages
    assert {r.labels["alertname"] for r in pages} == {"CrmSyncStalled"}
    assert len({r.group_key for r in pages}) == 1
    if store == "stall":
        # the stall's backlog and age alerts fired in Prometheus, and were inhibited
        consequences = pipeline.ever_fired(f'store="{store}", alertname!="CrmSyncStalled"')
        assert {m["alertname"] for m in consequences} & {
            "CrmSyncBacklogGrowing",
            "CrmSyncOldestPendingTooOld",
        }
    tickets = [r for r in received if r.path == "/ticket"]
    assert {r.labels["alertname"] for r in tickets} <= {"CrmSyncCollectionsFailing"}


@pytest.mark.parametrize("store", ["steady", "burst"])
def test_no_alert_without_a_problem(pipeline: Pipeline, store: str) -> None:
    pipeline.wait_observed()

    notified = [r for r in pipeline.hook.received() if r.labels.get("store") == store]
    assert not notified, [dict(r.labels) for r in notified]
    assert not pipeline.ever_fired(f'store="{store}"')
    # the store was really watched: its changes were synced, and Prometheus evaluated it
    synced = query(
        pipeline.prometheus_url,
        f'sum(increase(crmsync_records_synced_total{{store="{store}"}}[1m]))',
    )
    assert synced, f"no synced changes of store {store} in Prometheus"
    assert float(synced[0]["value"][1]) > 100


def test_failed_scrapes_restart_and_flapping_page_nobody(pipeline: Pipeline) -> None:
    """One scrape in eight failed and the exporter restarted, and nothing paged about it."""
    pipeline.wait_observed()

    assert pipeline.restarted
    span = int(time.time() - pipeline.started)
    failed = query(
        pipeline.prometheus_url, f'count_over_time((up{{job="crmsync"}} == 0)[{span}s:])'
    )
    assert failed
    assert float(failed[0]["value"][1]) >= span / FAIL_EVERY / 2
    assert pipeline.scrapes.failed >= pipeline.scrapes.requests // FAIL_EVERY
    down = pipeline.ever_fired('alertname=~"CrmSync(StoreDown|ExporterDown|ExporterAbsent)"')
    assert not down, down
    assert not [
        r
        for r in pipeline.hook.received()
        if r.labels["alertname"] in {"CrmSyncStoreDown", "CrmSyncExporterDown"}
    ]


def test_flapping_store_flapped_and_opened_a_ticket(pipeline: Pipeline) -> None:
    if "flapping" not in pipeline.store_urls:
        unavailable("PostgreSQL is not reachable: no flapping store")
    pipeline.wait_observed()

    span = int(time.time() - pipeline.started)
    flips = query(pipeline.prometheus_url, f'changes(crmsync_up{{store="flapping"}}[{span}s])')
    assert flips
    # a collection every second, each flipping crmsync_up, from the exporter's start
    assert float(flips[0]["value"][1]) >= span / 3, flips
    tickets = [
        r
        for r in pipeline.hook.received()
        if r.path == "/ticket" and r.labels.get("store") == "flapping"
    ]
    assert {r.labels["alertname"] for r in tickets} == {"CrmSyncCollectionsFailing"}


def test_burst_backlog_peaked_and_drained(pipeline: Pipeline) -> None:
    """The burst scenario did what it says, so its quiet is meaningful."""
    pipeline.wait_observed()

    def backlog(function: str, store: str) -> float:
        """``function`` over the store's backlog, sampled every second while observed."""
        watched = int(time.time() - pipeline.started)
        series = f'sum(crmsync_pending_records{{store="{store}"}})[{watched}s:1s]'
        promql = function.replace("SERIES", series)
        return float(query(pipeline.prometheus_url, promql)[0]["value"][1])

    peak = backlog("max_over_time(SERIES)", "burst")
    # each burst adds about (5 - 1.5) x 60 changes a real second for 1.5 seconds...
    assert peak > backlog("max_over_time(SERIES)", "steady") + 150
    # ...and drains within seconds: most of the time the backlog is far below its peak
    assert backlog("quantile_over_time(0.5, SERIES)", "burst") < peak / 3
