"""Shared fixtures (a fresh, empty database on SQLite, PostgreSQL and MariaDB per test) and the
kind of each test, from its directory: unit, integration or system."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crmsync_testing.servers import mariadb_database, postgres_schema

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind, the first directory under tests/ (``-m unit``)."""
    for item in items:
        kind = item.path.resolve().relative_to(TESTS).parts[0]
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(KINDS)}}}/")
        item.add_marker(kind)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a schema of its own, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A URL naming a database of its own, dropped afterwards."""
    with mariadb_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The same test on each supported database."""
    name = {"sqlite": "sqlite_url", "postgresql": "postgres_url", "mariadb": "mariadb_url"}
    return str(request.getfixturevalue(name[request.param]))
