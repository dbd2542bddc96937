"""The dashboards' SQL panels, run by Grafana's own frontend on real PostgreSQL and MariaDB.

Grafana's frontend code (scenes and the datasources', in two versions: grafana_frontend.py)
takes each variable state from a dashboard URL, as a link or a reload gives it, and sends the
panels' queries; grafana_server.py runs them as Grafana's server would; the frontend then makes
the table a person sees and its CSV export. Every result is compared with rows computed in
Python from the rows the test wrote: an independent answer, not a second copy of the SQL.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.dashboards import dashboards, link_values, reference_store
from crmsync_testing.failed_records import (
    ANCHOR,
    AWKWARD_CODE,
    CODES,
    COLUMNS,
    DIRECTIONS,
    FAILED,
    LABELS,
    LONG_TAIL,
    MAPPED,
    MATCHING,
    OBJECTS,
    OPERATIONS,
    RANGE,
    TIMESTAMP,
    TOP_CODES,
    Failure,
    epoch_ms,
    expected_failures,
    failures,
    time_unit,
    url,
)
from crmsync_testing.grafana_frontend import (
    SQL_PLUGINS,
    VERSIONS,
    Result,
    Run,
    datasources,
    run_answered,
)
from crmsync_testing.grafana_server import (
    Backends,
    SqlDialect,
    TimeRange,
    empty_database,
    run_sql,
    store_engine,
)
from crmsync_testing.helpers import queue_table
from crmsync_tools.dashboards import Json, Options, build_dashboards
from exporter.config import DEFAULT_ERROR_CODE_PATTERN, StoreConfig, parse_config
from exporter.labels import label_text
from exporter.schema import create_reference_schema, sync_error, sync_queue

pytestmark = [pytest.mark.grafana_frontend, pytest.mark.postgres, pytest.mark.mariadb]


@dataclass(frozen=True)
class State:
    """A state of the errors browser: its URL, and the filters it stands for."""

    name: str
    url: str
    filters: dict[str, Any] = field(default_factory=dict)


ATTACKS = [
    "x' OR '1'='1",
    "x' OR 1=1 -- ",
    "\\' OR 1=1 -- ",
    "\\'; DELETE FROM sync_error; -- ",
    "'); DROP TABLE sync_error; --",
    '" OR ""="',
    '\\" OR 1=1 #',
    "$__timeFilter(id) OR 1=1",
    "${object}",
    "%' OR '%'='",
    "&var-object=$__all&x=",
    "All' OR 'a'='a",
    "$__all') OR ('1'='1",
]
SEARCHES = [
    "O'Brien",
    "o'brien",
    '"Nina"',
    "back\\slash",
    "müller",
    "100%",
    "under_",
    "50% done",
    "it's",
    "00Q000101",
    "REQUEST_LIMIT",
    "record 3;",
    "see record 5; it's",
    "pct%41$dollar:colon_über&amp#hash+plus",
]
STATES = [
    State("default", ""),
    State("All from a link", url(("object", "All"))),
    State("one object", url(("object", "lead")), {"objects": ("lead",)}),
    State(
        "several objects",
        url(("object", "lead"), ("object", "account")),
        {"objects": ("lead", "account")},
    ),
    State(
        "operation and direction",
        url(("operation", "update"), ("direction", "to_crm")),
        {"operations": ("update",), "directions": ("to_crm",)},
    ),
    State("one code", url(("error_code", "FIELD_INTEGRITY")), {"codes": ("FIELD_INTEGRITY",)}),
    State(
        "object and two codes",
        url(
            ("object", "contact"),
            ("error_code", "DUPLICATE_VALUE"),
            ("error_code", "INVALID_EMAIL_ADDRESS"),
        ),
        {"objects": ("contact",), "codes": ("DUPLICATE_VALUE", "INVALID_EMAIL_ADDRESS")},
    ),
    State(
        "awkward code",
        url(("error_code", AWKWARD_CODE)),
        {"codes": (AWKWARD_CODE,)},
    ),
    State("empty search", url(("search", ""))),
    State("long search", url(("search", LONG_TAIL)), {"search": LONG_TAIL}),
    *[State(f"search {text}", url(("search", text)), {"search": text}) for text in SEARCHES],
    *[State(f"hostile search {text}", url(("search", text)), {"search": text}) for text in ATTACKS],
    *[
        State(f"hostile object {text}", url(("object", text)), {"objects": (text,)})
        for text in (*ATTACKS[:4], *ATTACKS[-3:])
    ],
    *[State(f"hostile page {text}", url(("page", text))) for text in ATTACKS[-3:]],
    State(
        "hostile values among real ones",
        url(("object", "lead"), ("object", ATTACKS[0]), ("error_code", ATTACKS[3])),
        {"objects": ("lead", ATTACKS[0]), "codes": (ATTACKS[3],)},
    ),
]


def pending(now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "object_type": OBJECTS[index % 4],
            "record_id": f"Q{index:04d}",
            "operation": OPERATIONS[(index // 4) % 2],
            "direction": DIRECTIONS[(index // 8) % 2],
            "enqueued_at": now - timedelta(minutes=5 * index + 1),
        }
        for index in range(40)
    ]


def mapped_store() -> StoreConfig:
    return parse_config(MAPPED).stores[0]


def _fill_mapped(engine: sa.Engine) -> None:
    """The failures again, in one status table with the mapped store's names and values."""
    metadata = sa.MetaData()
    table = sa.Table(
        "crm_change",
        metadata,
        sa.Column("change_id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(8)),
        sa.Column("obj", sa.String(64)),
        sa.Column("op", sa.String(8)),
        sa.Column("dir", sa.String(8)),
        sa.Column("rec", sa.String(64)),
        sa.Column("rec_name", sa.String(255), nullable=True),
        sa.Column("queued", TIMESTAMP),
        sa.Column("done", TIMESTAMP, nullable=True),
        sa.Column("failed", TIMESTAMP, nullable=True),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("msg", sa.Text, nullable=True),
    )
    metadata.create_all(engine)
    operations = {"insert": "INS", "update": "U"}
    directions = {"to_crm": "OUT", "from_crm": "IN"}
    with engine.begin() as connection:
        connection.execute(
            table.insert(),
            [
                {
                    "change_id": row.id,
                    "state": "ERR" if row.id % 5 else "OK",
                    "obj": row.object.upper(),
                    "op": operations[row.operation],
                    "dir": directions[row.direction],
                    "rec": row.record_id,
                    "rec_name": row.record_name,
                    "queued": row.failed_at - timedelta(minutes=1),
                    "done": None,
                    "failed": row.failed_at,
                    "code": row.error_code,
                    "msg": row.error_message,
                }
                for row in failures()
            ],
        )


TRIGGER_LOG = """
stores:
  - name: capture
    url: 'postgresql+psycopg://u@h/db'
    operations: {insert: [INSERT], update: [UPDATE]}
    mapping:
      constants: {direction: to_crm}
      queue:
        table: hc_log
        object_type: table_name
        operation: action
        enqueued_at: created_at
        filter: {column: state, values: [NEW, PENDING]}
      history:
        table: hc_log
        archive_table: hc_log_archive
        object_type: table_name
        operation: action
        enqueued_at: created_at
        synced_at: processed_at
        filter: {column: state, values: [SUCCESS]}
      errors:
        table: hc_log
        archive_table: hc_log_archive
        object_type: table_name
        operation: action
        record_name: null
        error_code: null
        error_message: sf_message
        failed_at: processed_at
        filter: {column: state, values: [FAILED]}
"""
CODE_IN_MESSAGE = re.compile(DEFAULT_ERROR_CODE_PATTERN)


def trigger_log_store() -> StoreConfig:
    return parse_config(TRIGGER_LOG).stores[0]


def trigger_log_failures() -> list[Failure]:
    """The failures as a trigger log keeps them: the code in the message, one direction."""
    rows = []
    for row in failures():
        message = f"{row.error_code}: {row.error_message}"
        found = CODE_IN_MESSAGE.search(message)
        rows.append(
            replace(
                row,
                record_name=None,
                direction="to_crm",
                error_code=found.group(1) if found else "unknown",
                error_message=message,
            )
        )
    return rows


def _fill_trigger_log(engine: sa.Engine) -> None:
    """The failures again in a trigger log and its archive (odd ids archived), some synced."""
    metadata = sa.MetaData()
    tables = [
        sa.Table(
            name,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("state", sa.String(8)),
            sa.Column("action", sa.String(7)),
            sa.Column("table_name", sa.String(128)),
            sa.Column("record_id", sa.String(64)),
            sa.Column("created_at", TIMESTAMP),
            sa.Column("processed_at", TIMESTAMP, nullable=True),
            sa.Column("sf_message", sa.Text, nullable=True),
        )
        for name in ("hc_log", "hc_log_archive")
    ]
    metadata.create_all(engine)
    with engine.begin() as connection:
        for row in trigger_log_failures():
            connection.execute(
                tables[row.id % 2].insert(),
                {
                    "id": row.id,
                    "state": "FAILED" if row.id % 5 else "SUCCESS",
                    "action": row.operation.upper(),
                    "table_name": row.object,
                    "record_id": row.record_id,
                    "created_at": row.failed_at - timedelta(minutes=1),
                    "processed_at": row.failed_at,
                    "sf_message": row.error_message if row.id % 5 else None,
                },
            )


@dataclass(frozen=True)
class Store:
    engine: sa.Engine
    dialect: SqlDialect
    now: datetime  # when it was filled, by the database's clock (UTC)
    pending: list[dict[str, Any]]

    @property
    def backends(self) -> Backends:
        def sql(text: str, ref_id: str, time_range: TimeRange) -> Json:
            return run_sql(self.engine, text, ref_id, time_range, self.dialect)

        return Backends(sql=sql)

    def count_errors(self) -> int:
        with self.engine.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(sync_error))
            return int(count.scalar_one())


