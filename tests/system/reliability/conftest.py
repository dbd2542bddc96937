"""Fixtures of the reliability tests: a PostgreSQL server of their own, a read-only role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crmsync_testing.pg_instance import PgInstance, PgStore, reference_store


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


@pytest.fixture
def pg_store(pg: PgInstance) -> PgStore:
    return reference_store(pg)
