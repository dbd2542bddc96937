"""Stores in other shapes: queue-only, a trigger log with an archive, constants for missing
columns, failing changes, Heroku Connect's trigger log; every metric against SQL counts."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import (
    by_name,
    collect,
    collect_settled,
    lowered,
    newest_id,
    nonzero,
    runner_for,
    series_total,
    sql_counts,
    utcnow,
)
from crmsync_testing.trigger_log import (
    CODE,
    MESSAGES,
    TriggerLog,
    heroku_connect_schema,
    timestamp_type,
    trigger_log_table,
)
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

STORE = frozenset({("store", "main")})
COUNTERS = ("crmsync_records_synced_total", "crmsync_sync_errors_total")
HISTORY_METRICS = (
    "crmsync_records_synced_total",
    "crmsync_sync_latency_seconds_count",
    "crmsync_records_synced_last_hour",
)


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    """The same test on PostgreSQL and MariaDB."""
    name = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}[request.param]
    return str(request.getfixturevalue(name))


# --- a queue-only store -----------------------------------------------------------------------

outbox = sa.Table(
    "outbox",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entity", sa.String(32), nullable=False),
    sa.Column("ref", sa.String(32), nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("queued_at", timestamp_type(False), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
)
QUEUE_ONLY: dict[str, Any] = {
    "objects": ["lead", "contact"],
    "operations": {"insert": ["I"], "update": ["U"], "delete": ["D"]},
    "mapping": {
        "constants": {"direction": "to_crm"},
        "queue": {
            "table": "outbox",
            "object_type": "entity",
            "operation": "op",
            "record_id": "ref",
            "enqueued_at": "queued_at",
            "retries": "attempts",
            "last_error": "last_error",
        },
        "history": None,
        "errors": None,
    },
}
OPERATION = {"I": "insert", "U": "update", "D": "delete"}


def fill_outbox(engine: sa.Engine, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    now = utcnow()
    values = []
    for _ in range(rows):
        attempts = rng.choice((0, 0, 0, 1, 3))
        values.append(
            {
                "entity": rng.choice(("Lead", "Contact", "Campaign")),
                "ref": str(rng.randrange(10**6)),
                "op": rng.choice("IUD"),
                "queued_at": now - timedelta(seconds=rng.uniform(5, 3600)),
                "attempts": attempts,
                # A failed attempt leaves its message; some engines count retries only.
                "last_error": rng.choice([*MESSAGES, None]) if attempts else None,
            }
        )
    with engine.begin() as connection:
        connection.execute(outbox.insert(), values)


def test_a_queue_only_store_reports_its_backlog_and_failing_changes(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    outbox.metadata.create_all(engine)
    fill_outbox(engine, 2_000, seed=1)
    runner = runner_for(store_url, **QUEUE_ONLY)
    collect(runner)
    # The engine syncs some (deleting their rows), fails others, and queues more.
    with engine.begin() as connection:
        connection.execute(outbox.delete().where(outbox.c.id % 3 == 0))
        connection.execute(
            outbox.update()
            .where(outbox.c.id % 5 == 1)
            .values(attempts=outbox.c.attempts + 1, last_error=next(iter(MESSAGES)))
        )
    fill_outbox(engine, 300, seed=2)
    result = collect(runner)

    assert by_name(result, "crmsync_up") == {STORE: 1.0}
    pending = sql_counts(engine, "SELECT entity, op, COUNT(*) FROM outbox GROUP BY entity, op")
    expected = {(obj, OPERATION[op.upper()], "to_crm"): n for (obj, op), n in pending.items()}
    assert nonzero(series_total(result, "crmsync_pending_records")) == expected
    # Zero-filled: every configured object x operation (delete included) x the one direction.
    assert set(series_total(result, "crmsync_pending_records")) >= {
        (obj, op, "to_crm") for obj in ("lead", "contact") for op in OPERATION.values()
    }
    oldest = sql_counts(
        engine, "SELECT entity, op, MIN(queued_at) AS oldest, 0 FROM outbox GROUP BY entity, op"
    )
    served = series_total(result, "crmsync_oldest_pending_timestamp_seconds")
    for obj, op, first in oldest:
        instant = datetime.fromisoformat(first).replace(tzinfo=UTC).timestamp()
        assert served[(obj, OPERATION[op.upper()], "to_crm")] == pytest.approx(instant, abs=1e-3)

    failing: dict[tuple[str, ...], float] = {}
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT entity, op, last_error, COUNT(*) FROM outbox "
                "WHERE attempts > 0 OR last_error IS NOT NULL GROUP BY entity, op, last_error"
            )
        ).all()
    for obj, op, message, count in rows:
        key = (obj.lower(), OPERATION[op], "to_crm", MESSAGES.get(message, "unknown"))
        failing[key] = failing.get(key, 0) + count
    assert failing
    assert nonzero(series_total(result, "crmsync_failing_records")) == failing

    # No history and no error table: their metrics are absent, not 0.
    for name in (*HISTORY_METRICS, "crmsync_sync_errors_total"):
        assert by_name(result, name) == {}, name
    engine.dispose()


def test_a_series_that_stops_failing_reads_0(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    outbox.metadata.create_all(engine)
    fill_outbox(engine, 50, seed=3)
    runner = runner_for(sqlite_url, **QUEUE_ONLY)
    before = nonzero(series_total(collect(runner), "crmsync_failing_records"))
    assert before
    with engine.begin() as connection:
        connection.execute(outbox.delete())
    after = series_total(collect(runner), "crmsync_failing_records")
    assert after == dict.fromkeys(before, 0.0)
    engine.dispose()


# --- no object or operation column ------------------------------------------------------------

ONE_OBJECT: dict[str, Any] = {
    "mapping": {
        "constants": {"object_type": "lead", "operation": "upsert"},
        "queue": {"table": "lead_queue"},
        "history": {"table": "lead_history"},
        "errors": {"table": "lead_error", "record_name": None},
    },
}


def lead_tables(engine: sa.Engine) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The reference tables without object_type, operation and record_name."""
    metadata = sa.MetaData()
    missing = {"object_type", "operation", "record_name"}

    def without_columns(reference: sa.Table, name: str) -> sa.Table:
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in reference.columns
            if c.name not in missing
        ]
        return sa.Table(name, metadata, *columns, sqlite_autoincrement=True)

    tables = (
        without_columns(sync_queue, "lead_queue"),
        without_columns(sync_history, "lead_history"),
        without_columns(sync_error, "lead_error"),
    )
    metadata.create_all(engine)
    return tables


