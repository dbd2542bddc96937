"""From nothing: ``crmsync-schema`` creates or prints the store, ``crmsync-demo`` runs it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from crmsync_tools import demo, schema_cli
from exporter.schema import create_reference_schema, metadata

TABLES = ("sync_queue", "sync_history", "sync_error")


def layout(url: str) -> dict[str, tuple[list[str], list[tuple[str, tuple[str, ...]]]]]:
    """Columns and indexes (name, columns) of the reference tables, as the database has them."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {
            table: (
                [column["name"] for column in inspector.get_columns(table)],
                sorted(
                    (str(index["name"]), tuple(str(c) for c in index["column_names"]))
                    for index in inspector.get_indexes(table)
                ),
            )
            for table in TABLES
        }
    finally:
        engine.dispose()


# --- crmsync-schema ------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            # TEST-NET address: it would hang, were it contacted.
            "postgresql+psycopg://exporter:hunter2@192.0.2.1:5432/sync",
            [
                "CREATE TABLE sync_queue (\n\tid BIGSERIAL NOT NULL",
                "enqueued_at TIMESTAMP WITHOUT TIME ZONE NOT NULL",
                "CREATE INDEX ix_sync_queue_backlog ON sync_queue "
                "(object_type, operation, direction, enqueued_at);",
                "CREATE INDEX ix_sync_history_synced_at ON sync_history "
                "(synced_at, object_type, direction);",
                "CREATE INDEX ix_sync_error_failed_at ON sync_error (failed_at);",
                "error_message TEXT NOT NULL",
            ],
        ),
        (
            "mysql+pymysql://exporter:hunter2@192.0.2.1:3306/sync",
            [
                "CREATE TABLE sync_queue (\n\tid BIGINT NOT NULL AUTO_INCREMENT",
                "enqueued_at DATETIME(6) NOT NULL",
                "synced_at DATETIME(6) NOT NULL",
                "CREATE INDEX ix_sync_queue_backlog ON sync_queue "
                "(object_type, operation, direction, enqueued_at);",
                "record_name VARCHAR(255),",
            ],
        ),
    ],
)
def test_print_sql_gives_the_dialects_ddl_without_connecting(
    url: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema_cli.main(["--store.url", url, "--print-sql"]) == 0

    out = capsys.readouterr().out
    for fragment in expected:
        assert fragment in out
    assert out.count("CREATE TABLE") == 3
    assert out.count("CREATE INDEX") == 3
    assert out.index("CREATE TABLE sync_queue") < out.index("CREATE TABLE sync_history")
    assert "hunter2" not in out


def test_printed_ddl_builds_the_same_store_as_the_command(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema_cli.main(["--store.url", store_url, "--print-sql"]) == 0
    statements = [s for s in capsys.readouterr().out.split(";\n") if s.strip()]
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    engine.dispose()

    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    if not store_url.startswith("sqlite"):
        printed = layout(store_url)
        assert set(printed) == set(TABLES)
        assert printed == {
            name: (
                [column.name for column in metadata.tables[name].columns],
                sorted(
                    (str(index.name), tuple(column.name for column in index.columns))
                    for index in metadata.tables[name].indexes
                ),
            )
            for name in TABLES
        }
        return
    create_reference_schema(sa.create_engine(reference))
    assert layout(store_url) == layout(reference)


def test_creating_the_store_is_idempotent(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema_cli.main(["--store.url", store_url]) == 0
    first = capsys.readouterr().out
    assert schema_cli.main(["--store.url", store_url]) == 0
    second = capsys.readouterr().out

    assert "created sync_queue, sync_history, sync_error with their indexes" in first
    assert "sync_queue, sync_history, sync_error already present" in second
    engine = sa.create_engine(store_url)
    assert set(TABLES) <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://exporter:hunter2@127.0.0.1:1/sync", "exporter:***@127.0.0.1:1/sync"),
        ("mysql+pymysql://exporter:hunter2@127.0.0.1:1/sync", "Can't connect"),
        ("nosuchdb://exporter:hunter2@host/sync", "unknown database dialect 'nosuchdb'"),
        ("::not a url::", "not a SQLAlchemy database URL"),
    ],
)
def test_schema_command_reports_a_bad_store_in_one_line(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema_cli.main(["--store.url", url]) == 1

    err = capsys.readouterr().err
    assert err.startswith("crmsync-schema: ")
    assert err.count("\n") == 1
    assert expected in err
    assert "hunter2" not in err


def test_schema_command_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_STORE_URL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        schema_cli.main([])
    assert exit_info.value.code == 2


# --- crmsync-demo --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    """Sample name -> sum over its series."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("store") == "demo":
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    db = tmp_path / "demo" / "crmsync-demo.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crmsync_tools.demo",
            "--db",
            str(db),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--history",
            "0.5",
            "--speed",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process, f"http://127.0.0.1:{port}/metrics", db
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.timeout(120)
def test_demo_serves_the_simulated_store_and_stops_on_ctrl_c(
    running_demo: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, url, db = running_demo
    deadline = time.monotonic() + 60
    first: dict[str, float] = {}
    while time.monotonic() < deadline and process.poll() is None:
        try:
            first = scrape(url)
        except OSError:
            first = {}
        if first.get("crmsync_up") == 1.0:
            break
        time.sleep(0.3)
    assert first.get("crmsync_up") == 1.0, "the demo's exporter serves crmsync_up 1"
    # Half an hour of backfilled history at 5 x 5 changes a second: not counted, the counters
    # start with the exporter (at most the first collection or two of live traffic).
    assert first["crmsync_records_synced_total"] < 0.05 * 0.5 * 3600 * 25

    later = first
    while (
        time.monotonic() < deadline
        and later.get("crmsync_records_synced_total", 0) <= first["crmsync_records_synced_total"]
    ):
        time.sleep(1)
        later = scrape(url)
    assert later["crmsync_records_synced_total"] > first["crmsync_records_synced_total"], (
        "the simulator keeps syncing while the exporter runs"
    )

    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert url in out
    assert f"curl -s {url}" in out
    assert "Traceback" not in err
    assert "crmsync demo stopped" in err
    assert (db.parent / "crmsync-demo.yml").is_file()


def test_demo_configuration_points_the_exporter_at_the_store(tmp_path: Path) -> None:
    from exporter.config import load_config

    db = tmp_path / "my store" / "x.db"
    db.parent.mkdir()
    config = load_config(demo.write_config(db))

    store = config.stores[0]
    assert store.name == "demo"
    assert sa.make_url(store.url).database == str(db)
    assert store.interval == 5.0


@pytest.mark.parametrize(
    ("address", "url"),
    [
        (":9312", "http://localhost:9312/metrics"),
        ("0.0.0.0:9400", "http://localhost:9400/metrics"),
        ("127.0.0.1:9312", "http://127.0.0.1:9312/metrics"),
        ("[::1]:9312", "http://[::1]:9312/metrics"),
    ],
)
def test_demo_prints_a_url_that_reaches_the_listen_address(address: str, url: str) -> None:
    assert demo.metrics_url(address) == url


@pytest.mark.parametrize("scenario", ["steady", "burst", "stall", "error-storm"])
def test_demo_says_what_each_scenario_shows(scenario: str) -> None:
    args = demo.parse_args(["--scenario", scenario])
    lines = demo.what_to_expect(args)
    assert lines[0] == 'crmsync_up{store="demo"} 1'
    assert any("crmsync_pending_records" in line for line in lines)