def _database_now(engine: sa.Engine, dialect: SqlDialect) -> datetime:
    with engine.connect() as connection:
        now: datetime = connection.execute(
            sa.text(
                "SELECT UTC_TIMESTAMP(6)"
                if dialect == "mysql"
                else "SELECT now() AT TIME ZONE 'UTC'"
            )
        ).scalar_one()
    return now


def _fill_reference(engine: sa.Engine, dialect: SqlDialect) -> Store:
    create_reference_schema(engine)
    now = _database_now(engine, dialect)
    rows = pending(now)
    with engine.begin() as connection:
        connection.execute(
            sync_error.insert(),
            [{**vars(row), "object_type": row.object} for row in failures()],
        )
        connection.execute(sync_queue.insert(), rows)
    return Store(engine, dialect, now, rows)


# --- labels as the exporter gives them ------------------------------------------------------

ODD_FAILURES = [
    # object, operation, direction, error_code as stored
    (" LEAD ", "INSERT", "to_crm", " DUPLICATE_VALUE\t"),
    ("lead", "insert", "to_crm", ""),
    ("contact", "update", "from_crm", "   "),
    ("contact", "update", "from_crm", "X" * 70),
    ("account", "insert", "to_crm", "TOTALLY_NEW_CODE"),
    ("Campaign", "insert", "to_crm", "DUPLICATE_VALUE"),
    ("campaign_member", "delete", "sideways", "DUPLICATE_VALUE"),
]
# What the exporter reports (its caps already full): the Prometheus label values the
# dashboards' hidden "reported" variables read.
REPORTED_CODES = (*CODES, "unknown", "X" * 64, "other")
REPORTED_OBJECTS = (*OBJECTS, "campaign", "other")
REPORTED = {**LABELS, "object": list(REPORTED_OBJECTS), "error_code": list(REPORTED_CODES)}
LABEL_CASES = [
    ("error_code", "other"),
    ("error_code", "unknown"),
    ("error_code", "DUPLICATE_VALUE"),
    ("error_code", "X" * 64),
    ("object", "other"),
    ("object", "lead"),
    ("object", "campaign"),
    ("operation", "other"),
    ("direction", "other"),
]


