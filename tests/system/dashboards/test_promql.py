"""Every PromQL query of every panel, sent by Grafana's own frontend to a real Prometheus.

The store is filled by the simulator (a backfill, then live traffic with many failures), the
real exporter reads it and a real Prometheus scrapes the exporter every second. Each
dashboard runs through Grafana's frontend code in two versions (grafana_frontend.py) in a
table of variable states, its query variables reading their options from that Prometheus;
grafana_server.py expands what Grafana's server expands and runs each query. Then the Sync
Status table is checked as a person sees it, in both of its views.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from crmsync_testing.dashboards import DASHBOARDS, link_values
from crmsync_testing.grafana_frontend import (
    VERSIONS,
    Result,
    Run,
    datasources,
    run_answered,
)
from crmsync_testing.grafana_server import Backends
from crmsync_testing.servers import require_binary
from crmsync_testing.stack import running_stack
from crmsync_tools.simulator import backfill
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

pytestmark = [pytest.mark.prometheus, pytest.mark.grafana_frontend]

SCRAPE_INTERVAL = "1s"
WARM_UP = 25.0
# Label values with every character that needs care on its way through a URL and PromQL.
AWKWARD_OBJECT = "o'brien\\ü%$:x &#+%41"
AWKWARD_CODE = "Q'UOTE\\BACK%PCT%41$DOLLAR:COLON_ÜBER&AMP#HASH+PLUS SP"
# Every kind of character a store name may have (exporter.config).
STORE = "eu-1.crm:main_2"


def _synced(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(sync_history)).scalar_one()
        )


def _awkward_rows(engine: sa.Engine) -> None:
    """A failure with an awkward code and a waiting change of an awkward object, written once
    the exporter runs (counters count what appears after their start) and the simulator has
    synced changes: it takes the queue oldest first, so it never comes back for a change
    older than those, and the awkward one stays waiting."""
    synced = _synced(engine)
    deadline = time.monotonic() + 30
    while _synced(engine) == synced:
        assert time.monotonic() < deadline, "the simulator synced nothing in 30 s"
        time.sleep(0.2)
    now = datetime.now(UTC).replace(tzinfo=None)
    row = {"record_id": "AWK1", "operation": "insert", "direction": "to_crm"}
    with engine.begin() as connection:
        connection.execute(
            sync_error.insert(),
            [
                {
                    **row,
                    "object_type": "lead",
                    "record_name": None,
                    "error_code": AWKWARD_CODE,
                    "error_message": "awkward",
                    "failed_at": now,
                }
            ],
        )
        connection.execute(
            sync_queue.insert(),
            [{**row, "object_type": AWKWARD_OBJECT, "enqueued_at": now - timedelta(hours=4)}],
        )


@dataclass(frozen=True)
class Monitored:
    """A store's Prometheus and the store itself, for independent counts."""

    prometheus: str
    store: sa.Engine


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """A store with three hours of history and live traffic, the exporter, Prometheus."""
    prometheus_binary = require_binary("prometheus")
    work = tmp_path_factory.mktemp("promql")
    url = f"sqlite:///{work / 'store.db'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    backfill(engine, history_rows=3000, error_rows=400, pending_rows=150, span=3 * 3600.0, seed=3)
    with running_stack(
        url,
        work,
        prometheus_binary,
        traffic=True,
        scrape_interval=SCRAPE_INTERVAL,
        store_name=STORE,
    ) as running:
        _awkward_rows(engine)
        time.sleep(WARM_UP)
        yield Monitored(running.prometheus, engine)
    engine.dispose()


def _dashboards() -> dict[str, Any]:
    found = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        found[dashboard["uid"]] = dashboard
    return found


DASHBOARD_JSON = _dashboards()


def url(*pairs: tuple[str, str]) -> str:
    return "&".join(f"var-{name}={quote(value, safe='')}" for name, value in pairs)


@dataclass(frozen=True)
class State:
    """A dashboard URL, and the label values its panels' series may carry."""

    dashboard: str
    name: str
    url: str
    allowed: dict[str, tuple[str, ...]]


def _states() -> list[State]:
    states = []
    for uid in DASHBOARD_JSON:
        variables = {v["name"] for v in DASHBOARD_JSON[uid]["templating"]["list"]}
        states.append(State(uid, "default", "", {}))
        states.append(State(uid, "one job", url(("job", "crmsync")), {"job": ("crmsync",)}))
        if "view" in variables:
            states.append(State(uid, "last hour", url(("view", "1")), {}))
            states.append(State(uid, "no such job", url(("job", "gone")), {"job": ("gone",)}))
        if uid == "crmsync-object":
            states.append(State(uid, "one object", url(("object", "lead")), {"object": ("lead",)}))
            states.append(
                State(
                    uid,
                    "awkward object",
                    url(("object", AWKWARD_OBJECT)),
                    {"object": (AWKWARD_OBJECT,)},
                )
            )
        elif "object" in variables:
            states.append(State(uid, "one object", url(("object", "lead")), {"object": ("lead",)}))
            states.append(
                State(
                    uid,
                    "several objects",
                    url(("object", "lead"), ("object", "account")),
                    {"object": ("lead", "account")},
                )
            )
        if "direction" in variables:
            states.append(
                State(
                    uid,
                    "both directions by name",
                    url(("direction", "to_crm"), ("direction", "from_crm")),
                    {"direction": ("to_crm", "from_crm")},
                )
            )
            states.append(
                State(
                    uid, "one direction", url(("direction", "to_crm")), {"direction": ("to_crm",)}
                )
            )
        if "error_code" in variables:
            states.append(
                State(
                    uid,
                    "awkward code",
                    url(("error_code", AWKWARD_CODE)),
                    {"error_code": (AWKWARD_CODE,)},
                )
            )
    return states


