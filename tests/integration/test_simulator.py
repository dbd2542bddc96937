"""The simulator writes the traffic each scenario promises, on every database; backfill is exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_tools import simulator
from crmsync_tools.simulator import (
    ERROR_KINDS,
    SCENARIOS,
    Scenario,
    Simulator,
    backfill,
    database_now,
)
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

RATE = 5.0
SPEED = 60.0
TICK = 0.25
"""Real seconds per tick: 15 simulated seconds at SPEED."""
WARMUP_REAL = SCENARIOS["stall"].warmup / SPEED
OBJECTS = {"lead", "contact", "account", "opportunity"}


@dataclass(frozen=True)
class Sample:
    """The store after one tick."""

    simulated: float
    pending: int
    synced: int
    failed: int


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    yield engine
    engine.dispose()


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
            for table in (sync_queue, sync_history, sync_error)
        )


def db_now(engine: sa.Engine) -> datetime:
    with engine.connect() as connection:
        return database_now(connection)


def drive(
    engine: sa.Engine, scenario: str | Scenario, ticks: int = 80, **settings: Any
) -> tuple[Simulator, list[Sample]]:
    """Tick a simulator ``ticks`` times at high speed; its clock ends at the database's now."""
    start = db_now(engine) - timedelta(seconds=ticks * TICK)
    options: dict[str, Any] = {
        "rate": RATE,
        "speed": SPEED,
        "sync_interval": TICK,
        "seed": 7,
        "start": start,
    }
    sim = Simulator(engine, scenario, **(options | settings))
    samples = []
    for _ in range(ticks):
        sim.tick(TICK)
        samples.append(Sample(sim.simulated, *counts(engine)))
    return sim, samples


def assert_conserved(sim: Simulator, engine: sa.Engine) -> None:
    """Every change enqueued was synced, dropped after a final failure, or is still waiting."""
    pending, synced, failed = counts(engine)
    totals = sim.totals
    assert (synced, failed) == (totals.synced, totals.failed)
    assert pending == totals.enqueued - totals.synced - totals.dropped


def rows(engine: sa.Engine, query: str) -> list[sa.Row[Any]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(query)).all())