def add_lead_rows(
    engine: sa.Engine, tables: tuple[sa.Table, sa.Table, sa.Table], rows: int, seed: int
) -> None:
    queue, history, errors = tables
    rng = random.Random(seed)
    now = utcnow()

    def change() -> dict[str, Any]:
        return {"record_id": str(rng.randrange(10**6)), "direction": rng.choice(("to_crm", "IN"))}

    with engine.begin() as connection:
        connection.execute(
            queue.insert(),
            [{**change(), "enqueued_at": now - timedelta(seconds=rng.uniform(1, 99))}] * rows,
        )
        synced = []
        for _ in range(rows):
            moment = now - timedelta(seconds=rng.uniform(0, 60))
            synced.append(
                {**change(), "enqueued_at": moment - timedelta(seconds=30), "synced_at": moment}
            )
        connection.execute(history.insert(), synced)
        connection.execute(
            errors.insert(),
            [
                {
                    **change(),
                    "error_code": rng.choice(("DUPLICATE_VALUE", "INVALID_EMAIL_ADDRESS")),
                    "error_message": "x",
                    "failed_at": now,
                }
                for _ in range(rows // 3)
            ],
        )


def test_constants_stand_in_for_missing_object_and_operation_columns(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    tables = lead_tables(engine)
    add_lead_rows(engine, tables, 40, seed=1)
    runner = runner_for(store_url, **ONE_OBJECT)
    collect(runner)
    start = {table: newest_id(engine, table) for table in ("lead_history", "lead_error")}
    add_lead_rows(engine, tables, 60, seed=2)
    result = collect_settled(runner)

    def by_direction(query: str) -> dict[tuple[str, ...], float]:
        raw = sql_counts(engine, query)
        return {("lead", "upsert", key[0], *key[1:]): n for key, n in raw.items()}

    queue_counts = by_direction("SELECT direction, COUNT(*) FROM lead_queue GROUP BY direction")
    pending = series_total(result, "crmsync_pending_records")
    assert {("lead", "upsert", "to_crm"), ("lead", "upsert", "from_crm")} <= set(pending)
    assert {k: v for k, v in pending.items() if k[2] != "from_crm"} == {
        k if k[2] == "to_crm" else (*k[:2], "other"): v for k, v in queue_counts.items()
    }
    synced = by_direction(
        "SELECT direction, COUNT(*) FROM lead_history "
        f"WHERE id > {start['lead_history']} GROUP BY direction"
    )
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == {
        k if k[2] == "to_crm" else (*k[:2], "other"): v for k, v in synced.items()
    }
    errors = by_direction(
        "SELECT direction, error_code, COUNT(*) FROM lead_error "
        f"WHERE id > {start['lead_error']} GROUP BY direction, error_code"
    )
    served = {k: v for k, v in nonzero(series_total(result, "crmsync_sync_errors_total")).items()}
    assert lowered(served) == lowered(
        {(k if k[2] == "to_crm" else (*k[:2], "other", k[3])): v for k, v in errors.items()}
    )
    engine.dispose()


# --- a trigger log with an archive ------------------------------------------------------------


def union_sql(log: str, archive: str, columns: str, where: str, group: str) -> str:
    """An independent count over both tables."""
    return (
        f"SELECT {group}, COUNT(*) FROM (SELECT {columns} FROM {log} "
        f"UNION ALL SELECT {columns} FROM {archive}) AS t WHERE {where} GROUP BY {group}"
    )


def check_trigger_log(
    result: dict[Any, float], engine: sa.Engine, log: str, archive: str, since: datetime
) -> None:
    """Every metric of a trigger-log store against SQL over the log and its archive."""
    assert by_name(result, "crmsync_up") == {STORE: 1.0}
    literal = f"'{since.isoformat(sep=' ')}'"
    pending = sql_counts(
        engine,
        f"SELECT table_name, action, COUNT(*) FROM {log} "
        "WHERE state IN ('NEW', 'PENDING') GROUP BY table_name, action",
    )
    assert nonzero(series_total(result, "crmsync_pending_records")) == {
        (obj, action, "to_crm"): n for (obj, action), n in pending.items()
    }
    columns = "id, state, action, table_name, processed_at, created_at, sf_message"
    synced = sql_counts(
        engine,
        union_sql(
            log,
            archive,
            columns,
            f"state = 'SUCCESS' AND processed_at > {literal}",
            "table_name, action",
        ),
    )
    assert synced, "the engine synced changes while the exporter ran"
    expected = {(obj, action, "to_crm"): n for (obj, action), n in synced.items()}
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == expected
    assert nonzero(series_total(result, "crmsync_sync_latency_seconds_count")) == expected
    failed = sql_counts(
        engine,
        union_sql(
            log,
            archive,
            columns,
            f"state = 'FAILED' AND processed_at > {literal}",
            "table_name, action, sf_message",
        ),
    )
    assert failed
    errors: dict[tuple[str, ...], float] = {}
    for (obj, action, message), n in failed.items():
        code = next(code for text, code in CODE.items() if text.lower() == message)
        key = (obj, action, "to_crm", code.lower())
        errors[key] = errors.get(key, 0) + n
    assert lowered(nonzero(series_total(result, "crmsync_sync_errors_total"))) == errors
    hour = by_name(result, "crmsync_records_synced_last_hour_start_timestamp_seconds")[STORE]
    start = datetime.fromtimestamp(hour, UTC).replace(tzinfo=None)
    bounds = (
        f"state = 'SUCCESS' AND processed_at >= '{start.isoformat(sep=' ')}'"
        f" AND processed_at < '{(start + timedelta(hours=1)).isoformat(sep=' ')}'"
    )
    last_hour = sql_counts(engine, union_sql(log, archive, columns, bounds, "table_name"))
    assert last_hour
    served = {
        dict(labels)["object"]: value
        for labels, value in by_name(result, "crmsync_records_synced_last_hour").items()
        if value
    }
    assert served == {obj: n for (obj,), n in last_hour.items()}
    # The log has no retry count, and Heroku Connect does not retry a failed change.
    assert by_name(result, "crmsync_failing_records") == {}


def trigger_log_mapping(log: str, archive: str) -> dict[str, Any]:
    """The trigger log mapped key by key (what the heroku-connect preset writes for you)."""
    common = {"object_type": "table_name", "operation": "action"}
    return {
        "operations": {"insert": ["INSERT"], "update": ["UPDATE"], "delete": ["DELETE"]},
        "objects": ["lead", "contact", "account"],
        "mapping": {
            "constants": {"direction": "to_crm"},
            "queue": {
                "table": log,
                **common,
                "enqueued_at": "created_at",
                "filter": {"column": "state", "values": ["NEW", "PENDING"]},
            },
            "history": {
                "table": log,
                "archive_table": archive,
                **common,
                "enqueued_at": "created_at",
                "synced_at": "processed_at",
                "filter": {"column": "state", "values": ["SUCCESS"]},
            },
            "errors": {
                "table": log,
                "archive_table": archive,
                **common,
                "error_code": None,
                "error_message": "sf_message",
                "failed_at": "processed_at",
                "filter": {"column": "state", "values": ["FAILED"]},
            },
        },
    }


def run_trigger_log(
    engine: sa.Engine,
    log: sa.Table,
    archive: sa.Table,
    settings: dict[str, Any],
    url: str,
    concurrent: bool = False,
) -> tuple[dict[Any, float], datetime]:
    """Rows captured, processed and archived between the exporter's reads, or (``concurrent``)
    by a writer thread while the exporter reads."""
    writer = TriggerLog(engine, log, archive, random.Random(7))
    now = utcnow()
    writer.history_before(now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1))
    writer.capture(30, now - timedelta(minutes=3))
    writer.process(0.0, now)
    runner = runner_for(url, **settings)
    collect(runner)
    since = utcnow()
    if concurrent:
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                stamp = utcnow()
                writer.capture(5, stamp)
                writer.process(0.5, stamp)
                writer.archive_processed(0.5)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            collect(runner)
        stop.set()
        thread.join(10)
        assert not thread.is_alive()
        return collect_settled(runner), since
    for step in range(12):
        stamp = utcnow()
        writer.capture(15, stamp)
        writer.process(0.5, stamp)
        if step % 3 == 0:
            # Rows counted while in the log move on; others move before the next read.
            collect(runner)
        writer.archive_processed(0.5)
        collect(runner)
    return collect_settled(runner), since


@pytest.mark.parametrize("concurrent", [False, True], ids=["between reads", "while reading"])
def test_a_trigger_log_with_an_archive_counts_each_change_once(
    server_url: str, concurrent: bool
) -> None:
    engine = sa.create_engine(server_url)
    metadata = sa.MetaData()
    log = trigger_log_table(metadata, "change_log", aware=False)
    archive = trigger_log_table(metadata, "change_log_archive", aware=False)
    metadata.create_all(engine)
    settings = trigger_log_mapping("change_log", "change_log_archive")
    result, since = run_trigger_log(engine, log, archive, settings, server_url, concurrent)
    check_trigger_log(result, engine, "change_log", "change_log_archive", since)
    engine.dispose()


def test_the_heroku_connect_preset_reads_its_trigger_log_and_archive(postgres_url: str) -> None:
    with heroku_connect_schema(postgres_url, "hc_sf") as (engine, log, archive):
        settings = {"preset": "heroku-connect", "schema": "hc_sf"}
        result, since = run_trigger_log(engine, log, archive, settings, postgres_url, True)
        check_trigger_log(result, engine, "hc_sf._trigger_log", "hc_sf._trigger_log_archive", since)


# --- failing changes from error rows newer than the queue row ---------------------------------


def test_waiting_changes_with_a_newer_error_row_are_failing(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    rng = random.Random(5)
    now = utcnow()
    queue_rows, error_rows = [], []
    for record in range(300):
        change = {
            "object_type": rng.choice(("lead", "Contact")),
            "record_id": f"r{record}",
            "operation": rng.choice(("insert", "update")),
            "direction": rng.choice(("to_crm", "from_crm")),
        }
        enqueued = now - timedelta(minutes=rng.uniform(5, 60))
        queue_rows.append({**change, "enqueued_at": enqueued})
        for _ in range(rng.choice((0, 1, 1, 3))):
            # Before the change was queued (an earlier attempt of the record) or after it.
            failed = enqueued + timedelta(minutes=rng.uniform(-30, 4))
            error_rows.append(
                {
                    **change,
                    "record_name": None,
                    "error_code": rng.choice(("UNABLE_TO_LOCK_ROW", "DUPLICATE_VALUE")),
                    "error_message": "x",
                    "failed_at": failed,
                }
            )
        if record % 10 == 0:  # another object's record with the same id: not this change's
            error_rows.append({**error_rows[-1], "object_type": "account"} if error_rows else {})
    with engine.begin() as connection:
        connection.execute(sync_queue.insert(), queue_rows)
        connection.execute(sync_error.insert(), [row for row in error_rows if row])
    result = collect(runner_for(store_url, mapping={"failing_from_errors": True}))

    with engine.connect() as connection:
        matches = connection.execute(
            sa.text(
                "SELECT q.id, q.object_type, q.operation, q.direction, e.failed_at, e.id,"
                " e.error_code FROM sync_queue q JOIN sync_error e"
                " ON e.record_id = q.record_id AND e.object_type = q.object_type"
                " AND e.failed_at >= q.enqueued_at"
            )
        ).all()
    latest: dict[int, Any] = {}
    for row in matches:
        if row[0] not in latest or (row[4], row[5]) > (latest[row[0]][4], latest[row[0]][5]):
            latest[row[0]] = row
    expected: dict[tuple[str, ...], float] = {}
    for _, obj, operation, direction, _, _, code in latest.values():
        key = (obj.lower(), operation, direction, code.lower())
        expected[key] = expected.get(key, 0) + 1
    assert expected
    served = nonzero(series_total(result, "crmsync_failing_records"))
    assert lowered(served) == expected
    engine.dispose()


def test_failing_changes_are_absent_where_the_store_cannot_tell(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    result = collect(runner_for(sqlite_url))
    assert by_name(result, "crmsync_up") == {STORE: 1.0}
    assert by_name(result, "crmsync_failing_records") == {}
    engine.dispose()
