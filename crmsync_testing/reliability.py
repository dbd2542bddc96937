"""Stores under faults: exact counters, a writer riding out outages, the exporter on them."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, write_config
from crmsync_testing.helpers import change, history_counts, newest_id, nonzero, series_total, utcnow
from crmsync_testing.pg_instance import PgStore
from exporter.schema import sync_history

ERROR_COUNTS = (
    "SELECT object_type, operation, direction, error_code, COUNT(*) FROM sync_error "
    "WHERE id > :after GROUP BY object_type, operation, direction, error_code"
)


def newest(engine: sa.Engine) -> tuple[int, int]:
    """The newest history and error ids: where an exporter starting now begins to count."""
    return newest_id(engine, "sync_history"), newest_id(engine, "sync_error")


def exact(result: dict[Any, float], engine: sa.Engine, start: tuple[int, int]) -> bool:
    """Counters equal the store's counts of the rows added since ``start``, series by series."""
    with engine.connect() as connection:
        rows = connection.execute(sa.text(ERROR_COUNTS), {"after": start[1]}).all()
    # Error codes keep their case in labels; everything else is lower-cased.
    errors = {(*(str(v).lower() for v in row[:3]), row[3]): float(row[4]) for row in rows}
    return (
        nonzero(series_total(result, "crmsync_records_synced_total"))
        == history_counts(engine, start[0])
        and nonzero(series_total(result, "crmsync_sync_errors_total")) == errors
    )


def exporter_config(tmp_path: Path, store: PgStore, **settings: Any) -> Path:
    entry = {
        "name": "main",
        "url": store.server.url(store.database, store.role),
        "password_env": "CRMSYNC_TEST_STORE_PASSWORD",
        "interval": "500ms",
        "query_timeout": "2s",
        "new_counter_hold": "0s",
        **settings,
    }
    return write_config(tmp_path / "exporter.yml", [entry])


def start_exporter(tmp_path: Path, store: PgStore, **settings: Any) -> Exporter:
    return Exporter(
        exporter_config(tmp_path, store, **settings),
        env={"CRMSYNC_TEST_STORE_PASSWORD": store.password},
    )


class Writer:
    """A sync engine writing history rows in small transactions, riding out outages."""

    def __init__(self, url: str) -> None:
        self._engine = sa.create_engine(url, pool_pre_ping=True)
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(11)
        while not self._stop.is_set():
            now = utcnow()
            rows = [
                {**change(rng), "enqueued_at": now - timedelta(seconds=5), "synced_at": now}
                for _ in range(rng.randint(1, 5))
            ]
            try:
                with self._engine.begin() as connection:
                    connection.execute(sync_history.insert(), rows)
            except sa.exc.DBAPIError:
                self.failures += 1
                self._stop.wait(0.1)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._engine.dispose()
