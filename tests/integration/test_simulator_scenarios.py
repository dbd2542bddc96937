"""The simulator's near-stall scenario, which the end-to-end run pages on: checked in the store."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from crmsync_tools.simulator import SCENARIOS, Simulator, database_now
from exporter.schema import create_reference_schema

RATE = 5.0
SPEED = 60.0
TICK = 0.25
"""Real seconds per tick: 15 simulated seconds."""


def _scalar(engine: sa.Engine, query: str, **params: object) -> object:
    with engine.connect() as connection:
        return connection.execute(sa.text(query), params).scalar_one()


def _count(engine: sa.Engine, table: str, column: str, since: datetime) -> int:
    query = f"SELECT COUNT(*) FROM {table} WHERE {column} >= :since"
    return int(str(_scalar(engine, query, since=since)))


def _as_datetime(value: object) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[return-value]


def test_near_stall_syncs_one_change_in_twenty_while_the_oldest_ages(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    ticks = 200  # 50 simulated minutes
    with engine.connect() as connection:
        start = database_now(connection) - timedelta(seconds=ticks * TICK)
    sim = Simulator(
        engine, "near-stall", rate=RATE, speed=SPEED, sync_interval=TICK, seed=3, start=start
    )
    event = sim.started + timedelta(seconds=SCENARIOS["near-stall"].warmup / SPEED)
    ages = []
    for _ in range(ticks):
        sim.tick(TICK)
        oldest = _scalar(engine, "SELECT MIN(enqueued_at) FROM sync_queue")
        ages.append(0.0 if oldest is None else (sim.now - _as_datetime(oldest)).total_seconds())

    # counted in the store, from the moment the engine slowed down: changes that arrived
    # since (waiting or synced), and the engine's work since (synced or failed)
    since = event + timedelta(seconds=2 * TICK)
    arrived = _count(engine, "sync_queue", "enqueued_at", since) + _count(
        engine, "sync_history", "enqueued_at", since
    )
    work = _count(engine, "sync_history", "synced_at", since) + _count(
        engine, "sync_error", "failed_at", since
    )
    assert arrived > 5000
    # one change in twenty gets through: a thirtieth of the usual 1.5 x arrivals
    assert work / arrived == pytest.approx(1 / 20, rel=0.2)
    # working oldest first at a twentieth of the arrivals, the engine lets the oldest change
    # age by about 19/20 of the time that passes
    late = ages[len(ages) // 2 :]
    assert (late[-1] - late[0]) / (TICK * (len(late) - 1)) == pytest.approx(19 / 20, abs=0.1)
    engine.dispose()