def as_datetime(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


# --- scenarios -----------------------------------------------------------------------------


def test_steady_keeps_a_small_bounded_backlog(engine: sa.Engine) -> None:
    sim, samples = drive(engine, "steady")

    arrivals_per_cycle = RATE * SPEED * TICK * 1.5
    assert max(sample.pending for sample in samples) < 3 * arrivals_per_cycle
    assert sim.totals.enqueued == pytest.approx(RATE * sim.simulated, rel=0.1)
    assert sim.totals.failed / (sim.totals.synced + sim.totals.failed) == pytest.approx(
        0.02, abs=0.015
    )
    assert_conserved(sim, engine)
    series = rows(engine, "SELECT DISTINCT object_type, operation, direction FROM sync_history")
    assert {tuple(row) for row in series} == {
        (obj, op, way)
        for obj in OBJECTS
        for op in ("insert", "update")
        for way in ("to_crm", "from_crm")
    }


def test_steady_latencies_are_the_engines_cycle_in_real_seconds(engine: sa.Engine) -> None:
    sim, _ = drive(engine, "steady", ticks=40)

    latencies = [
        (as_datetime(row.synced_at) - as_datetime(row.enqueued_at)).total_seconds()
        for row in rows(engine, "SELECT enqueued_at, synced_at FROM sync_history")
    ]
    latencies.sort()
    assert latencies[0] >= 0
    # A cycle every TICK +-50% real seconds; capacity keeps up, so first attempts wait no longer.
    assert latencies[int(len(latencies) * 0.95)] < 4 * TICK
    # Changes that hit a retriable error come through after a back-off of real seconds.
    assert latencies[-1] < 60
    newest = rows(engine, "SELECT MAX(synced_at) AS synced_at FROM sync_history")[0]
    assert as_datetime(newest.synced_at) <= sim.now


def test_burst_peaks_then_drains_back_to_the_steady_level(engine: sa.Engine) -> None:
    scenario = SCENARIOS["burst"]
    sim, samples = drive(engine, "burst")

    before = max(s.pending for s in samples if s.simulated <= scenario.warmup)
    peak = max(samples, key=lambda s: s.pending)
    expected_peak = (scenario.arrival_factor - 1.5) * (scenario.duration or 0) * RATE
    assert peak.pending > 0.6 * expected_peak
    assert peak.pending > 5 * max(before, 1)
    assert scenario.warmup < peak.simulated <= scenario.warmup + 2 * (scenario.duration or 0)
    # Drained on its own, long before the next burst.
    assert samples[-1].simulated < scenario.warmup + (scenario.period or 0)
    assert samples[-1].pending < 3 * RATE * SPEED * TICK * 1.5
    assert_conserved(sim, engine)


def test_stall_stops_syncing_while_the_backlog_and_its_age_grow(engine: sa.Engine) -> None:
    sim, samples = drive(engine, "stall")

    stalled = [s for s in samples if s.simulated > SCENARIOS["stall"].warmup + SPEED * TICK]
    assert len(stalled) > 60
    assert len({(s.synced, s.failed) for s in stalled}) == 1, "no attempts after the warm-up"
    pending = [s.pending for s in stalled]
    assert pending == sorted(pending)
    assert pending[-1] - pending[0] == pytest.approx(
        RATE * (stalled[-1].simulated - stalled[0].simulated), rel=0.1
    )
    last_sync = rows(engine, "SELECT MAX(synced_at) AS at FROM sync_history")[0].at
    assert as_datetime(last_sync) <= sim.started + timedelta(seconds=WARMUP_REAL + 2 * TICK)
    oldest = as_datetime(rows(engine, "SELECT MIN(enqueued_at) AS at FROM sync_queue")[0].at)
    # The oldest waiting change dates from the warm-up: its age is (nearly) the whole run.
    assert (sim.now - oldest).total_seconds() > sim.elapsed - WARMUP_REAL - 2 * TICK
    assert_conserved(sim, engine)


def test_error_storm_fails_most_attempts_with_one_dominant_code(engine: sa.Engine) -> None:
    sim, samples = drive(engine, "error-storm")

    storm = sim.started + timedelta(seconds=WARMUP_REAL + TICK)
    codes = {
        str(row.error_code): int(row.n)
        for row in rows(
            engine,
            "SELECT error_code, COUNT(*) AS n FROM sync_error "
            f"WHERE failed_at > '{storm:%Y-%m-%d %H:%M:%S.%f}' GROUP BY error_code",
        )
    }
    synced = rows(
        engine,
        f"SELECT COUNT(*) AS n FROM sync_history WHERE synced_at > '{storm:%Y-%m-%d %H:%M:%S.%f}'",
    )[0].n
    failed = sum(codes.values())
    assert failed / (failed + synced) == pytest.approx(0.6, abs=0.07)
    assert max(codes, key=lambda code: codes[code]) == "REQUEST_LIMIT_EXCEEDED"
    assert codes["REQUEST_LIMIT_EXCEEDED"] / failed > 0.75
    assert len(codes) >= 4, "the usual mix still shows beside the storm"
    # Retried changes stay queued and fresh ones keep coming: the backlog grows.
    assert samples[-1].pending > 3 * max(s.pending for s in samples if s.simulated <= 60)
    assert_conserved(sim, engine)


def test_retriable_failures_stay_queued_and_are_retried(engine: sa.Engine) -> None:
    limited = Scenario(
        "limited",
        "every attempt hits the API limit",
        event="limited",
        warmup=0.0,
        error_share=1.0,
        error_codes={"REQUEST_LIMIT_EXCEEDED": 1.0},
    )
    sim, samples = drive(engine, limited, ticks=60)

    assert samples[-1].synced == 0
    assert samples[-1].pending == sim.totals.enqueued, "nothing leaves the queue"
    assert samples[-1].failed > sim.totals.enqueued, "changes were attempted again later"
    assert_conserved(sim, engine)


def test_final_failures_leave_the_queue(engine: sa.Engine) -> None:
    duplicates = Scenario(
        "duplicates",
        "every attempt is a duplicate",
        event="duplicates",
        warmup=0.0,
        error_share=1.0,
        error_codes={"DUPLICATE_VALUE": 1.0},
    )
    sim, samples = drive(engine, duplicates, ticks=20)

    assert samples[-1].synced == 0
    assert samples[-1].failed == sim.totals.dropped == sim.totals.enqueued - samples[-1].pending
    assert samples[-1].pending < 3 * RATE * SPEED * TICK * 1.5
    assert_conserved(sim, engine)


def test_the_same_seed_writes_the_same_rows(tmp_path: Path) -> None:
    start = datetime(2024, 3, 1, 12, 0, 0)
    contents = []
    for name in ("a", "b"):
        engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
        create_reference_schema(engine)
        sim = Simulator(
            engine, "error-storm", speed=SPEED, sync_interval=TICK, seed=42, start=start
        )
        for _ in range(30):
            sim.tick(TICK)
        contents.append(
            [
                rows(engine, f"SELECT * FROM {table} ORDER BY id")
                for table in ("sync_queue", "sync_history", "sync_error")
            ]
        )
        engine.dispose()
    assert contents[0] == contents[1]
    assert all(contents[0])


def test_run_writes_real_time_by_the_database_clock(engine: sa.Engine) -> None:
    sim = Simulator(engine, "steady", rate=RATE, speed=SPEED, sync_interval=TICK, seed=1)
    began = time.monotonic()

    totals = sim.run(duration=1.5)

    assert 1.4 < time.monotonic() - began < 5
    assert totals.enqueued == pytest.approx(RATE * SPEED * 1.5, rel=0.25)
    assert totals.synced > 0
    now = db_now(engine)
    newest = rows(
        engine,
        "SELECT (SELECT MAX(enqueued_at) FROM sync_queue) AS queued, "
        "(SELECT MAX(enqueued_at) FROM sync_history) AS enqueued, "
        "(SELECT MAX(synced_at) FROM sync_history) AS synced",
    )[0]
    stamps = [as_datetime(value) for value in newest if value is not None]
    assert stamps
    for stamp in stamps:
        assert stamp <= now + timedelta(milliseconds=50), "nothing in the database's future"
        assert now - stamp < timedelta(seconds=3), "timestamps follow the real clock"


def test_run_stops_when_asked(engine: sa.Engine) -> None:
    import threading

    stop = threading.Event()
    sim = Simulator(engine, "steady", speed=SPEED, sync_interval=TICK)
    worker = threading.Thread(target=sim.run, kwargs={"stop": stop})
    worker.start()
    time.sleep(0.6)
    stop.set()
    worker.join(timeout=3)
    assert not worker.is_alive()
    assert sim.totals.enqueued > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rate": 0.0}, "rate"),
        ({"speed": -1.0}, "speed"),
        ({"error_share": 1.5}, "error_share"),
        ({"sync_rate": -1.0}, "sync_rate"),
    ],
)
def test_settings_are_checked(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match=message):
        Simulator(engine, "steady", start=datetime(2024, 1, 1), **settings)
    with pytest.raises(ValueError, match="unknown scenario"):
        Simulator(engine, "meltdown", start=datetime(2024, 1, 1))


