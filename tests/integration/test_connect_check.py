"""--config.connect-check on real stores: what it reports for right and purposely wrong mappings."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import yaml

from crmsync_testing.exporter_cli import run_cli
from crmsync_testing.helpers import add_errors, add_history, add_pending, utcnow
from crmsync_testing.mapped_store import MAPPED, crm_changes
from crmsync_testing.trigger_log import TriggerLog, heroku_connect_schema
from exporter.schema import create_reference_schema, sync_queue


def run_check(tmp_path: Path, store: dict[str, Any], *flags: str) -> tuple[int, str, str]:
    """``crmsync-exporter --config.file F --config.connect-check``: exit code, stdout, stderr."""
    path = tmp_path / "crmsync-exporter.yml"
    path.write_text(yaml.safe_dump({"stores": [{"name": "main", **store}]}))
    code, out, err = run_cli(["--config.file", str(path), *(flags or ["--config.connect-check"])])
    assert "Traceback" not in out + err
    return code, out, err


def findings(report: str, indexes: bool = True) -> list[str]:
    """The report's findings, in order; without those of missing indexes unless ``indexes``."""
    return [
        line.strip()
        for line in report.splitlines()
        if re.match(r"  (error|warning): ", line) and (indexes or ": no index on " not in line)
    ]


@pytest.fixture
def reference(store_url: str) -> Iterator[tuple[str, sa.Engine]]:
    """A reference store with rows in every table."""
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    add_pending(engine, 40)
    add_history(engine, 60, hours=0.1)
    add_errors(engine, 12)
    yield store_url, engine
    engine.dispose()


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(sql)).scalar_one())


