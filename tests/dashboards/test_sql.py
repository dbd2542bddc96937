"""The dashboards' SQL, expanded as Grafana expands it, on real PostgreSQL and MariaDB.

Every result is compared with what the rows written by the test say it must be, computed in
Python: an independent answer, not a second copy of the SQL. Each query runs with the
variables as @grafana/scenes before 5.20 writes them ("All" as `All`) and as later versions
write them (their URL state: "All" as `$__all`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.mysql import DATETIME

from exporter.config import StoreConfig, parse_config
from exporter.dashboard_sql import SqlDialect
from exporter.dashboards import Options, build_dashboards
from exporter.labels import label_text
from exporter.schema import create_reference_schema, sync_error, sync_queue
from tests.dashboards.common import dashboards, reference_store, sql_of
from tests.dashboards.grafana import Context, Selection, TimeRange, render_sql, sqlstring
from tests.test_timezones import queue_table

OBJECTS = ("lead", "contact", "account", "opportunity")
OPERATIONS = ("insert", "update")
DIRECTIONS = ("to_crm", "from_crm")
CODES = ("DUPLICATE_VALUE", "REQUEST_LIMIT_EXCEEDED", "INVALID_EMAIL_ADDRESS", "FIELD_INTEGRITY")
NAMES = (
    "O'Brien",
    'Anna "Nina" Berg',
    "back\\slash",
    "Müller",
    "100% sure",
    "under_score",
    None,
    "Plain Name",
)
# Microseconds on MariaDB too, as in the reference schema.
TIMESTAMP = sa.DateTime().with_variant(DATETIME(fsp=6), "mysql", "mariadb")
ANCHOR = datetime(2026, 3, 2, 12, 0, 0)
RANGE = TimeRange(ANCHOR - timedelta(hours=2), ANCHOR)


@dataclass(frozen=True)
class Failure:
    id: int
    failed_at: datetime
    object: str
    record_id: str
    record_name: str | None
    operation: str
    direction: str
    error_code: str
    error_message: str


def failures() -> list[Failure]:
    rows = []
    for index in range(160):
        rows.append(
            Failure(
                id=index + 1,
                # Every 37 seconds from 3 hours back: some rows fall outside the range.
                failed_at=ANCHOR - timedelta(hours=3) + timedelta(seconds=37 * index + 0.25),
                object=OBJECTS[index % 4],
                record_id=f"00Q{index:06d}",
                record_name=NAMES[index % len(NAMES)],
                operation=OPERATIONS[(index // 4) % 2],
                direction=DIRECTIONS[(index // 8) % 2],
                error_code=CODES[index % 3 if index % 10 else 3],
                error_message=f"attempt {index} failed: see record {index % 7}; it's 50% done",
            )
        )
    return rows


def pending(now: datetime) -> list[dict[str, Any]]:
    rows = []
    for index in range(40):
        rows.append(
            {
                "object_type": OBJECTS[index % 4],
                "record_id": f"Q{index:04d}",
                "operation": OPERATIONS[(index // 4) % 2],
                "direction": DIRECTIONS[(index // 8) % 2],
                "enqueued_at": now - timedelta(minutes=5 * index + 1),
            }
        )
    return rows


def every(name: str, options: Sequence[str]) -> Selection:
    """A multi-value variable with All selected, as the dashboards define it."""
    return Selection(
        (), multi=True, include_all=True, all_value=".*", is_all=True, options=tuple(options)
    )


def reported(options: Sequence[str]) -> Selection:
    """A hidden list of every value the exporter reports: "All", without a custom value."""
    return Selection((), multi=True, include_all=True, is_all=True, options=tuple(options))


def chosen(*values: str) -> Selection:
    return Selection(tuple(values), multi=True, include_all=True, all_value=".*")


@pytest.fixture(params=[False, True], ids=["scenes-5.19", "scenes-5.20"])
def url_state(request: pytest.FixtureRequest) -> bool:
    """How `queryparam` writes variables: their values, or (scenes 5.20+) their URL state."""
    return bool(request.param)


def error_context(url_state: bool = False, **changes: Selection) -> Context:
    variables = {
        "object": every("object", OBJECTS),
        "operation": every("operation", OPERATIONS),
        "direction": every("direction", DIRECTIONS),
        "error_code": every("error_code", CODES),
        "search": Selection.one(""),
        "page": Selection.one("1"),
        "reported_objects": reported(OBJECTS),
        "reported_error_codes": reported(CODES),
        **changes,
    }
    return Context(variables, url_state=url_state)


def expected_failures(
    rows: Sequence[Failure],
    *,
    objects: Sequence[str] = OBJECTS,
    operations: Sequence[str] = OPERATIONS,
    directions: Sequence[str] = DIRECTIONS,
    codes: Sequence[str] = CODES,
    search: str = "",
    limit: int = 500,
) -> list[tuple[Any, ...]]:
    needle = search.lower()
    hits = [
        row
        for row in rows
        if RANGE.start <= row.failed_at <= RANGE.end
        and row.object in objects
        and row.operation in operations
        and row.direction in directions
        and row.error_code in codes
        and (
            not needle
            or any(
                needle in (text or "").lower()
                for text in (row.record_id, row.record_name, row.error_code, row.error_message)
            )
        )
    ]
    hits.sort(key=lambda row: (row.failed_at, row.id), reverse=True)
    return [
        (
            row.failed_at,
            row.object,
            row.record_id,
            row.record_name,
            row.operation,
            row.direction,
            row.error_code,
            row.error_message,
        )
        for row in hits[:limit]
    ]


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[sa.Engine, SqlDialect]]:
    """A fresh reference store on each server, filled with the test's rows."""
    url = str(
        request.getfixturevalue(
            {"postgresql": "postgres_url", "mariadb": "mariadb_url"}[request.param]
        )
    )
    engine = sa.create_engine(url)
    dialect: SqlDialect = "postgresql" if request.param == "postgresql" else "mysql"
    if dialect == "mysql":
        # What the MySQL datasource's "Session timezone" setting does: the store keeps UTC.
        @sa.event.listens_for(engine, "connect")
        def _utc(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET time_zone = '+00:00'")

    create_reference_schema(engine)
    with engine.begin() as connection:
        connection.execute(
            sync_error.insert(),
            [
                {
                    "id": row.id,
                    "failed_at": row.failed_at,
                    "object_type": row.object,
                    "record_id": row.record_id,
                    "record_name": row.record_name,
                    "operation": row.operation,
                    "direction": row.direction,
                    "error_code": row.error_code,
                    "error_message": row.error_message,
                }
                for row in failures()
            ],
        )
    yield engine, dialect
    engine.dispose()


def run(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(_percent_safe(sql, engine))]


def _percent_safe(sql: str, engine: sa.Engine) -> str:
    # The DBAPI drivers treat % as a parameter marker; Grafana's drivers send the text as is.
    return sql.replace("%", "%%")


def _normal(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(_plain(value) for value in row) for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return value


def errors_sql(dialect: SqlDialect, title: str, store: StoreConfig | None = None) -> str:
    return sql_of(dashboards(store, dialect)["crmsync-errors"], title)


def browse(
    engine: sa.Engine, dialect: SqlDialect, context: Context, page_size: int | None = None
) -> list[tuple[Any, ...]]:
    board = dashboards(None, dialect)["crmsync-errors"]
    if page_size is not None:
        built = build_dashboards(reference_store(), Options(dialect=dialect, page_size=page_size))
        board = next(d for d in built.values() if d["uid"] == "crmsync-errors")
    sql = render_sql(sql_of(board, "Failed records, page ${page}"), context, RANGE, dialect)
    return _normal(run(engine, sql))


def count(engine: sa.Engine, dialect: SqlDialect, context: Context) -> int:
    sql = render_sql(errors_sql(dialect, "Matching failed records"), context, RANGE, dialect)
    ((value, _pages),) = run(engine, sql)
    return int(value)


@pytest.mark.postgres
@pytest.mark.mariadb
def test_browsing_shows_the_time_range_newest_first(
    database: tuple[sa.Engine, SqlDialect], url_state: bool
) -> None:
    """Every filter at its default ("All"): the 62 failures of the last two hours."""
    engine, dialect = database
    expected = expected_failures(failures())
    assert len(expected) == 62
    assert browse(engine, dialect, error_context(url_state)) == expected
    assert count(engine, dialect, error_context(url_state)) == len(expected)


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.parametrize(
    ("selections", "filters"),
    [
        ({"object": ("lead",)}, {"objects": ("lead",)}),
        ({"object": ("lead", "account")}, {"objects": ("lead", "account")}),
        (
            {"operation": ("update",), "direction": ("to_crm",)},
            {"operations": ("update",), "directions": ("to_crm",)},
        ),
        ({"error_code": ("FIELD_INTEGRITY",)}, {"codes": ("FIELD_INTEGRITY",)}),
        (
            {"object": ("contact",), "error_code": ("DUPLICATE_VALUE", "INVALID_EMAIL_ADDRESS")},
            {"objects": ("contact",), "codes": ("DUPLICATE_VALUE", "INVALID_EMAIL_ADDRESS")},
        ),
    ],
)
def test_filters_select_exactly_the_chosen_values(
    database: tuple[sa.Engine, SqlDialect],
    url_state: bool,
    selections: dict[str, tuple[str, ...]],
    filters: dict[str, tuple[str, ...]],
) -> None:
    engine, dialect = database
    context = error_context(
        url_state, **{name: chosen(*values) for name, values in selections.items()}
    )
    expected = expected_failures(failures(), **filters)  # type: ignore[arg-type]
    assert expected
    assert browse(engine, dialect, context) == expected
    assert count(engine, dialect, context) == len(expected)


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.parametrize(
    "search",
    [
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
    ],
)
def test_search_finds_text_with_quotes_and_wildcards_literally(
    database: tuple[sa.Engine, SqlDialect], url_state: bool, search: str
) -> None:
    engine, dialect = database
    context = error_context(url_state, search=Selection.one(search))
    expected = expected_failures(failures(), search=search)
    assert expected, f"the test data should contain {search!r}"
    assert browse(engine, dialect, context) == expected
    assert count(engine, dialect, context) == len(expected)


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
    "All' OR 'a'='a",
    "$__all') OR ('1'='1",
]


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.parametrize("attack", ATTACKS)
def test_typed_text_cannot_change_the_sql(
    database: tuple[sa.Engine, SqlDialect], url_state: bool, attack: str
) -> None:
    """Search text and URL-supplied filter values are data: they match nothing and alter nothing."""
    engine, dialect = database
    for context in (
        error_context(url_state, search=Selection.one(attack)),
        error_context(url_state, object=chosen(attack)),
        error_context(url_state, object=chosen("lead", attack), error_code=chosen(attack)),
    ):
        assert browse(engine, dialect, context) == []
        assert count(engine, dialect, context) == 0
    # A page that is no number is the first page.
    context = error_context(url_state, page=Selection.one(attack))
    assert browse(engine, dialect, context) == expected_failures(failures())
    with engine.connect() as connection:
        remaining = connection.execute(sa.select(sa.func.count()).select_from(sync_error))
        assert remaining.scalar_one() == len(failures())


@pytest.mark.mariadb
def test_sqlstring_formatting_would_be_injectable_on_mariadb(mariadb_url: str) -> None:
    """Why the dashboards percent-decode instead: Grafana's sqlstring leaves backslashes alone."""
    engine = sa.create_engine(mariadb_url)
    create_reference_schema(engine)
    with engine.begin() as connection:
        connection.execute(
            sync_error.insert(),
            [{**vars(row), "object_type": row.object} for row in failures()[:3]],
        )
    typed = "\\' OR 1=1 -- "
    query = f"SELECT count(*) FROM sync_error WHERE record_name = {sqlstring(typed)}"
    ((matched,),) = run(engine, query)
    engine.dispose()
    assert matched == 3


@pytest.mark.postgres
@pytest.mark.mariadb
def test_pages_reach_every_matching_record_and_the_total_is_shown(
    database: tuple[sa.Engine, SqlDialect], url_state: bool
) -> None:
    """Pages of 10 through the 62 matching failures: 7 pages, the last one of 2 rows."""
    engine, dialect = database
    expected = expected_failures(failures())
    pages = []
    for page in range(1, 9):
        context = error_context(url_state, page=Selection.one(str(page)))
        pages.append(browse(engine, dialect, context, page_size=10))
    assert [len(rows) for rows in pages] == [10, 10, 10, 10, 10, 10, 2, 0]
    assert [row for rows in pages for row in rows] == expected
    built = build_dashboards(reference_store(), Options(dialect=dialect, page_size=10))
    board = next(d for d in built.values() if d["uid"] == "crmsync-errors")
    total = render_sql(
        sql_of(board, "Matching failed records"), error_context(url_state), RANGE, dialect
    )
    ((matching, page_count),) = run(engine, total)
    assert (int(matching), int(page_count)) == (62, 7)
    for odd in ("0", "-3", "x", ""):
        context = error_context(url_state, page=Selection.one(odd))
        assert browse(engine, dialect, context, page_size=10) == expected[:10]


@pytest.mark.postgres
@pytest.mark.mariadb
def test_top_error_codes_count_share_last_seen_and_newest_message(
    database: tuple[sa.Engine, SqlDialect], url_state: bool
) -> None:
    engine, dialect = database
    sql = errors_sql(dialect, "Top error codes")
    # The error code filter does not narrow this table: it is where a code is picked.
    for context, filters in (
        (error_context(url_state), {}),
        (
            error_context(url_state, object=chosen("lead"), error_code=chosen("FIELD_INTEGRITY")),
            {"objects": ("lead",)},
        ),
    ):
        rows = expected_failures(failures(), **filters)  # type: ignore[arg-type]
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
        result = [
            (code, int(failures_), float(share), _plain(last), message)
            for code, failures_, share, last, message in run(
                engine, render_sql(sql, context, RANGE, dialect)
            )
        ]
        assert [row[:2] for row in result] == [row[:2] for row in expected]
        for got, want in zip(result, expected, strict=True):
            assert got[2] == pytest.approx(want[2])
            assert got[3:] == want[3:]


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
# dashboards' hidden variables list.
REPORTED_CODES = (*CODES, "unknown", "X" * 64, "other")
REPORTED_OBJECTS = (*OBJECTS, "campaign", "other")


def _labels(row: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    """The exporter's label values of a stored row, given what it reports."""
    obj, operation, direction, code = row
    object_text = label_text(obj, lower=True)
    code_text = label_text(code, lower=False)
    return (
        object_text if object_text in REPORTED_OBJECTS else "other",
        label_text(operation, lower=True)
        if label_text(operation, lower=True) in OPERATIONS
        else "other",
        label_text(direction, lower=True)
        if label_text(direction, lower=True) in DIRECTIONS
        else "other",
        code_text if code_text in REPORTED_CODES else "other",
    )


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("error_code", "other"),
        ("error_code", "unknown"),
        ("error_code", "DUPLICATE_VALUE"),
        ("error_code", "X" * 64),
        ("object", "other"),
        ("object", "lead"),
        ("object", "campaign"),
        ("operation", "other"),
        ("direction", "other"),
    ],
)
def test_folded_and_blank_values_are_found_under_the_exporters_labels(
    database: tuple[sa.Engine, SqlDialect], url_state: bool, variable: str, value: str
) -> None:
    """A series labelled other or unknown leads to its records: the exporter's rules in SQL."""
    engine, dialect = database
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
            [
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
    position = {"object": 0, "operation": 1, "direction": 2, "error_code": 3}[variable]
    expected_ids = sorted(
        f"ODD{index}" for index, row in enumerate(ODD_FAILURES) if _labels(row)[position] == value
    )
    expected_ids += sorted(
        row.record_id
        for row in failures()
        if RANGE.start <= row.failed_at <= RANGE.end
        and (row.object, row.operation, row.direction, row.error_code)[position] == value
    )
    assert expected_ids
    context = error_context(
        url_state,
        reported_objects=reported(REPORTED_OBJECTS),
        reported_error_codes=reported(REPORTED_CODES),
        **{variable: chosen(value)},
    )
    rows = browse(engine, dialect, context)
    assert sorted(row[2] for row in rows) == sorted(expected_ids)
    # Shown as the store has them, stripped and cut as labels are.
    odd = {row[2]: row for row in rows if row[2].startswith("ODD")}
    for record_id, row in odd.items():
        obj, _, _, code = ODD_FAILURES[int(record_id.removeprefix("ODD"))]
        assert row[1] == label_text(obj, lower=True)
        assert row[6] == label_text(code, lower=False)


@pytest.mark.postgres
@pytest.mark.mariadb
def test_without_a_list_of_reported_values_nothing_is_called_other(
    database: tuple[sa.Engine, SqlDialect], url_state: bool
) -> None:
    """No Prometheus data (an empty list): the store's values are taken as they are."""
    engine, dialect = database
    empty = Selection((), multi=True, include_all=True, is_all=True, options=())
    context = error_context(
        url_state,
        reported_objects=empty,
        reported_error_codes=empty,
        error_code=chosen("FIELD_INTEGRITY"),
    )
    assert browse(engine, dialect, context) == expected_failures(
        failures(), codes=("FIELD_INTEGRITY",)
    )


@pytest.mark.postgres
@pytest.mark.mariadb
def test_oldest_pending_records_are_the_oldest_of_each_operation(
    database: tuple[sa.Engine, SqlDialect], url_state: bool
) -> None:
    engine, dialect = database
    with engine.connect() as connection:
        now = connection.execute(
            sa.text(
                "SELECT UTC_TIMESTAMP(6)"
                if dialect == "mysql"
                else "SELECT now() AT TIME ZONE 'UTC'"
            )
        ).scalar_one()
    rows = pending(now)
    with engine.begin() as connection:
        connection.execute(sync_queue.insert(), rows)
    sql_text = sql_of(dashboards(None, dialect)["crmsync-object"], "Oldest pending records")
    for directions in (DIRECTIONS, ("from_crm",)):
        context = Context(
            {
                "object": Selection.one("contact"),
                "direction": chosen(*directions)
                if len(directions) == 1
                else every("direction", DIRECTIONS),
                "reported_objects": reported(OBJECTS),
            },
            url_state=url_state,
        )
        result = run(engine, render_sql(sql_text, context, RANGE, dialect))
        expected = []
        for operation in OPERATIONS:
            mine = [
                row
                for row in rows
                if row["object_type"] == "contact"
                and row["operation"] == operation
                and row["direction"] in directions
            ]
            mine.sort(key=lambda row: row["enqueued_at"])
            expected += mine[:5]
        expected.sort(key=lambda row: row["enqueued_at"])
        assert expected
        assert [(r[0], r[1], r[2], r[3]) for r in _normal(result)] == [
            (r["enqueued_at"], r["record_id"], r["operation"], r["direction"]) for r in expected
        ]
        for row, want in zip(result, expected, strict=True):
            age = (now - want["enqueued_at"]).total_seconds()
            assert age <= float(row[4]) < age + 60


# PostgreSQL takes the zone's name; this MariaDB has no time zone tables, so Berlin's offset.
BERLIN = {"postgresql": "Europe/Berlin", "mysql": "+01:00"}


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.parametrize(
    "zoned", [False, True], ids=["timestamp|DATETIME", "timestamptz|TIMESTAMP"]
)
def test_ages_are_right_in_a_session_far_from_utc(
    database: tuple[sa.Engine, SqlDialect], zoned: bool
) -> None:
    """A change enqueued a minute ago is a minute old, whatever the column type and session."""
    engine, dialect = database
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE sync_queue")
    column = (
        sa.TIMESTAMP(timezone=True)
        if zoned and dialect == "postgresql"
        else sa.dialects.mysql.TIMESTAMP(fsp=6)
        if zoned
        else TIMESTAMP
    )
    queue = queue_table(column)
    queue.create(engine)
    now = datetime.now(UTC)
    ages = {"A": 60.0, "B": 3600.0 * 5 + 30}
    with engine.begin() as connection:
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
                for record, age in ages.items()
            ],
        )
    berlin = sa.create_engine(engine.url)

    @sa.event.listens_for(berlin, "connect")
    def _far_from_utc(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            zone = BERLIN[dialect]
            cursor.execute(
                f"SET time_zone = '{zone}'" if dialect == "mysql" else f"SET TIME ZONE '{zone}'"
            )

    sql_text = sql_of(dashboards(None, dialect)["crmsync-object"], "Oldest pending records")
    context = Context(
        {
            "object": Selection.one("lead"),
            "direction": every("direction", DIRECTIONS),
            "reported_objects": reported(OBJECTS),
        }
    )
    result = run(berlin, render_sql(sql_text, context, RANGE, dialect))
    berlin.dispose()
    elapsed = (datetime.now(UTC) - now).total_seconds()
    served = {row[1]: float(row[4]) for row in result}
    assert set(served) == set(ages)
    for record, age in ages.items():
        assert age - 1 <= served[record] <= age + elapsed + 1, (record, served[record])


# --- a mapped store --------------------------------------------------------------------------

MAPPED = """
stores:
  - name: crm
    url: 'postgresql+psycopg://u@h/db'
    operations: {insert: [I, INS], update: [U]}
    directions: {to_crm: [OUT], from_crm: [IN]}
    mapping:
      single_table:
        table: crm_change
        id: change_id
        status: state
        object_type: obj
        operation: op
        direction: dir
        record_id: rec
        record_name: rec_name
        enqueued_at: queued
        synced_at: done
        failed_at: failed
        error_code: code
        error_message: msg
      status_values: {pending: [NEW, RETRY], synced: [OK], failed: [ERR]}
"""


def mapped_store() -> StoreConfig:
    return parse_config(MAPPED).stores[0]


@pytest.mark.postgres
@pytest.mark.mariadb
def test_a_mapped_single_table_store_gets_sql_that_fits_it(
    database: tuple[sa.Engine, SqlDialect],
) -> None:
    engine, dialect = database
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
    rows = failures()
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
                for row in rows
            ],
        )
    failed_rows = [row for row in rows if row.id % 5]
    sql = errors_sql(dialect, "Failed records, page ${page}", mapped_store())
    for context, filters in (
        (error_context(), {}),
        (
            error_context(operation=chosen("insert"), direction=chosen("from_crm")),
            {"operations": ("insert",), "directions": ("from_crm",)},
        ),
        (error_context(search=Selection.one("O'Brien")), {"search": "O'Brien"}),
    ):
        result = _normal(run(engine, render_sql(sql, context, RANGE, dialect)))
        assert result == expected_failures(failed_rows, **filters)
    # Nothing of the reference tables is named in the mapped store's SQL.
    assert "sync_error" not in sql
    assert "crm_change" in sql


def test_reference_and_mapped_sql_differ_only_where_the_mapping_does() -> None:
    reference = errors_sql("postgresql", "Failed records, page ${page}")
    mapped = errors_sql("postgresql", "Failed records, page ${page}", mapped_store())
    assert "state IN ('ERR')" in mapped
    assert "WHEN t.operation_text IN ('i', 'ins') THEN 'insert'" in mapped
    assert "FROM sync_error" in reference