# The exporter folds nothing yet and has not seen campaigns or the odd codes since it started
# (it counts from its first read: failures from before then have no series).
UNSEEN_CASES = [
    ("error_code", "TOTALLY_NEW_CODE"),
    ("error_code", "unknown"),
    ("error_code", "X" * 64),
    ("object", "campaign"),
    ("object", "campaign_member"),
]
REPORTS = {"label": (REPORTED, LABEL_CASES), "unseen": (LABELS, UNSEEN_CASES)}


def _labels(
    row: tuple[str, str, str, str], reported: Mapping[str, Sequence[str]]
) -> tuple[str, str, str, str]:
    """The exporter's label values of a stored row, given what it reports: a value it does not
    report is other once it reports other (its cap is full), and itself before."""

    def capped(text: str, name: str, preset: Sequence[str] = ()) -> str:
        listed = reported[name]
        kept = text in listed or text in preset or "other" not in listed
        return text if kept else "other"

    obj, operation, direction, code = row
    operation_text = label_text(operation, lower=True)
    direction_text = label_text(direction, lower=True)
    return (
        capped(label_text(obj, lower=True), "object", OBJECTS),
        operation_text if operation_text in OPERATIONS else "other",
        direction_text if direction_text in DIRECTIONS else "other",
        capped(label_text(code, lower=False), "error_code"),
    )