# --- backfill ------------------------------------------------------------------------------


def test_backfill_writes_exactly_what_it_was_asked_in_order(engine: sa.Engine) -> None:
    end = db_now(engine)

    result = backfill(
        engine,
        history_rows=2_345,
        error_rows=321,
        pending_rows=45,
        span=7200.0,
        pending_span=60.0,
        end=end,
        seed=5,
        batch_size=1_000,
    )

    assert result == simulator.Backfilled(history=2_345, errors=321, pending=45)
    assert counts(engine) == (45, 2_345, 321)
    history = rows(engine, "SELECT enqueued_at, synced_at FROM sync_history ORDER BY id")
    synced = [as_datetime(row.synced_at) for row in history]
    assert synced == sorted(synced), "append-only: ids follow synced_at"
    assert end - timedelta(seconds=7200) <= synced[0]
    assert synced[-1] <= end
    assert all(as_datetime(row.enqueued_at) <= as_datetime(row.synced_at) for row in history)
    failed = [
        as_datetime(row.at)
        for row in rows(engine, "SELECT failed_at AS at FROM sync_error ORDER BY id")
    ]
    assert failed == sorted(failed)
    queued = [
        as_datetime(row.at) for row in rows(engine, "SELECT enqueued_at AS at FROM sync_queue")
    ]
    assert all(end - timedelta(seconds=60) <= at <= end for at in queued)


