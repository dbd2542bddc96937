"""At run time: store values that fold into ``other`` or count nowhere are logged once each."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import add_pending, collect, runner_for, utcnow
from crmsync_testing.mapped_store import MAPPED, crm_changes
from exporter.schema import create_reference_schema, sync_queue


def warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, object]]]:
    fields = ("store", "label", "value", "table", "column", "rows")
    return [
        (record.getMessage(), {f: getattr(record, f) for f in fields if hasattr(record, f)})
        for record in caplog.records
        if record.levelname == "WARNING"
    ]


def test_unmapped_operations_and_capped_objects_are_logged_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    add_pending(engine, 20)
    row = {"record_id": "1", "direction": "to_crm", "enqueued_at": utcnow()}
    with engine.begin() as connection:
        connection.execute(
            sync_queue.insert(),
            [{**row, "object_type": "lead", "operation": " D "}] * 3
            + [{**row, "object_type": "campaign", "operation": "insert"}],
        )
    # The configured objects fill the cap: campaign folds.
    runner = runner_for(sqlite_url, max_objects=4)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            collect(runner)
    assert sorted(warnings(caplog), key=str) == [
        (
            'a store value reads object="other": more distinct objects than max_objects',
            {"store": "main", "label": "object", "value": "campaign"},
        ),
        (
            'a store value reads operation="other": operations maps no label to it',
            {"store": "main", "label": "operation", "value": "d"},
        ),
    ]
    runner.reader.close()
    engine.dispose()


def _status_rows(engine: sa.Engine, states: dict[str, int]) -> None:
    now = utcnow()
    base = {"entity": "Lead", "op": "I", "dir": "OUT", "ext_id": "1"}
    rows = [
        {**base, "state": state, "created": now - timedelta(seconds=30), "completed": now}
        for state, count in states.items()
        for _ in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(crm_changes.insert(), rows)


def test_default_status_values_the_store_contradicts_fail_the_collection(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(store_url)
    crm_changes.create(engine)
    _status_rows(engine, {"queued": 3, "done": 2})
    settings = {**MAPPED, "mapping": {"single_table": MAPPED["mapping"]["single_table"]}}
    runner = runner_for(store_url, **settings)
    state = runner.run_once()
    assert state.last_error == (
        "reading the recent status values: UnconfirmedStatusValuesError: mapping.status_values "
        "is not set and the newest 5 rows of crm_changes hold statuses the defaults do not "
        "list: 'queued' (3 rows), 'done' (2 rows); set mapping.status_values (see "
        "--config.connect-check)"
    )
    assert collect(runner)[("crmsync_up", frozenset({("store", "main")}))] == 0
    runner.reader.close()

    # Given in the file: collected; a status no role lists is logged, once.
    _status_rows(engine, {"running": 4})
    runner = runner_for(store_url, **MAPPED)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert runner.run_once().last_error is None
        assert runner.run_once().last_error is None
    assert warnings(caplog) == [
        (
            "a status value that mapping.status_values does not list: its rows are counted nowhere",
            {
                "store": "main",
                "value": "'running'",
                "table": "crm_changes",
                "column": "state",
                "rows": 4,
            },
        )
    ]
    runner.reader.close()
    engine.dispose()


def test_default_status_values_the_store_confirms(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(store_url)
    crm_changes.create(engine)
    settings = {**MAPPED, "mapping": {"single_table": MAPPED["mapping"]["single_table"]}}
    runner = runner_for(store_url, **settings)
    assert runner.run_once().last_error is None  # empty: nothing to count, nothing to confirm
    _status_rows(engine, {"pending": 2, "synced": 1})
    with caplog.at_level("INFO", logger="exporter.store_values"):
        state = runner.run_once()
    assert state.last_error is None
    assert state.gauges is not None
    assert sum(backlog.pending for backlog in state.gauges.backlog.values()) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "the default status_values are confirmed by the store's recent rows"
    ]
    runner.reader.close()
    engine.dispose()