def _fill_odd(engine: sa.Engine, dialect: SqlDialect) -> Store:
    """The failures again, and rows whose values the exporter folds, blanks, cuts or strips."""
    create_reference_schema(engine)
    moment = ANCHOR - timedelta(minutes=30)
    with engine.begin() as connection:
        # A mapped store's code column may be longer than the exporter's labels.
        connection.exec_driver_sql(
            "ALTER TABLE sync_error ALTER COLUMN error_code TYPE varchar(255)"
            if dialect == "postgresql"
            else "ALTER TABLE sync_error MODIFY error_code VARCHAR(255) NOT NULL"
        )
        connection.execute(
            sync_error.insert(),
            [{**vars(row), "object_type": row.object} for row in failures()]
            + [
                {
                    "id": 1000 + index,
                    "failed_at": moment + timedelta(seconds=index),
                    "object_type": obj,
                    "record_id": f"ODD{index}",
                    "record_name": None,
                    "operation": operation,
                    "direction": direction,
                    "error_code": code,
                    "error_message": f"odd {index}",
                }
                for index, (obj, operation, direction, code) in enumerate(ODD_FAILURES)
            ],
        )
    return Store(engine, dialect, _database_now(engine, dialect), [])


# --- ages in a session far from UTC ---------------------------------------------------------

# PostgreSQL takes the zone's name; this MariaDB has no time zone tables, so Berlin's offset.
BERLIN = {"postgresql": "Europe/Berlin", "mysql": "+01:00"}
AGES = {"A": 60.0, "B": 3600.0 * 5 + 30}


def _fill_queue(url: str, dialect: SqlDialect, zoned: bool) -> Store:
    """A queue whose enqueued_at is timestamp|DATETIME or timestamptz|TIMESTAMP, read through
    a session in Berlin."""
    column = (
        sa.TIMESTAMP(timezone=True)
        if zoned and dialect == "postgresql"
        else sa.dialects.mysql.TIMESTAMP(fsp=6)
        if zoned
        else TIMESTAMP
    )
    writer = store_engine(url, dialect, time_zone="+00:00")
    queue = queue_table(column)
    queue.create(writer)
    now = datetime.now(UTC)
    with writer.begin() as connection:
        connection.execute(
            queue.insert(),
            [
                {
                    "object_type": "lead",
                    "record_id": record,
                    "operation": "insert",
                    "direction": "to_crm",
                    # Written through a UTC session: the instant, whatever the type.
                    "enqueued_at": (now - timedelta(seconds=age)).replace(tzinfo=None),
                }
                for record, age in AGES.items()
            ],
        )
    writer.dispose()
    berlin = store_engine(url, dialect, time_zone=BERLIN[dialect])
    return Store(berlin, dialect, now.replace(tzinfo=None), [])


@pytest.fixture(scope="module")
def stores(sql_server: tuple[sa.Engine, SqlDialect]) -> Iterator[dict[str, Store]]:
    """The stores of the module on one server: the reference store (with a mapped status table
    beside it), one with values the exporter folds, and two queues read from Berlin."""
    engine, dialect = sql_server
    with ExitStack() as opened:
        main = _fill_reference(engine, dialect)
        _fill_mapped(engine)
        _fill_trigger_log(engine)
        found = {"main": main}
        found["odd"] = _fill_odd(
            store_engine(opened.enter_context(empty_database(dialect)), dialect), dialect
        )
        for zoned in (False, True):
            url_ = opened.enter_context(empty_database(dialect))
            found[f"berlin-{zoned}"] = _fill_queue(url_, dialect, zoned)
        yield found
        for name, store in found.items():
            if name != "main":
                store.engine.dispose()


@pytest.fixture(scope="module")
def store(stores: dict[str, Store]) -> Store:
    return stores["main"]


