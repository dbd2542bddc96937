"""Stores in other shapes: queue-only, a trigger log with an archive, constants for missing
columns, failing changes, Heroku Connect's trigger log; every metric against SQL counts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.mysql import DATETIME

from exporter.schema import sync_error, sync_history, sync_queue
from tests.helpers import (
    by_name,
    collect,
    collect_settled,
    newest_id,
    nonzero,
    runner_for,
    series_total,
    sql_counts,
    utcnow,
)

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


def _timestamp(aware: bool) -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=aware).with_variant(DATETIME(fsp=6), "mysql", "mariadb")


def lowered(values: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {tuple(part.lower() for part in key): value for key, value in values.items()}


# --- a queue-only store -----------------------------------------------------------------------

outbox = sa.Table(
    "outbox",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entity", sa.String(32), nullable=False),
    sa.Column("ref", sa.String(32), nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("queued_at", _timestamp(False), nullable=False),
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
MESSAGES = {
    "UNABLE_TO_LOCK_ROW: unable to obtain exclusive access to this record": "UNABLE_TO_LOCK_ROW",
    "DUPLICATE_VALUE: duplicate value found: Email__c": "DUPLICATE_VALUE",
    "request timed out": "unknown",
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
