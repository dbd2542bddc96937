"""A trigger log with an archive, as Heroku Connect documents _trigger_log: a writer for tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import DATETIME


def timestamp_type(aware: bool) -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=aware).with_variant(DATETIME(fsp=6), "mysql", "mariadb")


MESSAGES = {
    "UNABLE_TO_LOCK_ROW: unable to obtain exclusive access to this record": "UNABLE_TO_LOCK_ROW",
    "DUPLICATE_VALUE: duplicate value found: Email__c": "DUPLICATE_VALUE",
    "request timed out": "unknown",
}


def trigger_log_table(metadata: sa.MetaData, name: str, aware: bool) -> sa.Table:
    """A trigger log table with the columns Heroku Connect documents for _trigger_log."""
    stamp = timestamp_type(aware)
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("txid", sa.BigInteger),
        sa.Column("created_at", stamp),
        sa.Column("updated_at", stamp),
        sa.Column("processed_at", stamp),
        sa.Column("processed_tx", sa.BigInteger),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("action", sa.String(7), nullable=False),
        sa.Column("table_name", sa.String(128), nullable=False),
        sa.Column("record_id", sa.BigInteger, nullable=False),
        sa.Column("sfid", sa.String(18)),
        sa.Column("values", sa.Text),
        sa.Column("old", sa.Text),
        sa.Column("sf_message", sa.Text),
        sa.Index(f"ix_{name}_processed_at", "processed_at"),
    )


@contextmanager
def heroku_connect_schema(url: str, schema: str) -> Iterator[tuple[sa.Engine, sa.Table, sa.Table]]:
    """_trigger_log and _trigger_log_archive in a PostgreSQL schema of their own, as Heroku
    Connect keeps them: an engine on ``url`` and the two tables, all dropped afterwards."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        metadata = sa.MetaData(schema=schema)
        log = trigger_log_table(metadata, "_trigger_log", aware=True)
        archive = trigger_log_table(metadata, "_trigger_log_archive", aware=True)
        metadata.create_all(engine)
        yield engine, log, archive
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


FAILURES = (*MESSAGES, "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]")
CODE = {**MESSAGES, FAILURES[-1]: "REQUIRED_FIELD_MISSING"}
SYNCED_STATES = ("SUCCESS",)
OTHER_STATES = ("IGNORED", "MERGED", "READONLY")


@dataclass
class TriggerLog:
    """A sync engine's trigger log: changes captured, processed in place, then archived."""

    engine: sa.Engine
    log: sa.Table
    archive: sa.Table
    rng: random.Random
    next_id: int = 1

    def capture(self, rows: int, stamp: datetime, state: str = "NEW") -> None:
        values = []
        for _ in range(rows):
            values.append(
                {
                    "id": self.next_id,
                    "txid": self.next_id,
                    "created_at": stamp,
                    "updated_at": stamp,
                    "state": state,
                    "action": self.rng.choice(("INSERT", "UPDATE", "DELETE")),
                    "table_name": self.rng.choice(("lead", "contact", "account")),
                    "record_id": self.rng.randrange(1, 500),
                    "values": '"email"=>"jane@example.com"',
                }
            )
            self.next_id += 1
        with self.engine.begin() as connection:
            connection.execute(self.log.insert(), values)

    def ids(self, table: sa.Table, *states: str) -> list[int]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(table.c.id).where(table.c.state.in_(states)).order_by(table.c.id)
                ).scalars()
            )

    def process(self, share: float, stamp: datetime) -> None:
        """Take new changes up, and finish some pending ones: synced, failed or ignored."""
        log = self.log
        with self.engine.begin() as connection:
            for row_id in self.ids(log, "PENDING"):
                if self.rng.random() < share:
                    state = self.rng.choice(("SUCCESS", "SUCCESS", "SUCCESS", "FAILED", "IGNORED"))
                    message = self.rng.choice(FAILURES) if state == "FAILED" else None
                    connection.execute(
                        log.update()
                        .where(log.c.id == row_id)
                        .values(
                            state=state,
                            processed_at=stamp,
                            updated_at=stamp,
                            processed_tx=row_id,
                            sf_message=message,
                        )
                    )
            connection.execute(
                log.update().where(log.c.state == "NEW").values(state="PENDING", updated_at=stamp)
            )

    def archive_processed(self, share: float) -> None:
        """Move some processed rows, with their ids and stamps, to the archive."""
        log, archive = self.log, self.archive
        done = [
            row_id
            for row_id in self.ids(log, *SYNCED_STATES, "FAILED", *OTHER_STATES)
            if self.rng.random() < share
        ]
        if not done:
            return
        with self.engine.begin() as connection:
            connection.execute(
                archive.insert().from_select(
                    [c.name for c in log.columns], sa.select(log).where(log.c.id.in_(done))
                )
            )
            connection.execute(log.delete().where(log.c.id.in_(done)))

    def history_before(self, hour_start: datetime) -> None:
        """Rows processed in the previous full hour and before, some of them archived."""
        for minutes in range(0, 180, 7):
            stamp = hour_start + timedelta(minutes=60 - minutes)
            self.capture(4, stamp - timedelta(minutes=2), state="PENDING")
            self.process(1.0, stamp)
            if minutes % 2:
                self.archive_processed(0.7)