@pytest.fixture(scope="module", params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- every dashboard state the module checks, run in one go per frontend ----------------------


@dataclass(frozen=True)
class Case:
    """A dashboard at one URL on one of the stores; only the named panels' queries run."""

    key: str
    dashboard: Json
    url: str
    panels: tuple[str, ...] | None = None
    store: str = "main"
    labels: Mapping[str, Sequence[str]] = field(default_factory=lambda: LABELS)


PAGES = [str(page) for page in range(1, 9)]
ODD_PAGES = ["0", "-3", "x", ""]
TOP_CODE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    (url(("object", "lead"), ("error_code", "FIELD_INTEGRITY")), {"objects": ("lead",)}),
]
# The default (the first object, as the variable sorts them), one object, and one direction.
OLDEST_CASES: list[tuple[tuple[str, str], ...]] = [
    (),
    (("object", "contact"),),
    (("object", "contact"), ("direction", "from_crm")),
]
MAPPED_CASES = [
    State("default", ""),
    State(
        "insert from the CRM",
        url(("operation", "insert"), ("direction", "from_crm")),
        {"operations": ("insert",), "directions": ("from_crm",)},
    ),
    State("search", url(("search", "O'Brien")), {"search": "O'Brien"}),
]
TRIGGER_CASES = [
    State("default", ""),
    State("updates", url(("operation", "update")), {"operations": ("update",)}),
    State("a code", url(("error_code", "DUPLICATE_VALUE")), {"codes": ("DUPLICATE_VALUE",)}),
]
# Typed into the search box: ends the literal where backslashes escape, if it is not encoded.
TYPED = "\\' OR 1=1 -- "


def sqlstring_probe(dialect: SqlDialect) -> Json:
    """A panel that takes the search box with scenes' own sqlstring format."""
    return {
        "uid": "probe",
        "title": "sqlstring probe",
        "templating": {"list": [{"name": "search", "type": "textbox", "query": ""}]},
        "panels": [
            {
                "id": 1,
                "type": "table",
                "title": "probe",
                "datasource": {"type": SQL_PLUGINS[dialect], "uid": "crmsync-store"},
                "targets": [
                    {
                        "refId": "A",
                        "format": "table",
                        "rawSql": "SELECT count(*) AS matched FROM sync_error "
                        "WHERE record_name = ${search:sqlstring}",
                    }
                ],
            }
        ],
    }


def cases(dialect: SqlDialect) -> list[Case]:
    boards = dashboards(None, dialect)
    errors, detail = boards["crmsync-errors"], boards["crmsync-object"]
    built = build_dashboards(reference_store(), Options(dialect=dialect, page_size=10))
    paged = next(d for d in built.values() if d["uid"] == "crmsync-errors")
    mapped = dashboards(mapped_store(), dialect)["crmsync-errors"]
    trigger_log = dashboards(trigger_log_store(), dialect)["crmsync-errors"]
    browse = (FAILED, MATCHING)
    empty: dict[str, list[str]] = {name: [] for name in LABELS}
    return [
        *[Case(f"state {s.name}", errors, s.url, browse) for s in STATES],
        *[Case(f"page {p}", paged, url(("page", p)), browse) for p in PAGES + ODD_PAGES],
        *[Case(f"top {i}", errors, u, (TOP_CODES,)) for i, (u, _) in enumerate(TOP_CODE_CASES)],
        Case(
            "no reported values",
            errors,
            url(("error_code", "FIELD_INTEGRITY")),
            (FAILED,),
            labels=empty,
        ),
        Case("sqlstring", sqlstring_probe(dialect), url(("search", TYPED))),
        *[Case(f"oldest {i}", detail, url(*pairs)) for i, pairs in enumerate(OLDEST_CASES)],
        *[Case(f"mapped {s.name}", mapped, s.url, (FAILED,)) for s in MAPPED_CASES],
        *[Case(f"trigger log {s.name}", trigger_log, s.url, (FAILED,)) for s in TRIGGER_CASES],
        *[
            Case(f"{kind} {v}={value}", errors, url((v, value)), (FAILED,), "odd", reported)
            for kind, (reported, label_cases) in REPORTS.items()
            for v, value in label_cases
        ],
        *[
            Case(f"{kind} top", errors, "", (TOP_CODES,), "odd", reported)
            for kind, (reported, _) in REPORTS.items()
        ],
        *[
            Case(f"ages {zoned}", detail, url(("object", "lead")), store=f"berlin-{zoned}")
            for zoned in (False, True)
        ],
    ]


