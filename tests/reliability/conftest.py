"""Fixtures of the reliability tests: a PostgreSQL server of their own, a read-only role."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from exporter.schema import create_reference_schema
from tests.reliability.pg_instance import PgInstance

READ_ONLY_GRANTS = (
    "GRANT CONNECT ON DATABASE {database} TO {role}",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON sync_queue, sync_history, sync_error TO {role}",
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgInstance]:
    server = PgInstance()
    yield server
    server.destroy()


@pytest.fixture
def pg(pg_server: PgInstance) -> PgInstance:
    """The tests' own server, running (a test before may have stopped it)."""
    if not pg_server.running():
        pg_server.start()
    return pg_server


@dataclass(frozen=True)
class PgStore:
    """A reference store in a database of its own, and a role that may only read it."""

    server: PgInstance
    database: str
    role: str
    password: str

    @property
    def admin_url(self) -> str:
        return self.server.url(self.database)

    @property
    def reader_url(self) -> str:
        """The exporter's URL, with the read-only role's password in it."""
        return self.server.url(self.database, self.role, self.password)

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.admin_url, pool_pre_ping=True)


@pytest.fixture
def pg_store(pg: PgInstance) -> PgStore:
    database = pg.create_database()
    role = f"reader_{database.removeprefix('store_')}"
    password = f"pw-{secrets.token_hex(8)}"
    engine = sa.create_engine(pg.url(database))
    create_reference_schema(engine)
    engine.dispose()
    pg.execute(
        database,
        [
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
            *(grant.format(database=database, role=role) for grant in READ_ONLY_GRANTS),
        ],
    )
    return PgStore(pg, database, role, password)
