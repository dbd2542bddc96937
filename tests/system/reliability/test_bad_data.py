"""Data that breaks the contract: NULLs, clock skew, unmapped values, huge and odd text, floods
of distinct values. The collection goes on, nothing goes negative, labels stay bounded."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import LONGTEXT

from crmsync_testing.helpers import (
    add_history,
    by_name,
    exposition,
    runner_for,
    samples,
    utcnow,
)
from crmsync_testing.servers import require_binary
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

metadata = sa.MetaData()
# A status table as a careless engine keeps it: hardly anything is NOT NULL.
changes = sa.Table(
    "ext_changes",
    metadata,
    sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entity", sa.String(64)),
    sa.Column("op", sa.String(16)),
    sa.Column("dir", sa.String(16)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("ext_id", sa.String(64)),
    sa.Column("created", sa.DateTime),
    sa.Column("completed", sa.DateTime),
    sa.Column("err_code", sa.String(64)),
    sa.Column("err_blob", sa.Text().with_variant(LONGTEXT(), "mysql", "mariadb")),
)
MAPPING: dict[str, Any] = {
    "objects": ["lead", "contact"],
    "operations": {"insert": ["I"], "update": ["U"]},
    "directions": {"to_crm": ["OUT"], "from_crm": ["IN"]},
    "mapping": {
        "single_table": {
            "table": "ext_changes",
            "id": "change_id",
            "status": "state",
            "object_type": "entity",
            "operation": "op",
            "direction": "dir",
            "record_id": "ext_id",
            "enqueued_at": "created",
            "synced_at": "completed",
            "failed_at": "completed",
            "error_code": "err_code",
            "error_message": "err_blob",
        },
        "status_values": {"pending": ["queued"], "synced": ["done"], "failed": ["error"]},
    },
}
MEGABYTES = 2 * 1024 * 1024
CYRILLIC_INSERT = "\u0432\u0441\u0442\u0430\u0432\u043a\u0430"
ODD_NAMES = ("Интерес", "客户", 'quote " and \\ backslash', "line\nbreak", "emoji 🚀")


def row(state: str, **values: Any) -> dict[str, Any]:
    # Every row names every column: an executemany takes its columns from the first row.
    base = {"entity": "Lead", "op": "I", "dir": "OUT", "ext_id": "x", "err_code": None}
    return {**base, "state": state, "err_blob": None, "completed": None, **values}


def bad_rows() -> list[dict[str, Any]]:
    """Rows as a careless engine writes them; those synced or failed, within the last minutes."""
    now = utcnow()
    hour = timedelta(hours=1)
    minute = timedelta(minutes=1)
    return [
        # pending
        row("queued", created=now - hour),
        row("queued", created=None),
        row("queued", created=now + hour, entity="Contact"),  # a writer's clock ahead
        row("queued", created=now - hour, entity=None, op="X", dir="SIDEWAYS"),
        *(row("queued", created=now - hour, entity=name) for name in ODD_NAMES),
        # synced
        row("done", created=now - hour, completed=now - minute),
        row("done", created=now, completed=now - minute),  # synced before it was enqueued
        row("done", created=now - hour, completed=now + hour),  # in the future
        row("done", created=None, completed=now - minute),  # no enqueue time: no latency
        row("done", created=now - hour, completed=None),  # no sync time
        row("done", created=now - hour, completed=now, entity="Ünïcödé", op=CYRILLIC_INSERT),
        # failed
        row("error", created=now - hour, completed=now, err_code=None),
        row("error", created=now - hour, completed=now, err_code="ОШИБКА_БЛОКИРОВКИ"),
        row("error", created=now - hour, completed=now + hour, err_code="FUTURE"),
        row("error", created=now - hour, completed=now, err_code="HUGE", err_blob="é" * MEGABYTES),
    ]


def test_a_mapped_store_with_contract_breaking_rows_is_still_read(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    metadata.create_all(engine)
    runner = runner_for(store_url, **MAPPING)
    statements: list[str] = []
    sa.event.listen(
        runner.reader.engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    assert runner.run_once().last_error is None  # counters count from here
    with engine.begin() as connection:
        connection.execute(changes.insert(), bad_rows())
    state = runner.run_once()
    assert state.last_error is None, state.last_error
    runner.run_once()  # and again: new series count after one collection at 0
    text = exposition([runner.state])
    result = samples(text)
    up = by_name(result, "crmsync_up")[frozenset({("store", "main")})]
    assert up == 1.0

    # Every pending row is counted, NULLs and odd names included.
    assert sum(by_name(result, "crmsync_pending_records").values()) == 4 + len(ODD_NAMES)
    objects = {dict(labels)["object"] for labels in by_name(result, "crmsync_pending_records")}
    assert {"unknown", "интерес", "客户", "emoji 🚀"} <= objects
    # Clock skew: never a negative age or latency, and the skewed rows are counted.
    assert min(by_name(result, "crmsync_oldest_pending_age_seconds").values()) >= 0.0
    assert min(by_name(result, "crmsync_sync_latency_seconds_sum").values()) >= 0.0
    future = {
        dict(labels)["table"]: value
        for labels, value in by_name(result, "crmsync_future_timestamp_rows").items()
    }
    assert future == {"queue": 1.0, "history": 1.0, "errors": 1.0}
    # Synced rows that carry their sync time are counted; the latency needs both times.
    assert sum(by_name(result, "crmsync_records_synced_total").values()) == 5
    assert sum(by_name(result, "crmsync_sync_latency_seconds_count").values()) == 4
    errors = {
        dict(labels)["error_code"]: value
        for labels, value in by_name(result, "crmsync_sync_errors_total").items()
    }
    assert errors == {"unknown": 1.0, "ОШИБКА_БЛОКИРОВКИ": 1.0, "FUTURE": 1.0, "HUGE": 1.0}
    # Values outside the mapping read "other", and are counted as folded.
    folded = {
        dict(labels)["label"]: value
        for labels, value in by_name(result, "crmsync_folded_label_values").items()
    }
    assert folded["operation"] >= 2
    assert folded["direction"] >= 1
    # The megabytes of error text are never read, never served.
    assert not any("err_blob" in statement for statement in statements)
    assert len(text) < 64 * 1024
    runner.reader.close()
    engine.dispose()


def test_odd_label_values_make_a_valid_exposition(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(changes.insert(), bad_rows())
        # Bytes that are not UTF-8, as SQLite lets a writer store them.
        connection.execute(
            sa.text(
                "INSERT INTO ext_changes (entity, op, dir, state, created, completed, err_code) "
                "VALUES (CAST(x'fffe41' AS TEXT), 'I', 'OUT', 'error', '2024-01-01 00:00:00', "
                "'not a date', CAST(x'c3' AS TEXT))"
            )
        )
    runner = runner_for(url, **MAPPING)
    assert runner.run_once().last_error is None
    with engine.begin() as connection:  # counted: the odd values reach the counters' labels
        connection.execute(changes.insert(), bad_rows())
    assert runner.run_once().last_error is None
    assert runner.run_once().last_error is None
    text = exposition([runner.state])
    samples(text)  # the client library's own parser reads it back
    promtool = require_binary("promtool")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    runner.reader.close()
    engine.dispose()


def test_thousands_of_objects_and_codes_fold_into_other(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    runner = runner_for(store_url, max_objects=20, max_error_codes=10)
    assert runner.run_once().last_error is None  # counters count from here
    now = utcnow()
    distinct = 3000
    base = {"record_id": "1", "operation": "insert", "direction": "to_crm"}
    with engine.begin() as connection:
        connection.execute(
            sync_history.insert(),
            [
                {**base, "object_type": f"object_{i}", "enqueued_at": now, "synced_at": now}
                for i in range(distinct)
            ],
        )
        connection.execute(
            sync_error.insert(),
            [
                {
                    **base,
                    "object_type": "lead",
                    "error_code": f"CODE_{i}",
                    "error_message": "m",
                    "failed_at": now,
                }
                for i in range(distinct)
            ],
        )
        connection.execute(
            sync_queue.insert(),
            [{**base, "object_type": f"queued_{i}", "enqueued_at": now} for i in range(distinct)],
        )
    assert runner.run_once().last_error is None
    assert runner.run_once().last_error is None
    result = samples(exposition([runner.state]))
    synced = by_name(result, "crmsync_records_synced_total")
    errors = by_name(result, "crmsync_sync_errors_total")
    assert {dict(labels)["object"] for labels in synced} <= {
        *(f"object_{i}" for i in range(distinct)),
        "lead",
        "contact",
        "account",
        "opportunity",
        "other",
    }
    assert len({dict(labels)["object"] for labels in synced}) <= 21
    assert len({dict(labels)["error_code"] for labels in errors}) <= 11
    # Folding bounds the series, never the counts.
    assert sum(synced.values()) == distinct
    assert sum(errors.values()) == distinct
    assert sum(by_name(result, "crmsync_pending_records").values()) == distinct
    folded = {
        dict(labels)["label"]: value
        for labels, value in by_name(result, "crmsync_folded_label_values").items()
    }
    # 4 configured objects keep their places: 16 of the 6000 store objects fit, the rest fold.
    assert folded["object"] == 2 * distinct - 16
    assert folded["error_code"] == distinct - 10
    assert len(result) < 2000
    runner.reader.close()
    engine.dispose()


def test_clock_skew_on_the_reference_store_never_goes_negative(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    runner = runner_for(store_url)
    assert runner.run_once().last_error is None  # counters count from here
    ahead = utcnow() + timedelta(minutes=30)
    base = {"object_type": "lead", "record_id": "1", "operation": "insert", "direction": "to_crm"}
    with engine.begin() as connection:
        connection.execute(sync_queue.insert(), [{**base, "enqueued_at": ahead}] * 3)
        connection.execute(
            sync_history.insert(),
            [{**base, "enqueued_at": ahead, "synced_at": ahead - timedelta(minutes=5)}] * 2,
        )
    add_history(engine, 10)
    assert runner.run_once().last_error is None
    result = samples(exposition([runner.state]))
    lead = frozenset(
        {("store", "main"), ("object", "lead"), ("operation", "insert"), ("direction", "to_crm")}
    )
    assert by_name(result, "crmsync_oldest_pending_age_seconds")[lead] == 0.0
    assert by_name(result, "crmsync_pending_records")[lead] == 3.0
    future = {
        dict(labels)["table"]: value
        for labels, value in by_name(result, "crmsync_future_timestamp_rows").items()
    }
    assert future == {"queue": 3.0, "history": 2.0, "errors": 0.0}
    assert by_name(result, "crmsync_sync_latency_seconds_count")[lead] >= 2.0
    assert min(by_name(result, "crmsync_sync_latency_seconds_sum").values()) >= 0.0
    runner.reader.close()
    engine.dispose()