@pytest.fixture(scope="module")
def answered(stores: dict[str, Store], version: str) -> dict[str, Result]:
    """Every case of the module through one Grafana frontend, in one run of the harness."""
    dialect = stores["main"].dialect
    todo = cases(dialect)
    runs = [
        Run(
            case.dashboard,
            case.url,
            RANGE.start,
            RANGE.end,
            labels=case.labels,
            backends=stores[case.store].backends,
            panels=case.panels,
        )
        for case in todo
    ]
    results = run_answered(version, runs, sources=datasources(dialect))
    return {case.key: result for case, result in zip(todo, results, strict=True)}


def table_rows(
    result: Result, title: str, columns: Sequence[str] = COLUMNS
) -> list[tuple[Any, ...]]:
    """The rows of a table panel, raw values of the given columns (no rows: an empty list)."""
    panel = result.panel(title)
    assert panel.errors == [], f"{title}: {panel.errors}"
    assert panel.table is not None
    if not panel.table or not panel.table[0]["fields"]:
        return []
    (frame,) = panel.table
    values = {column["name"]: column["values"] for column in frame["fields"]}
    missing = [name for name in columns if name not in values]
    assert not missing, f"{title} has no column {missing}; it has {list(values)}"
    return list(zip(*(values[name] for name in columns), strict=True))


def stat_value(result: Result, title: str) -> float | None:
    panel = result.panel(title)
    assert panel.errors == [], f"{title}: {panel.errors}"
    assert panel.table is not None
    for frame in panel.table:
        for column in frame["fields"]:
            if column["type"] == "number" and column["values"]:
                return float(column["values"][0])
    return None


def matching(result: Result) -> tuple[int, int]:
    """Matching failed records: the count, and the pages it makes."""
    panel = result.panel(MATCHING)
    assert panel.errors == [], f"{MATCHING}: {panel.errors}"
    assert panel.table is not None
    columns = {column["name"]: column["values"] for column in panel.table[0]["fields"]}
    return int(columns["matching failed records"][0]), int(columns["pages"][0])


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES, ids=[state.name for state in STATES])
def test_failed_records_follow_the_variables(answered: dict[str, Result], state: State) -> None:
    """What the browser lists and counts in each state: exactly the failures it stands for."""
    result = answered[f"state {state.name}"]
    expected = expected_failures(failures(), **state.filters)
    if not state.name.startswith("hostile"):
        assert expected, f"the test data should match {state.name}"
    assert table_rows(result, FAILED) == expected[:500]
    assert matching(result)[0] == len(expected)


def test_typed_text_changed_no_table(answered: dict[str, Result], store: Store) -> None:
    """After every hostile search, filter value and page, the store still holds every row."""
    assert answered
    assert store.count_errors() == len(failures())


def _csv_cell(value: Any) -> str:
    return "" if value is None else str(value)


def test_the_failed_records_read_and_export_as_shown(answered: dict[str, Result]) -> None:
    """Times read as dates in the table; Inspect > Data > Download CSV has every row."""
    result = answered["state search O'Brien"]
    expected = expected_failures(failures(), search="O'Brien")
    panel = result.panel(FAILED)
    columns = panel.columns()
    unit = time_unit(dashboards(None, "postgresql")["crmsync-errors"])
    # dateTimeAsLocal follows the browser's locale: en-US in the harness (jsdom), UTC.
    shape = {"dateTimeAsIso": "%Y-%m-%d %H:%M:%S", "dateTimeAsLocal": "%m/%d/%Y, %I:%M:%S %p"}
    assert [text.replace("\u202f", " ") for text in columns["time"]] == [
        datetime.fromtimestamp(row[0] / 1000, UTC).strftime(shape[unit]) for row in expected
    ]
    assert panel.csv is not None
    exported = list(csv.reader(io.StringIO(panel.csv)))
    header, *body = exported
    assert header[: len(COLUMNS)] == list(COLUMNS)
    position = {name: header.index(name) for name in COLUMNS}
    assert [[line[position[name]] for name in COLUMNS[1:]] for line in body] == [
        [_csv_cell(value) for value in row[1:]] for row in expected
    ]
    assert [line[position["time"]] for line in body] == columns["time"]