def test_bulk_inserts_store_timestamps_as_sqlalchemy_does(engine: sa.Engine) -> None:
    moments = [datetime(2024, 1, 1, 0, 0, 0), datetime(2024, 1, 1, 0, 0, 0, 123456)]
    change = ("lead", "00QDn0AAAAAAAAAAAA", "insert", "to_crm")
    with engine.begin() as connection:
        simulator.bulk_insert(
            connection,
            sync_queue,
            ("object_type", "record_id", "operation", "direction", "enqueued_at"),
            [(*change, moment) for moment in moments],
        )
        connection.execute(
            sync_queue.insert(),
            [
                dict(
                    zip(("object_type", "record_id", "operation", "direction"), change, strict=True)
                )
                | {"enqueued_at": moment}
                for moment in moments
            ],
        )
        typed = connection.execute(sa.select(sync_queue.c.enqueued_at).order_by(sync_queue.c.id))
        raw = connection.execute(sa.text("SELECT enqueued_at FROM sync_queue ORDER BY id"))
        typed_values, raw_values = list(typed.scalars()), list(raw.scalars())
    assert typed_values == moments + moments
    assert raw_values[:2] == raw_values[2:], "the same text on SQLite, the same value elsewhere"


def test_backfill_spreads_history_over_the_span_like_a_steady_engine(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    create_reference_schema(engine)
    end = datetime(2024, 5, 1, 12, 0, 0)

    backfill(engine, history_rows=36_000, span=3 * 3600.0, end=end, seed=1)

    per_hour = rows(
        engine,
        "SELECT strftime('%H', synced_at) AS hour, COUNT(*) AS n FROM sync_history GROUP BY hour",
    )
    assert {row.hour: row.n for row in per_hour} == {
        "09": pytest.approx(12_000, abs=5),
        "10": pytest.approx(12_000, abs=5),
        "11": pytest.approx(12_000, abs=5),
    }
    latencies = sorted(
        (as_datetime(row.synced_at) - as_datetime(row.enqueued_at)).total_seconds()
        for row in rows(engine, "SELECT enqueued_at, synced_at FROM sync_history")
    )
    assert 1 < latencies[len(latencies) // 2] < 10, "median: a few seconds"
    assert latencies[int(len(latencies) * 0.99)] > 60, "a tail of backlog minutes"
    objects = {
        row.object_type: row.n
        for row in rows(
            engine, "SELECT object_type, COUNT(*) AS n FROM sync_history GROUP BY object_type"
        )
    }
    assert max(objects, key=lambda name: objects[name]) == "lead"
    engine.dispose()


def test_backfill_limits_objects(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    create_reference_schema(engine)

    backfill(
        engine, history_rows=500, error_rows=50, pending_rows=20, objects=["lead", "case"], seed=2
    )

    for table in ("sync_history", "sync_error", "sync_queue"):
        found = {
            row.object_type for row in rows(engine, f"SELECT DISTINCT object_type FROM {table}")
        }
        assert found == {"lead", "case"}
    engine.dispose()


def test_errors_read_like_a_crms(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    create_reference_schema(engine)

    backfill(engine, error_rows=5_000, seed=3)

    errors = rows(engine, "SELECT * FROM sync_error")
    assert {row.error_code for row in errors} == set(simulator.STEADY_ERROR_CODES)
    for row in errors:
        assert row.record_name
        assert row.error_message
        assert len(row.record_id) == 18
        kind = ERROR_KINDS[row.error_code]
        assert kind.applies(row.object_type, row.operation), (row.error_code, row.object_type)
        if row.object_type in ("lead", "contact") and "@" in row.record_name:
            assert " " not in row.record_name
    assert {
        row.error_code for row in errors if row.object_type in ("account", "opportunity")
    }.isdisjoint({"INVALID_EMAIL_ADDRESS"})
    assert {row.operation for row in errors if row.error_code == "ENTITY_IS_DELETED"} == {"update"}
    assert {row.operation for row in errors if row.error_code == "REQUIRED_FIELD_MISSING"} == {
        "insert"
    }
    # A record keeps its name across failed attempts.
    names: dict[str, set[str]] = {}
    for row in errors:
        names.setdefault(row.record_id, set()).add(row.record_name)
    assert all(len(found) == 1 for found in names.values())
    engine.dispose()


# --- the command ---------------------------------------------------------------------------


def test_command_creates_the_schema_and_writes_traffic(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = simulator.main(
        [
            "--store.url",
            sqlite_url,
            "--create-schema",
            "--scenario",
            "stall",
            "--speed",
            "60",
            "--duration",
            "1.5",
            "--seed",
            "3",
            "--log.level",
            "error",
        ]
    )

    assert status == 0
    engine = sa.create_engine(sqlite_url)
    pending, _synced, _failed = counts(engine)
    assert pending > 100
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_command_on_server_databases(store_url: str) -> None:
    status = simulator.main(
        [
            "--store.url",
            store_url,
            "--create-schema",
            "--speed",
            "30",
            "--duration",
            "1",
            "--log.level",
            "error",
        ]
    )

    assert status == 0
    engine = sa.create_engine(store_url)
    pending, synced, _failed = counts(engine)
    assert pending + synced > 50
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "not a SQLAlchemy database URL"),
        ("nosuchdb://user:hunter2@host/db", "unknown database dialect"),
        ("postgresql+psycopg://user:hunter2@127.0.0.1:1/db", "127.0.0.1:1/db"),
    ],
)
def test_command_reports_a_bad_store_in_one_line(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.main(["--store.url", url]) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("crmsync-simulator: ")
    assert expected in err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_command_asks_for_the_schema_when_tables_are_missing(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.main(["--store.url", sqlite_url]) == 1

    err = capsys.readouterr().err
    assert "sync_queue, sync_history, sync_error missing" in err
    assert "--create-schema" in err


@pytest.mark.parametrize(
    "flags",
    [["--rate", "0"], ["--speed", "fast"], ["--error-share", "2"], ["--scenario", "meltdown"], []],
)
def test_command_rejects_bad_flags(flags: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_STORE_URL", raising=False)
    url = ["--store.url", "sqlite://"] if flags else []
    with pytest.raises(SystemExit) as exit_info:
        simulator.parse_args(url + flags)
    assert exit_info.value.code == 2


def test_command_takes_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_STORE_URL", "sqlite:///from-env.db")
    assert simulator.parse_args([]).store_url == "sqlite:///from-env.db"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_exits_cleanly_on_a_signal(sqlite_url: str, signum: int) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crmsync_tools.simulator",
            "--store.url",
            sqlite_url,
            "--create-schema",
            "--speed",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        engine = sa.create_engine(sqlite_url)
        while time.monotonic() < deadline:
            try:
                if sum(counts(engine)) > 0:
                    break
            except sa.exc.OperationalError:
                pass  # the tables are not there yet
            time.sleep(0.2)
        engine.dispose()
        process.send_signal(signum)
        _out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "msg=stopped" in err
    assert "Traceback" not in err
