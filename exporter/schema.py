"""The reference sync store: its three tables and the indexes the exporter's queries use."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy.engine import Engine

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
_Id = BigInteger().with_variant(Integer(), "sqlite")
# Microsecond precision on MySQL/MariaDB too (their DATETIME defaults to whole seconds).
_Timestamp = DateTime(timezone=False).with_variant(DATETIME(fsp=6), "mysql", "mariadb")

metadata = MetaData()

sync_queue = Table(
    "sync_queue",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("object_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("enqueued_at", _Timestamp, nullable=False),
    # Covers the backlog aggregate: count and min(enqueued_at) per group, read from the index.
    Index("ix_sync_queue_backlog", "object_type", "operation", "direction", "enqueued_at"),
)

sync_history = Table(
    "sync_history",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("object_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("enqueued_at", _Timestamp, nullable=False),
    Column("synced_at", _Timestamp, nullable=False),
    # The "last full hour" count reads one hour of this index and nothing else.
    Index("ix_sync_history_synced_at", "synced_at", "object_type", "direction"),
    # SQLite would otherwise reuse the highest id after a delete: ids here only grow.
    sqlite_autoincrement=True,
)

sync_error = Table(
    "sync_error",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("object_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("record_name", String(255), nullable=True),
    Column("error_code", String(64), nullable=False),
    Column("error_message", Text(), nullable=False),
    Column("failed_at", _Timestamp, nullable=False),
    # The error browser pages through time, newest first.
    Index("ix_sync_error_failed_at", "failed_at"),
    sqlite_autoincrement=True,
)


def create_reference_schema(engine: Engine) -> None:
    """Create the three tables and their indexes where they do not exist yet."""
    metadata.create_all(engine, checkfirst=True)