def test_grafanas_sqlstring_format_is_injectable_on_mariadb(
    answered: dict[str, Result], store: Store
) -> None:
    """Why the dashboards decode ${var:queryparam} instead: scenes' own sqlstring format
    doubles quotes but leaves backslashes alone, which MariaDB reads as escapes (PostgreSQL,
    with standard_conforming_strings, does not)."""
    matched = stat_value(answered["sqlstring"], "probe")
    assert matched == (len(failures()) if store.dialect == "mysql" else 0)


def test_pages_reach_every_matching_record_and_the_total_is_shown(
    answered: dict[str, Result],
) -> None:
    """Pages of 10 through the 62 matching failures: 7 pages, the last one of 2 rows; a page
    that is no page number shows the first."""
    expected = expected_failures(failures())
    pages = [table_rows(answered[f"page {page}"], FAILED) for page in PAGES]
    assert [len(rows) for rows in pages] == [10, 10, 10, 10, 10, 10, 2, 0]
    assert [row for rows in pages for row in rows] == expected
    assert matching(answered["page 1"]) == (62, 7)
    for page in ODD_PAGES:
        assert table_rows(answered[f"page {page}"], FAILED) == expected[:10], f"page {page!r}"


def test_top_error_codes_count_share_last_seen_and_newest_message(
    answered: dict[str, Result],
) -> None:
    """The codes of the matching failures, most frequent first; the code filter does not narrow
    this table, it is where a code is picked, and each code opens the browser filtered to it."""
    columns = ("error code", "failures", "share", "last seen", "example message")
    for index, (_, filters) in enumerate(TOP_CODE_CASES):
        result = answered[f"top {index}"]
        rows = expected_failures(failures(), **filters)
        by_code: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:  # newest first
            by_code.setdefault(row[6], []).append(row)
        expected = sorted(
            (
                (code, len(mine), len(mine) / len(rows), mine[0][0], mine[0][7])
                for code, mine in by_code.items()
            ),
            key=lambda item: (-item[1], item[0]),
        )
        shown = table_rows(result, TOP_CODES, columns)
        assert [row[:2] for row in shown] == [row[:2] for row in expected]
        for got, want in zip(shown, expected, strict=True):
            assert got[2] == pytest.approx(want[2])
            assert got[3:] == want[3:]
        (frame,) = result.panel(TOP_CODES).table or []
        (code_column,) = [c for c in frame["fields"] if c["name"] == "error code"]
        for code, links in zip(code_column["values"], code_column["links"], strict=True):
            (link,) = links
            assert link_values(link["href"], "error_code") == [code], link["href"]


def _odd_store_rows() -> list[tuple[str, tuple[str, str, str, str]]]:
    """The odd store's failures in the range: (record id, (object, operation, direction, code))."""
    rows = [(f"ODD{index}", row) for index, row in enumerate(ODD_FAILURES)]
    rows += [
        (row.record_id, (row.object, row.operation, row.direction, row.error_code))
        for row in failures()
        if RANGE.start <= row.failed_at.replace(tzinfo=UTC) <= RANGE.end
    ]
    return rows


@pytest.mark.parametrize("kind", REPORTS)
def test_folded_blank_and_unseen_values_are_found_under_the_exporters_labels(
    answered: dict[str, Result], kind: str
) -> None:
    """A series labelled other or unknown leads to its records: the exporter's rules in SQL.
    A value the exporter does not report while it folds nothing (it has not seen it since it
    started) keeps its name, as the exporter would report it."""
    reported, label_cases = REPORTS[kind]
    for variable, value in label_cases:
        position = {"object": 0, "operation": 1, "direction": 2, "error_code": 3}[variable]
        expected_ids = sorted(
            record for record, row in _odd_store_rows() if _labels(row, reported)[position] == value
        )
        assert expected_ids
        rows = table_rows(answered[f"{kind} {variable}={value}"], FAILED)
        assert sorted(row[2] for row in rows) == expected_ids, f"{variable}={value}"
        # Shown as the store has them, stripped and cut as labels are.
        for row in rows:
            if row[2].startswith("ODD"):
                obj, _, _, code = ODD_FAILURES[int(row[2].removeprefix("ODD"))]
                assert row[1] == label_text(obj, lower=True)
                assert row[6] == label_text(code, lower=False)


