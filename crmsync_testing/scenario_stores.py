"""Sync stores for the end-to-end counter tests: both layouts, a writer, and the rows read back.

Each store is one layout (the three reference tables, or one status table) on one database,
reached by the exporter through a TCP proxy (or, for SQLite, at a path that does not exist
yet), so that the test can hold it out of reach. The writer stamps each change with the time
it writes it and records when its transaction committed; ``ledger`` reads the changes back
by SQL with the interval in which each became visible.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import DATETIME

from crmsync_testing.helpers import add_errors, add_history, add_pending, utcnow
from crmsync_testing.tcp_proxy import TcpProxy
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

THREE_TABLES = "three_tables"
STATUS_TABLE = "status_table"
# The labels the writer uses; the prefilled history also has codes it never writes.
OBJECTS = ("lead", "contact", "account", "opportunity")
NEW_OBJECT = "campaign"
NEW_CODE = "NEW_CODE"
ERROR_SERIES = (("lead", "DUPLICATE_VALUE"), ("contact", "REQUEST_LIMIT_EXCEEDED"))
NEW_ERROR_SERIES = ((NEW_OBJECT, "DUPLICATE_VALUE"), ("lead", NEW_CODE))
SLOW = "slow-"
"""record_id prefix of the rows of a slow transaction: visible when it commits."""

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime().with_variant(DATETIME(fsp=6), "mysql", "mariadb")
status_metadata = sa.MetaData()
sync_changes = sa.Table(
    "sync_changes",
    status_metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("object_type", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=False),
    sa.Column("record_name", sa.String(255)),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("enqueued_at", _Timestamp, nullable=False),
    sa.Column("synced_at", _Timestamp),
    sa.Column("failed_at", _Timestamp),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text()),
    sa.Index("ix_sync_changes_record", "record_id"),
    sa.Index("ix_sync_changes_synced_at", "synced_at"),
    sa.Index("ix_sync_changes_failed_at", "failed_at"),
    sqlite_autoincrement=True,
)
STATUS_MAPPING: dict[str, Any] = {"mapping": {"single_table": {"table": "sync_changes"}}}


def epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def micros(moment: datetime) -> int:
    return round(epoch(moment) * 1_000_000)


@dataclass(frozen=True)
class Change:
    """A synced change or a failed attempt, read back from the store."""

    kind: str
    """"synced" or "errors"."""
    visible_from: float
    visible_until: float
    """It became visible between these two times (Unix seconds): written, then committed."""
    object: str
    operation: str
    direction: str
    error_code: str | None


@dataclass
class Writer:
    """A sync engine writing a few changes every quarter second while it is resumed."""

    store: ScenarioStore
    new_labels: threading.Event = field(default_factory=threading.Event)
    committed: dict[int, float] = field(default_factory=dict)
    """Stamp (microseconds) -> when its transaction had committed (Unix seconds)."""
    failures: int = 0
    _running: threading.Event = field(default_factory=threading.Event)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _busy: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _wrote_new: bool = False
    _resumed: bool = False

    def resume(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        self._resumed = True
        self._running.set()

    def pause(self) -> None:
        """Stop writing; returns once the transaction in flight, if any, has ended."""
        self._running.clear()
        with self._busy:
            pass

    def stop(self) -> None:
        self._stopped.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        engine = self.store.writer_engine()
        for tick in itertools.count():
            self._running.wait()
            if self._stopped.is_set():
                break
            with self._busy:
                if self._running.is_set():
                    stamp = utcnow()
                    new = self.new_labels.is_set()
                    # Every series at once when writing resumes (an exporter may just have
                    # started) and when new ones appear: their holds all end together.
                    every = self._resumed or new != self._wrote_new
                    try:
                        with engine.begin() as connection:
                            self.store.write(connection, tick, stamp, new, every)
                        self.committed[micros(stamp)] = time.time()
                        self._wrote_new, self._resumed = new, False
                    except sa.exc.DBAPIError:
                        self.failures += 1  # a truncation's lock: the engine retries later
            time.sleep(0.25)
        engine.dispose()


@dataclass
class SlowTransaction:
    """Changes written in a transaction that commits later than those written after it."""

    connection: sa.Connection
    transaction: sa.RootTransaction
    commit_started: float = 0.0
    committed: float = 0.0

    def commit(self) -> None:
        self.commit_started = time.time()
        self.transaction.commit()
        self.committed = time.time()
        self.connection.close()


class ScenarioStore:
    """One layout on one database, out of the exporter's reach until ``make_available``."""

    def __init__(self, database: str, layout: str, url: str) -> None:
        self.database = database
        self.layout = layout
        self.name = f"{database}-{layout.replace('_', '-')}"
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.proxy: TcpProxy | None = None
        self._staged: Path | None = None
        if database == "sqlite":
            # Down at start = the file is not there yet; it is moved into place to come up.
            path = Path(str(sa.make_url(url).database))
            self._staged = path.with_name(path.name + ".staged")
            self.engine = sa.create_engine(f"sqlite:///{self._staged}")
            self.exporter_url = url
        else:
            parsed = sa.make_url(url)
            self.proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 0))
            self.proxy.refuse()
            self.exporter_url = parsed.set(host="127.0.0.1", port=self.proxy.port).render_as_string(
                hide_password=False
            )
        self.writer = Writer(self)
        self.slow: list[SlowTransaction] = []

    @property
    def concurrent_writers(self) -> bool:
        """SQLite serializes writers: nothing commits out of order there."""
        return self.database != "sqlite"

    def exporter_settings(self) -> dict[str, Any]:
        return STATUS_MAPPING if self.layout == STATUS_TABLE else {}

    def prepare(self) -> None:
        """Tables, and history the exporter must never count: hours old, and seconds old."""
        if self.database == "sqlite":
            with self.engine.begin() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        if self.layout == THREE_TABLES:
            create_reference_schema(self.engine)
            add_pending(self.engine, 50)
            add_history(self.engine, 2_000, hours=2.0)
            add_history(self.engine, 100, seed=5, hours=0.002)
            add_errors(self.engine, 200, codes=("UNABLE_TO_LOCK_ROW", "DUPLICATE_VALUE"))
            return
        status_metadata.create_all(self.engine)
        now = utcnow()
        rows = []
        for index in range(2_100):
            stamp = now - timedelta(seconds=(index * 3.4) % 7200 + 0.5)
            status = ("synced", "synced", "failed", "pending")[index % 4]
            rows.append(
                {
                    "object_type": OBJECTS[index % 4],
                    "record_id": f"old-{index}",
                    "operation": "insert",
                    "direction": "to_crm",
                    "status": status,
                    "enqueued_at": stamp - timedelta(seconds=30),
                    "synced_at": stamp if status == "synced" else None,
                    "failed_at": stamp if status == "failed" else None,
                    "error_code": "UNABLE_TO_LOCK_ROW" if status == "failed" else None,
                }
            )
        with self.engine.begin() as connection:
            connection.execute(sync_changes.insert(), rows)

    def make_available(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
            return
        assert self._staged is not None
        self.engine.dispose()
        target = Path(str(sa.make_url(self.url).database))
        os.replace(self._staged, target)
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)

    @property
    def available(self) -> bool:
        return self._staged is None or not self._staged.exists()

    def writer_engine(self) -> sa.Engine:
        return sa.create_engine(self.url if self.available else f"sqlite:///{self._staged}")

    # --- what the sync engine does --------------------------------------------------------

    def write(
        self, connection: sa.Connection, tick: int, stamp: datetime, new: bool, every: bool
    ) -> None:
        """Two synced changes and one failed attempt, all stamped ``stamp``.

        With ``every``, one change of every series instead: new series all start at once.
        """
        objects = (*OBJECTS, NEW_OBJECT) if new else OBJECTS
        errors: tuple[tuple[str, str], ...] = (
            ERROR_SERIES + NEW_ERROR_SERIES if new else ERROR_SERIES
        )
        failures: tuple[tuple[str, str], ...]
        if every:
            labels = list(itertools.product(objects, ("insert", "update"), ("to_crm", "from_crm")))
            failures = errors
        else:
            labels = [
                (
                    objects[(2 * tick + index) % len(objects)],
                    ("insert", "update")[(tick + index) % 2],
                    ("to_crm", "from_crm")[(tick // 2 + index) % 2],
                )
                for index in range(2)
            ]
            failures = (errors[tick % len(errors)],)
        synced = [
            {
                "object_type": obj,
                "operation": operation,
                "direction": direction,
                "record_id": f"{tick}-{index}-synced",
                "enqueued_at": stamp - timedelta(seconds=1 + (tick * 7 + index) % 700),
            }
            for index, (obj, operation, direction) in enumerate(labels)
        ]
        failed = [
            {
                "object_type": obj,
                "operation": "insert",
                "direction": "to_crm",
                "record_id": f"{tick}-{index}-failed",
                "enqueued_at": stamp - timedelta(seconds=2),
                "error_code": code,
            }
            for index, (obj, code) in enumerate(failures)
        ]
        if self.layout == THREE_TABLES:
            connection.execute(
                sync_history.insert(), [{**row, "synced_at": stamp} for row in synced]
            )
            connection.execute(
                sync_error.insert(),
                [{**row, "error_message": "failed", "failed_at": stamp} for row in failed],
            )
            connection.execute(sync_queue.insert(), [{**synced[0], "enqueued_at": stamp}])
            return
        # Rows change status in place: this tick's rows are enqueued (the error code of a
        # change that will fail is known: its last attempt's), the previous tick's done.
        pending = [{**row, "error_code": None} for row in synced] + failed
        connection.execute(sync_changes.insert(), [{**row, "status": "pending"} for row in pending])
        for outcome, moment in (("synced", "synced_at"), ("failed", "failed_at")):
            # By primary key: a scan would wait on the rows a slow transaction holds (InnoDB
            # locks every row an UPDATE reads), and the engine would stall with it.
            ids = connection.execute(
                sa.select(sync_changes.c.id).where(
                    sync_changes.c.record_id.like(f"{tick - 1}-%-{outcome}"),
                    sync_changes.c.status == "pending",
                )
            ).scalars()
            connection.execute(
                sync_changes.update()
                .where(sync_changes.c.id.in_(list(ids)))
                .values(status=outcome, **{moment: stamp})
            )

    def open_slow_transaction(self) -> SlowTransaction:
        """Changes stamped now whose transaction stays open: they commit after later ones."""
        tag = str(len(self.slow))
        stamp = utcnow()
        base = {"operation": "update", "direction": "from_crm", "enqueued_at": stamp}
        if self.layout == STATUS_TABLE:
            with self.engine.begin() as connection:
                connection.execute(
                    sync_changes.insert(),
                    [
                        {
                            **base,
                            "object_type": "account",
                            "record_id": f"{SLOW}{tag}-{index}",
                            "status": "pending",
                        }
                        for index in range(3)
                    ],
                )
        # READ COMMITTED, as PostgreSQL's default: InnoDB's REPEATABLE READ would also lock
        # the gaps around these rows, and stall the writer's inserts until the commit.
        connection = self.engine.connect().execution_options(isolation_level="READ COMMITTED")
        transaction = connection.begin()
        if self.layout == THREE_TABLES:
            synced = {**base, "object_type": "account", "synced_at": stamp}
            connection.execute(
                sync_history.insert(),
                [{**synced, "record_id": f"{SLOW}{tag}-{index}"} for index in (0, 1)],
            )
            connection.execute(
                sync_error.insert(),
                [
                    {
                        **base,
                        "object_type": "lead",
                        "operation": "insert",
                        "direction": "to_crm",
                        "record_id": f"{SLOW}{tag}-2",
                        "error_code": "DUPLICATE_VALUE",
                        "error_message": "failed",
                        "failed_at": stamp,
                    }
                ],
            )
        else:
            for index in range(3):
                values: dict[str, Any] = (
                    {"status": "synced", "synced_at": stamp}
                    if index < 2
                    else {"status": "failed", "failed_at": stamp, "error_code": "DUPLICATE_VALUE"}
                )
                if index == 2:
                    values.update(object_type="lead", operation="insert", direction="to_crm")
                connection.execute(
                    sync_changes.update()
                    .where(sync_changes.c.record_id == f"{SLOW}{tag}-{index}")
                    .values(**values)
                )
        slow = SlowTransaction(connection, transaction)
        self.slow.append(slow)
        return slow

    def purge(self, before: datetime) -> None:
        """Retention: the changes synced or failed before ``before`` are deleted."""
        with self.engine.begin() as connection:
            if self.layout == THREE_TABLES:
                connection.execute(sa.delete(sync_history).where(sync_history.c.synced_at < before))
                connection.execute(sa.delete(sync_error).where(sync_error.c.failed_at < before))
            else:
                moment = sa.func.coalesce(sync_changes.c.synced_at, sync_changes.c.failed_at)
                connection.execute(sa.delete(sync_changes).where(moment < before))

    def truncate(self) -> None:
        """Every change table emptied, its ids starting again from 1."""
        tables = (
            ("sync_history", "sync_error") if self.layout == THREE_TABLES else ("sync_changes",)
        )
        with self.engine.begin() as connection:
            for table in tables:
                if self.database == "postgresql":
                    connection.execute(sa.text(f"TRUNCATE {table} RESTART IDENTITY"))
                elif self.database == "sqlite":
                    connection.execute(sa.text(f"DELETE FROM {table}"))
                    connection.execute(
                        sa.text("DELETE FROM sqlite_sequence WHERE name = :table"),
                        {"table": table},
                    )
                else:
                    connection.execute(sa.text(f"TRUNCATE TABLE {table}"))

    # --- what the store says happened -------------------------------------------------------

    def ledger(self, since: datetime) -> list[Change]:
        """Every change stamped since ``since``, with when it became visible."""
        slow = {f"{SLOW}{index}": transaction for index, transaction in enumerate(self.slow)}
        history: Sequence[Any]
        errors: Sequence[Any]
        with self.engine.connect() as connection:
            if self.layout == THREE_TABLES:
                history = connection.execute(
                    sa.select(
                        sync_history.c.synced_at,
                        sync_history.c.object_type,
                        sync_history.c.operation,
                        sync_history.c.direction,
                        sync_history.c.record_id,
                    ).where(sync_history.c.synced_at >= since)
                ).all()
                errors = connection.execute(
                    sa.select(
                        sync_error.c.failed_at,
                        sync_error.c.object_type,
                        sync_error.c.operation,
                        sync_error.c.direction,
                        sync_error.c.record_id,
                        sync_error.c.error_code,
                    ).where(sync_error.c.failed_at >= since)
                ).all()
            else:
                columns = (
                    sync_changes.c.object_type,
                    sync_changes.c.operation,
                    sync_changes.c.direction,
                    sync_changes.c.record_id,
                )
                history = connection.execute(
                    sa.select(sync_changes.c.synced_at, *columns).where(
                        sync_changes.c.status == "synced", sync_changes.c.synced_at >= since
                    )
                ).all()
                errors = connection.execute(
                    sa.select(sync_changes.c.failed_at, *columns, sync_changes.c.error_code).where(
                        sync_changes.c.status == "failed", sync_changes.c.failed_at >= since
                    )
                ).all()
        changes = []
        for kind, rows in (("synced", history), ("errors", errors)):
            for found in rows:
                row: tuple[Any, ...] = tuple(found)
                stamp: datetime = row[0]
                record_id = str(row[4])
                tag = record_id.rsplit("-", 1)[0] if record_id.startswith(SLOW) else None
                if tag is not None:
                    transaction = slow[tag]
                    start, end = transaction.commit_started, transaction.committed
                else:
                    start = epoch(stamp)
                    # Prefilled rows were committed long before anything is measured.
                    end = self.writer.committed.get(micros(stamp), start + 0.5)
                code = str(row[5]) if kind == "errors" else None
                changes.append(
                    Change(kind, start, end, str(row[1]), str(row[2]), str(row[3]), code)
                )
        return changes

    def close(self) -> None:
        self.writer.stop()
        for transaction in self.slow:
            if transaction.connection.closed is False:
                transaction.connection.close()
        if self.proxy is not None:
            self.proxy.close()
        self.engine.dispose()