def test_a_right_mapping_passes(reference: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = reference
    code, report, _ = run_check(tmp_path, {"url": url})
    assert code == 0, report
    assert findings(report) == []
    for table in ("sync_queue", "sync_history", "sync_error"):
        assert f"table {table} (mapping." in report
    pending = count(engine, "SELECT COUNT(*) FROM sync_queue")
    assert f"    newest {pending} rows (of at most 1000):" in report
    inserts = count(engine, "SELECT COUNT(*) FROM sync_queue WHERE operation = 'insert'")
    assert f"'insert' {inserts} -> insert" in report
    assert "index (id) for new rows by id: primary key" in report
    assert (
        "index (synced_at) for the last full hour and rows stamped in the future: "
        "ix_sync_history_synced_at" in report
    )
    plans = report.split("  plans of the statements each collection runs:\n", 1)
    if engine.dialect.name == "mysql":
        assert len(plans) == 1
        assert "  plans: not read on MySQL and MariaDB" in report
    else:
        steps = plans[1].split("\n  resolved mapping:", 1)[0].splitlines()
        assert len(steps) == 9
        assert all(step.endswith(": indexed") for step in steps), steps
    resolved = report.split("  resolved mapping:\n", 1)[1].split("\n  main: ", 1)[0]
    document = yaml.safe_load("\n".join(line[4:] for line in resolved.splitlines()))
    assert document["mapping"]["history"]["synced_at"] == "synced_at"
    assert document["operations"] == {"insert": ["insert"], "update": ["update"]}
    assert report.rstrip().endswith(": 1 store checked, 0 errors, 0 warnings: usable")


def test_a_misspelt_column_and_table(reference: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, _ = reference
    mapping = {"history": {"synced_at": "synced"}, "errors": {"table": "sync_errors"}}
    code, report, _ = run_check(tmp_path, {"url": url, "mapping": mapping})
    assert code == 1
    assert findings(report) == [
        "error: stores[0].mapping.history.synced_at: no column 'synced' in sync_history; "
        "did you mean 'synced_at'? (the exporter's queries fail)",
        "error: stores[0].mapping.errors.table: no table 'sync_errors' in the database; "
        "did you mean 'sync_error'?",
    ]
    assert report.rstrip().endswith("2 errors, 0 warnings: metrics would be wrong or absent")
    # The offline check cannot know: it passes the same file.
    assert run_check(tmp_path, {"url": url, "mapping": mapping}, "--config.check")[0] == 0


def test_unmapped_values(reference: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = reference
    now = utcnow()
    row = {"object_type": "lead", "record_id": "1", "direction": "to_crm", "enqueued_at": now}
    with engine.begin() as connection:
        connection.execute(sync_queue.insert(), [{**row, "operation": "D"}] * 7)
    deletes = count(engine, "SELECT COUNT(*) FROM sync_queue WHERE operation = 'D'")
    assert deletes == 7
    code, report, _ = run_check(tmp_path, {"url": url})
    assert code == 0  # counted, under operation="other": a warning
    assert findings(report) == [
        "warning: stores[0].operations: sync_queue.operation holds values the configuration "
        f"does not map: 'D' ({deletes} rows); reported as operation=\"other\"; map it, e.g. "
        "operations: {<label>: [D]}"
    ]
    assert f"'D' {deletes} -> other" in report

    # Directions written another way throughout: every series would read other.
    directions = {"to_crm": ["OUT"], "from_crm": ["IN"]}
    code, report, _ = run_check(tmp_path, {"url": url, "directions": directions})
    assert code == 1
    errors = [line for line in findings(report) if line.startswith("error: ")]
    assert len(errors) == 3  # queue, history, errors
    assert errors[0].startswith(
        "error: stores[0].directions: sync_queue.direction holds only values the configuration "
        "does not map: "
    )


def test_a_missing_index(reference: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = reference
    with engine.begin() as connection:
        if engine.dialect.name == "mysql":
            connection.execute(sa.text("DROP INDEX ix_sync_history_synced_at ON sync_history"))
        else:
            connection.execute(sa.text("DROP INDEX ix_sync_history_synced_at"))
    code, report, _ = run_check(tmp_path, {"url": url})
    assert code == 0
    assert findings(report) == [
        "warning: stores[0].mapping.history.table: no index on sync_history starting with "
        "(synced_at) for the last full hour and rows stamped in the future: each read scans the "
        "table; "
        "CREATE INDEX ix_sync_history_synced_at ON sync_history (synced_at)"
    ]
    assert "index (synced_at) for the last full hour and rows stamped in the future: missing" in (
        report
    )
    if engine.dialect.name != "mysql":  # the plans agree: the statements that need it scan
        assert "    the last full hour: reads all of sync_history\n" in report
        assert "    rows stamped in the future: reads all of sync_history\n" in report
        assert "    new history rows: indexed\n" in report


def test_a_local_time_column_declared_utc(store_url: str, tmp_path: Path) -> None:
    """A writer stores Berlin wall-clock time in a naive column the mapping reads as UTC."""
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    berlin = ZoneInfo("Europe/Berlin")
    local_now = datetime.now(UTC).astimezone(berlin)
    offset = local_now.utcoffset()
    assert offset is not None
    rows = [
        {
            "object_type": "lead",
            "record_id": str(n),
            "operation": "insert",
            "direction": "to_crm",
            "enqueued_at": local_now.replace(tzinfo=None) - timedelta(seconds=n),
        }
        for n in range(5)
    ]
    with engine.begin() as connection:
        connection.execute(sync_queue.insert(), rows)
    engine.dispose()
    code, report, _ = run_check(tmp_path, {"url": store_url})
    assert code == 1
    hours = int(offset.total_seconds() // 3600)
    (error,) = [line for line in findings(report) if line.startswith("error: ")]
    assert re.fullmatch(
        r"error: stores\[0\]\.mapping\.queue\.enqueued_at: the newest sync_queue\.enqueued_at lies "
        r"(\d+h)?\d+m\d\ds ahead of the database clock: naive local time about "
        rf"UTC\+0{hours}:00 read as UTC\? \(the exporter would see ages too small and rows in the "
        r"future\); set naive_time_zone to the zone the writer's clock shows",
        error,
    ), error
    # Declared as what it is: no error, the newest row just now.
    code, report, _ = run_check(tmp_path, {"url": store_url, "naive_time_zone": "Europe/Berlin"})
    assert code == 0, report
    assert "read as Europe/Berlin" in report


@pytest.fixture
def status_table(store_url: str) -> Iterator[tuple[str, sa.Engine]]:
    """The status-table store of test_mapped_store, its rows in states queued, done, error."""
    engine = sa.create_engine(store_url)
    crm_changes.create(engine)
    now = utcnow()
    base = {"entity": "Lead", "op": "I", "dir": "OUT", "ext_id": "1", "created": now}
    with engine.begin() as connection:
        connection.execute(
            crm_changes.insert(),
            [{**base, "state": "queued"}] * 3
            + [{**base, "state": "done", "completed": now}] * 4
            + [{**base, "state": "error", "completed": now, "err_code": "X"}] * 2,
        )
    yield store_url, engine
    engine.dispose()


def test_status_values_left_to_their_defaults(
    status_table: tuple[str, sa.Engine], tmp_path: Path
) -> None:
    url, _ = status_table
    mapping = {"single_table": MAPPED["mapping"]["single_table"]}
    store = {**MAPPED, "url": url, "mapping": mapping}
    code, _, stderr = run_check(tmp_path, store, "--config.check")
    assert code == 1
    assert stderr.splitlines()[1] == (
        "  stores[0].mapping.status_values: not set, and the defaults (pending: ['pending'], "
        "synced: ['synced'], failed: ['failed']) are used only where the store holds no other "
        "status: set mapping.status_values to the status column's values, or run "
        "--config.connect-check, which confirms the defaults when they are all the store holds"
    )
    code, report, _ = run_check(tmp_path, store)
    assert code == 1
    assert findings(report, indexes=False) == [
        "error: stores[0].mapping.status_values: not set, and the newest rows of crm_changes "
        "hold statuses the defaults (pending, synced, failed) do not list: 'done' (4 rows), "
        "'queued' (3 rows), 'error' (2 rows); set status_values to what they mean, e.g. "
        "status_values: {pending: [...], synced: [...], failed: [...]}"
    ]
    # The right values, given: no finding.
    code, report, _ = run_check(tmp_path, {**MAPPED, "url": url})
    assert code == 0, report
    assert findings(report, indexes=False) == []
    assert findings(report) == [
        f"warning: stores[0].mapping.single_table.table: no index on crm_changes starting with "
        f"({column}) for {why}: each read scans the table; CREATE INDEX ix_crm_changes_{name} "
        f"ON crm_changes ({column})"
        for name, column, why in (
            ("status", "state", "the backlog (pending rows by status)"),
            ("synced_at", "completed", "new syncs and the last full hour"),
            ("failed_at", "completed", "new failures"),
        )
    ]
    assert "status (crm_changes.state, mapping.status_values): 'done' 4 -> synced" in report
    # One column in two roles: both named.
    assert "  mapping.single_table.synced_at, mapping.single_table.failed_at: timestamp " in report


def test_status_values_the_defaults_fit(store_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(store_url)
    crm_changes.create(engine)
    now = utcnow()
    base = {"entity": "Lead", "op": "I", "dir": "OUT", "ext_id": "1", "created": now}
    with engine.begin() as connection:
        connection.execute(
            crm_changes.insert(),
            [{**base, "state": "pending"}, {**base, "state": "synced", "completed": now}],
        )
    engine.dispose()
    mapping = {"single_table": MAPPED["mapping"]["single_table"]}
    code, report, _ = run_check(tmp_path, {**MAPPED, "url": store_url, "mapping": mapping})
    assert code == 0, report
    assert findings(report, indexes=False) == []
    assert "'pending' 1 -> pending, 'synced' 1 -> synced" in report


def test_a_store_that_cannot_be_reached(tmp_path: Path) -> None:
    code, report, _ = run_check(tmp_path, {"url": f"sqlite:///{tmp_path / 'none.db'}"})
    assert code == 1
    (line,) = findings(report)
    assert line.startswith("error: stores[0].url: the check stopped: OperationalError: ")


def test_the_heroku_connect_preset(postgres_url: str, tmp_path: Path) -> None:
    """The trigger log and its archive, read through the preset: every table the preset reads."""
    with heroku_connect_schema(postgres_url, "hc_check") as (engine, log, archive):
        writer = TriggerLog(engine, log, archive, random.Random(7))
        writer.capture(30, utcnow() - timedelta(minutes=3))
        writer.process(0.5, utcnow())
        writer.archive_processed(0.5)
        store = {"url": postgres_url, "preset": "heroku-connect", "schema": "hc_check"}
        code, report, _ = run_check(tmp_path, store)
        assert code == 0, report
        for key, table in (
            ("queue.table", "_trigger_log"),
            ("history.table", "_trigger_log"),
            ("history.archive_table", "_trigger_log_archive"),
            ("errors.table", "_trigger_log"),
            ("errors.archive_table", "_trigger_log_archive"),
        ):
            assert f"\n  table hc_check.{table} (mapping.{key})\n" in report
        assert "mapping.errors.error_message" in report  # the code is read from the message
        assert findings(report) == [
            "warning: stores[0].mapping.queue.table: no index on hc_check._trigger_log starting "
            "with (table_name, action, created_at) for the backlog (count and oldest enqueued_at "
            "per object, operation, direction): each read scans the table; CREATE INDEX "
            "ix__trigger_log_backlog ON hc_check._trigger_log (table_name, action, created_at)"
        ]
        assert "    backlog: reads all of _trigger_log\n" in report
        assert "    new history rows: indexed\n" in report