@pytest.mark.parametrize("kind", REPORTS)
def test_top_error_codes_name_codes_as_the_exporter_does(
    answered: dict[str, Result], kind: str
) -> None:
    """Folded codes count under other; codes the exporter has not seen, while it folds nothing,
    under their own names, each a link to its failures."""
    reported, _ = REPORTS[kind]
    counted = Counter(_labels(row, reported)[3] for _, row in _odd_store_rows())
    shown = table_rows(answered[f"{kind} top"], TOP_CODES, ("error code", "failures"))
    assert dict(shown) == counted
    if kind == "unseen":
        assert "other" not in counted
        assert counted["TOTALLY_NEW_CODE"] == 1
    else:
        assert counted["other"] == 1  # TOTALLY_NEW_CODE, over the cap


def test_without_a_list_of_reported_values_nothing_is_called_other(
    answered: dict[str, Result],
) -> None:
    """No Prometheus data (no label values): the store's values are taken as they are."""
    rows = table_rows(answered["no reported values"], FAILED)
    assert rows == expected_failures(failures(), codes=("FIELD_INTEGRITY",))


def test_oldest_pending_records_are_the_oldest_of_each_operation(
    answered: dict[str, Result], store: Store
) -> None:
    for index, pairs in enumerate(OLDEST_CASES):
        result = answered[f"oldest {index}"]
        directions = [value for name, value in pairs if name == "direction"] or DIRECTIONS
        objects = [value for name, value in pairs if name == "object"] or [min(OBJECTS)]
        expected = []
        for operation in OPERATIONS:
            mine = sorted(
                (
                    row
                    for row in store.pending
                    if row["object_type"] in objects
                    and row["operation"] == operation
                    and row["direction"] in directions
                ),
                key=lambda row: row["enqueued_at"],
            )
            expected += mine[:5]
        expected.sort(key=lambda row: row["enqueued_at"])
        rows = table_rows(
            result,
            "Oldest pending records",
            ("enqueued_at", "record_id", "operation", "direction", "age"),
        )
        assert [row[:4] for row in rows] == [
            (epoch_ms(r["enqueued_at"]), r["record_id"], r["operation"], r["direction"])
            for r in expected
        ], f"at {result.url!r}"
        since_fill = (datetime.now(UTC).replace(tzinfo=None) - store.now).total_seconds()
        for row, want in zip(rows, expected, strict=True):
            age = (store.now - want["enqueued_at"]).total_seconds()
            assert age - 1 <= float(row[4]) <= age + since_fill + 5


def test_a_mapped_single_table_store_gets_sql_that_fits_it(answered: dict[str, Result]) -> None:
    failed = [row for row in failures() if row.id % 5]
    for case in MAPPED_CASES:
        result = answered[f"mapped {case.name}"]
        assert table_rows(result, FAILED) == expected_failures(failed, **case.filters)
    sql = answered["mapped default"].panel(FAILED).texts()[0]
    assert "sync_error" not in sql
    assert "crm_change" in sql


def test_a_trigger_log_with_an_archive_gets_sql_that_fits_it(
    answered: dict[str, Result],
) -> None:
    """Both tables read, the code taken from the message, the one direction, no record name."""
    failed = [row for row in trigger_log_failures() if row.id % 5]
    assert {row.error_code for row in failed} >= {"DUPLICATE_VALUE", "unknown"}
    for case in TRIGGER_CASES:
        filters = {"codes": (*CODES, "unknown"), **case.filters}
        expected = expected_failures(failed, **filters)
        assert expected
        assert table_rows(answered[f"trigger log {case.name}"], FAILED) == expected


@pytest.mark.parametrize(
    "zoned", [False, True], ids=["timestamp|DATETIME", "timestamptz|TIMESTAMP"]
)
def test_ages_are_right_in_a_session_far_from_utc(
    answered: dict[str, Result], stores: dict[str, Store], zoned: bool
) -> None:
    """A change enqueued a minute ago is a minute old, whatever the column type and session."""
    elapsed = (
        datetime.now(UTC).replace(tzinfo=None) - stores[f"berlin-{zoned}"].now
    ).total_seconds()
    rows = table_rows(
        answered[f"ages {zoned}"],
        "Oldest pending records",
        ("enqueued_at", "record_id", "operation", "direction", "age"),
    )
    served = {row[1]: float(row[4]) for row in rows}
    assert set(served) == set(AGES)
    for record, age in AGES.items():
        assert age - 1 <= served[record] <= age + elapsed + 1, (record, served[record])