STATES = _states()


@pytest.fixture(scope="module", params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def results(stack: Monitored, version: str) -> dict[tuple[str, str], Result]:
    """Every dashboard in every state of STATES, through one Grafana frontend."""
    end = datetime.now(UTC)
    runs = [
        Run(
            DASHBOARD_JSON[state.dashboard],
            state.url,
            end - timedelta(minutes=1),
            end,
            stack.prometheus,
        )
        for state in STATES
    ]
    answered = run_answered(
        version,
        runs,
        Backends(prometheus=stack.prometheus, scrape_interval=SCRAPE_INTERVAL),
        datasources(scrape_interval=SCRAPE_INTERVAL),
    )
    return {(s.dashboard, s.name): result for s, result in zip(STATES, answered, strict=True)}


def test_every_dashboard_has_promql_panels() -> None:
    kinds = {
        uid: {
            target.get("datasource", {}).get("type")
            for panel in dashboard["panels"]
            for target in panel.get("targets", [])
        }
        for uid, dashboard in DASHBOARD_JSON.items()
    }
    assert set(kinds) == {"crmsync-status", "crmsync-object", "crmsync-errors", "crmsync-capacity"}
    assert all("prometheus" in found for found in kinds.values())


@pytest.mark.parametrize("state", STATES, ids=[f"{s.dashboard}:{s.name}" for s in STATES])
def test_every_query_runs_and_keeps_to_the_chosen_values(
    results: dict[tuple[str, str], Result], state: State
) -> None:
    """The frontend leaves no variable unreplaced, Prometheus accepts every query, and series
    carry only the label values the state chose."""
    result = results[(state.dashboard, state.name)]
    names = "|".join(v["name"] for v in DASHBOARD_JSON[state.dashboard]["templating"]["list"])
    reference = re.compile(rf"\$\{{?({names})\b|\[\[({names})")
    for panel in result.panels:
        for query in panel.queries:
            text = str(query.get("expr", ""))
            assert not reference.search(text), f"{panel.title}: a variable is left in {text}"
        assert panel.errors == [], f"{panel.title}: {panel.errors}"
        for frame in panel.query_frames:
            for field in frame["fields"]:
                for label, allowed in {"store": (STORE,), **state.allowed}.items():
                    value = field["labels"].get(label)
                    assert value is None or value in allowed, f"{panel.title}: {label}={value}"


def _view_gated(expr: str) -> str | None:
    """The view a query answers in, when it answers in one view only."""
    gates = set(re.findall(r"vector\(\d\) == (\d)", expr))
    return gates.pop() if len(gates) == 1 else None


@pytest.mark.parametrize("dashboard", sorted(DASHBOARD_JSON), ids=sorted(DASHBOARD_JSON))
def test_every_query_returns_data_in_its_view(
    results: dict[tuple[str, str], Result], dashboard: str
) -> None:
    """Each query answers in the default state, or in its view of the Sync Status tab, and a
    view-gated query is empty in the other view."""
    default = results[(dashboard, "default")]
    last_hour = results.get((dashboard, "last hour"))
    for panel in default.panels:
        for query in panel.queries:
            if query["datasource"]["type"] != "prometheus":
                continue
            ref = str(query["refId"])
            gate = _view_gated(str(query["expr"]))
            rows = {"0": panel.rows(ref)}
            if last_hour is not None:
                rows["1"] = last_hour.panel(panel.title).rows(ref)
            if gate is None:
                assert any(rows.values()), f"{panel.title} {ref}: no data in {rows}"
            else:
                assert rows[gate] > 0, f"{panel.title} {ref}: no data in its view {gate}"
                assert all(n == 0 for view, n in rows.items() if view != gate), (
                    f"{panel.title} {ref} is not gated by the view: {rows}"
                )


@pytest.mark.parametrize(
    ("dashboard", "state", "panel"),
    [
        ("crmsync-object", "awkward object", "Pending inserts"),
        ("crmsync-errors", "awkward code", "Failed attempts by ${group:text}"),
    ],
)
def test_awkward_label_values_find_their_series(
    results: dict[tuple[str, str], Result], dashboard: str, state: str, panel: str
) -> None:
    """A label value with quotes, a backslash, %, $, : and non-ASCII, chosen in the URL,
    selects its own series."""
    found = results[(dashboard, state)].panel(panel)
    assert sum(frame["length"] for frame in found.query_frames) > 0, found.texts()


# --- the Sync Status table -------------------------------------------------------------------

BACKLOG_COLUMNS = [
    "Object",
    "Inserts",
    "Updates",
    "Oldest pending insert",
    "Oldest pending update",
]


def _synced_in_hour(store: sa.Engine, start: datetime) -> dict[str, int]:
    """The store's own count of changes synced in the hour from ``start``, per object."""
    begin = start.astimezone(UTC).replace(tzinfo=None)
    query = (
        sa.select(sa.func.lower(sync_history.c.object_type), sa.func.count())
        .where(sync_history.c.synced_at >= begin)
        .where(sync_history.c.synced_at < begin + timedelta(hours=1))
        .group_by(sa.func.lower(sync_history.c.object_type))
    )
    with store.connect() as connection:
        return {str(obj): int(n) for obj, n in connection.execute(query)}


def _last_hour(result: Result) -> tuple[datetime, datetime]:
    """The hour the Last hour view shows, from the dashboard's variables (milliseconds)."""
    start = float(result.variables["last_hour_start"]["value"])
    end = float(result.variables["last_hour_end"]["value"])
    return datetime.fromtimestamp(start / 1000, UTC), datetime.fromtimestamp(end / 1000, UTC)


def test_the_last_hour_is_a_full_clock_hour_and_named(
    results: dict[tuple[str, str], Result],
) -> None:
    result = results[("crmsync-status", "default")]
    start, end = _last_hour(result)
    assert end - start == timedelta(hours=1)
    assert start.minute == start.second == 0
    assert end <= datetime.now(UTC)
    named = f"Synced {start:%H:%M}-{end:%H:%M}"
    titles = [panel.shown_title for panel in result.panels]
    assert named in titles, titles


def test_the_backlog_view_shows_every_column_filled(
    results: dict[tuple[str, str], Result],
) -> None:
    table = results[("crmsync-status", "default")].panel("Sync Status").columns()
    assert set(table["Object"]) >= {"lead", "contact", "account", "opportunity"}
    for name in ("Inserts", "Updates"):
        assert all(re.fullmatch(r"\d+", text) for text in table[name]), table[name]
    empty = [name for name, texts in table.items() if not any(texts)]
    assert empty == [], f"empty columns in the Backlog view: {empty}"
    assert list(table) == BACKLOG_COLUMNS


def test_links_open_the_next_dashboard_on_the_value_clicked(
    results: dict[tuple[str, str], Result],
) -> None:
    """An object of the Sync Status table opens the object detail on that object, an error
    code series of the object detail the errors browser on that code: exactly, whatever their
    characters."""
    (frame,) = results[("crmsync-status", "default")].panel("Sync Status").table or []
    (objects,) = [field for field in frame["fields"] if field["name"] == "Object"]
    assert AWKWARD_OBJECT in objects["values"]
    for value, links in zip(objects["values"], objects["links"], strict=True):
        (link,) = links
        assert link_values(link["href"], "object") == [value], link["href"]
    panel = results[("crmsync-object", "one object")].panel("Failed attempts by error code")
    series = [
        (field["labels"]["error_code"], field["links"])
        for frame in panel.table or []
        for field in frame["fields"]
        if "error_code" in field["labels"]
    ]
    assert AWKWARD_CODE in [code for code, _ in series]
    for code, links in series:
        for href in {link["href"] for point in links for link in point}:
            assert link_values(href, "error_code") == [code], href


def test_the_last_hour_view_reads_na_for_inserts_and_updates(
    results: dict[tuple[str, str], Result], stack: Monitored
) -> None:
    result = results[("crmsync-status", "last hour")]
    start, end = _last_hour(result)
    synced = f"Synced {start:%H:%M}-{end:%H:%M}"
    table = result.panel("Sync Status").columns()
    assert list(table) == ["Object", "Inserts", "Updates", synced]
    assert set(table["Inserts"]) == {"N/A"}
    assert set(table["Updates"]) == {"N/A"}
    shown = dict(zip(table["Object"], table[synced], strict=True))
    counted = _synced_in_hour(stack.store, start)
    assert {obj: int(text) for obj, text in shown.items() if int(text)} == counted


def test_store_readable_reads_down_when_no_exporter_answers(
    results: dict[tuple[str, str], Result],
) -> None:
    def shown(state: str) -> list[str]:
        panel = results[("crmsync-status", state)].panel("Store readable")
        return [text for frame in panel.table or [] for f in frame["fields"] for text in f["texts"]]

    assert "UP" in shown("default")
    assert "DOWN" in shown("no such job")


@pytest.mark.parametrize("dashboard", sorted(DASHBOARD_JSON))
def test_every_variable_finds_its_values(
    results: dict[tuple[str, str], Result], dashboard: str
) -> None:
    """Each query variable reads values from Prometheus through the real datasource."""
    variables = results[(dashboard, "default")].variables
    empty = [
        name
        for name, state in variables.items()
        if state["type"] == "query" and not state["options"] and state["value"] in ("", None, [])
    ]
    assert empty == [], f"{dashboard}: no values for {empty}"
