"""Dozens of stores per server: connections within the cap, a full server, shutdown in time.

Connections are counted from the servers' own views (pg_stat_activity, the processlist),
for a login of the test's own, sampled in a thread and asserted in the test's.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, metric, up
from crmsync_testing.helpers import add_pending, by_name
from crmsync_testing.pg_instance import PgInstance
from crmsync_testing.servers import MARIADB_ADMIN, POSTGRES_ADMIN, server_engine
from exporter.schema import create_reference_schema

CAP = 3
TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :l"


def admin_engine(url: str, what: str) -> sa.Engine:
    return server_engine(url, what).execution_options(isolation_level="AUTOCOMMIT")


@dataclass
class Fleet:
    """Stores of one server, read by a login of their own; ``pending`` as SQL counted it."""

    login: str
    urls: dict[str, str] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    admin: sa.Engine | None = None
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """A store's settings besides its URL."""

    def sessions(self) -> int:
        raise NotImplementedError

    def stores(self, **settings: Any) -> list[dict[str, Any]]:
        return [
            {"name": name, "url": url, **self.settings.get(name, {}), **settings}
            for name, url in self.urls.items()
        ]


class PgFleet(Fleet):
    def sessions(self) -> int:
        assert self.admin is not None
        with self.admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE usename = :login"),
                    {"login": self.login},
                ).scalar_one()
            )

    def active(self, like: str) -> int:
        assert self.admin is not None
        with self.admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = :login "
                        "AND state = 'active' AND query LIKE :like"
                    ),
                    {"login": self.login, "like": f"%{like}%"},
                ).scalar_one()
            )

    def kill_sessions(self) -> None:
        assert self.admin is not None
        with self.admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :l"
                ),
                {"l": self.login},
            )


class MariaFleet(Fleet):
    def sessions(self) -> int:
        assert self.admin is not None
        with self.admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = :l"),
                    {"l": self.login},
                ).scalar_one()
            )

    def active(self, like: str) -> int:
        assert self.admin is not None
        with self.admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = :l "
                        "AND COMMAND = 'Query' AND INFO LIKE :like"
                    ),
                    {"l": self.login, "like": f"%{like}%"},
                ).scalar_one()
            )

    def kill_sessions(self) -> None:
        assert self.admin is not None
        with self.admin.connect() as connection:
            ids = connection.execute(
                sa.text("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = :l"),
                {"l": self.login},
            ).scalars()
            for session in list(ids):
                with contextlib.suppress(sa.exc.DBAPIError):  # ended meanwhile
                    connection.execute(sa.text(f"KILL CONNECTION {int(session)}"))


def fill(url: str, rows: int) -> int:
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_pending(engine, rows, seed=rows)
    with engine.connect() as connection:
        count = int(connection.execute(sa.text("SELECT count(*) FROM sync_queue")).scalar_one())
    engine.dispose()
    return count


@contextlib.contextmanager
def pg_fleet(count: int, admin_url: str = POSTGRES_ADMIN, slow: bool = False) -> Iterator[PgFleet]:
    """``count`` stores, one schema each, on a PostgreSQL server; a login that reads them."""
    admin = admin_engine(admin_url, "PostgreSQL")
    tag = secrets.token_hex(4)
    fleet = PgFleet(login=f"crmsync_fleet_{tag}", admin=admin)
    password = f"pw-{secrets.token_hex(8)}"
    server = sa.make_url(admin_url)
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {fleet.login} LOGIN PASSWORD '{password}'"))
    schemas = [f"crmsync_t_{tag}_{number}" for number in range(count)]
    try:
        for number, schema in enumerate(schemas):
            with admin.connect() as connection:
                connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
            options = {"options": f"-csearch_path={schema}"}
            owner = server.update_query_dict(options).render_as_string(hide_password=False)
            fleet.pending[f"pg{number}"] = fill(owner, number + 1)
            statements = [f"GRANT USAGE ON SCHEMA {schema} TO {fleet.login}"]
            if slow:
                statements.append(
                    f"CREATE VIEW {schema}.slow_queue AS SELECT q.* FROM {schema}.sync_queue q, "
                    "(SELECT pg_sleep(60)) AS s"
                )
            statements.append(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {fleet.login}")
            with admin.connect() as connection:
                for statement in statements:
                    connection.execute(sa.text(statement))
            reader = server.set(username=fleet.login, password=password)
            if number % 2:
                reader = reader.update_query_dict(options)
            else:
                # Half the stores name their schema in the configuration: with the same URL,
                # they share one engine and its connections.
                fleet.settings[f"pg{number}"] = {"schema": schema}
            fleet.urls[f"pg{number}"] = reader.render_as_string(hide_password=False)
        yield fleet
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :l"
                ),
                {"l": fleet.login},
            )
            for schema in schemas:
                connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            connection.execute(sa.text(f"DROP ROLE {fleet.login}"))
        admin.dispose()


@contextlib.contextmanager
def mariadb_fleet(count: int, slow: bool = False) -> Iterator[MariaFleet]:
    """``count`` stores, one database each, on MariaDB; a login that reads them."""
    admin = admin_engine(MARIADB_ADMIN, "MariaDB")
    tag = secrets.token_hex(4)
    fleet = MariaFleet(login=f"crmsync_fl_{tag}", admin=admin)
    password = f"pw-{secrets.token_hex(8)}"
    server = sa.make_url(MARIADB_ADMIN)
    databases = [f"crmsync_t_{tag}_{number}" for number in range(count)]
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE USER '{fleet.login}'@'%' IDENTIFIED BY '{password}'"))
    try:
        for number, database in enumerate(databases):
            with admin.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE {database}"))
                if slow:
                    pass
            owner = server.set(database=database).render_as_string(hide_password=False)
            fleet.pending[f"maria{number}"] = fill(owner, number + 1)
            with admin.connect() as connection:
                if slow:
                    connection.execute(
                        sa.text(
                            f"CREATE VIEW {database}.slow_queue AS SELECT q.* FROM "
                            f"{database}.sync_queue q WHERE SLEEP(60) = 0"
                        )
                    )
                connection.execute(sa.text(f"GRANT SELECT ON {database}.* TO '{fleet.login}'@'%'"))
            reader = server.set(username=fleet.login, password=password, database=database)
            fleet.urls[f"maria{number}"] = reader.render_as_string(hide_password=False)
        yield fleet
    finally:
        fleet.kill_sessions()
        with admin.connect() as connection:
            for database in databases:
                connection.execute(sa.text(f"DROP DATABASE IF EXISTS {database}"))
            connection.execute(sa.text(f"DROP USER '{fleet.login}'@'%'"))
        admin.dispose()


class Sampler:
    """Counts each fleet's sessions, as its server sees them, until stopped."""

    def __init__(self, fleets: dict[str, Fleet]) -> None:
        self.samples: dict[str, list[int]] = {name: [] for name in fleets}
        self.errors: list[str] = []
        self._fleets = fleets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, fleet in self._fleets.items():
                try:
                    self.samples[name].append(fleet.sessions())
                except sa.exc.DBAPIError as error:
                    self.errors.append(str(error.orig))
            self._stop.wait(0.01)

    def stop(self) -> dict[str, list[int]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def write_fleet_config(path: Path, stores: list[dict[str, Any]], **top: Any) -> Path:
    path.write_text(json.dumps({"stores": stores, **top}))  # JSON is YAML
    return path


def all_up(expected: dict[str, float]) -> Callable[[Any], bool]:
    return lambda result: all(up(result, name) == value for name, value in expected.items())


@pytest.mark.parametrize("keep_open_below", ["10s", "0s"], ids=["kept-open", "closed-each-cycle"])
def test_connections_to_each_server_stay_within_the_cap(
    tmp_path: Path, keep_open_below: str
) -> None:
    with pg_fleet(20) as pg, mariadb_fleet(20) as maria:
        fleets: dict[str, Fleet] = {"postgresql": pg, "mariadb": maria}
        # Four stores of each server fail every cycle (their tables are gone) and reconnect.
        broken = ["pg0", "pg1", "pg2", "pg3", "maria0", "maria1", "maria2", "maria3"]
        stores = pg.stores(interval="500ms") + maria.stores(interval="500ms")
        for store in stores:
            if store["name"] in broken:
                store["mapping"] = {"queue": {"table": "no_such_queue"}}
        config = write_fleet_config(
            tmp_path / "fleet.yml",
            stores,
            collection={"workers": 8},
            connections={"per_server": CAP, "keep_open_below": keep_open_below},
        )
        sampler = Sampler(fleets)
        exporter = Exporter(config)
        try:
            exporter.wait_serving()
            expected = {name: 1.0 for name in {**pg.urls, **maria.urls}}
            expected.update(dict.fromkeys(broken, 0.0))
            _, settled = exporter.wait_until(all_up(expected), seconds=60)
            # Failures on top: every session of the login killed, over and over, while the
            # stores reconnect.
            for _ in range(20):
                pg.kill_sessions()
                maria.kill_sessions()
                time.sleep(0.1)
            _, recovered = exporter.wait_until(all_up(expected), seconds=60)
            before = metric(recovered, "crmsync_collections_total", store="pg10") or 0
            exporter.wait_until(
                lambda r: (metric(r, "crmsync_collections_total", store="pg10") or 0) > before + 3
            )
            final = exporter.scrape()
        finally:
            samples = sampler.stop()
            exporter.stop()

    for name, counts in samples.items():
        print(
            f"\nMEASURED {name} sessions ({keep_open_below}): peak {max(counts, default=0)} "
            f"of cap {CAP} in {len(counts)} samples"
        )
        assert counts, f"no sample of {name}"
        assert max(counts) <= CAP, (name, max(counts))
        assert max(counts) >= 1, f"{name}: the exporter was never seen connected"
    # What the stores that can be read report is what SQL counted.
    pending = by_name(final, "crmsync_pending_records")
    for name, count in {**pg.pending, **maria.pending}.items():
        served = sum(value for labels, value in pending.items() if ("store", name) in labels)
        assert served == (0 if name in broken else count), (
            f"{name}: pending {served}, SQL {count}; up {up(final, name)}, collections "
            f"{metric(final, 'crmsync_collections_total', store=name)}, failures "
            f"{metric(final, 'crmsync_collection_failures_total', store=name)} "
            f"({metric(recovered, 'crmsync_collection_failures_total', store=name)} when all "
            f"were up); warnings: {[e for e in exporter.logs() if e.get('store') == name][-3:]}"
        )
    for name in broken:
        assert (metric(final, "crmsync_collection_failures_total", store=name) or 0) >= 2
    assert metric(settled, "crmsync_collection_start_delay_seconds", store="pg5") is not None


def fill_connections(server: PgInstance, login: str, password: str) -> list[psycopg.Connection]:
    """Connections of another client until the server refuses more."""
    held: list[psycopg.Connection] = []
    while True:
        try:
            held.append(
                psycopg.connect(
                    host="127.0.0.1",
                    port=server.port,
                    user=login,
                    password=password,
                    dbname="postgres",
                    connect_timeout=5,
                )
            )
        except psycopg.OperationalError as error:
            refused = str(error)
            break
        assert len(held) < 50, "the server never refused"
    assert "too many clients" in refused or "reserved" in refused, refused
    return held


def test_a_full_server_fails_its_own_stores_only(tmp_path: Path) -> None:
    full = PgInstance({"max_connections": "8", "superuser_reserved_connections": "2"})
    try:
        filler, password = "other_client", "pw-other"
        full.execute("postgres", [f"CREATE ROLE {filler} LOGIN PASSWORD '{password}'"])
        with pg_fleet(6, full.url()) as crowded, pg_fleet(6) as spared:
            crowded.urls = {f"full{n}": url for n, url in enumerate(crowded.urls.values())}
            crowded.pending = {f"full{n}": c for n, c in enumerate(crowded.pending.values())}
            crowded.settings = {
                name.replace("pg", "full"): value for name, value in crowded.settings.items()
            }
            held = fill_connections(full, filler, password)
            config = write_fleet_config(
                tmp_path / "fleet.yml",
                crowded.stores(interval="500ms") + spared.stores(interval="500ms"),
                collection={"workers": 4},
                connections={"per_server": 2},
            )
            exporter = Exporter(config)
            try:
                exporter.wait_serving()
                expected = dict.fromkeys(crowded.urls, 0.0) | dict.fromkeys(spared.urls, 1.0)
                _, crowded_out = exporter.wait_until(all_up(expected), seconds=60)
                # The other server's stores keep being collected meanwhile.
                counts = {
                    name: metric(crowded_out, "crmsync_collections_total", store=name) or 0
                    for name in spared.urls
                }
                _, later = exporter.wait_until(
                    lambda r: all(
                        (metric(r, "crmsync_collections_total", store=name) or 0) > count + 2
                        for name, count in counts.items()
                    )
                )
                assert all_up(expected)(later)
                assert crowded.sessions() == 0
                errors = [
                    entry.get("error", "")
                    for entry in exporter.logs()
                    if entry.get("msg") == "collection failed"
                ]
                assert any("too many clients" in error or "reserved" in error for error in errors)

                for connection in held:
                    connection.close()
                _, recovered = exporter.wait_until(
                    all_up(dict.fromkeys({**crowded.urls, **spared.urls}, 1.0)), seconds=60
                )
            finally:
                exporter.stop()
                for connection in held:
                    connection.close()
            pending = by_name(recovered, "crmsync_pending_records")
            for name, count in {**crowded.pending, **spared.pending}.items():
                served = sum(v for labels, v in pending.items() if ("store", name) in labels)
                assert served == count, name
    finally:
        full.destroy()


def test_shutdown_with_stores_hanging_in_slow_statements(tmp_path: Path) -> None:
    with pg_fleet(12, slow=True) as pg, mariadb_fleet(12, slow=True) as maria:
        slow = {"mapping": {"queue": {"table": "slow_queue"}}, "query_timeout": "120s"}
        config = write_fleet_config(
            tmp_path / "fleet.yml",
            pg.stores(**slow) + maria.stores(**slow),
            collection={"workers": 8},
            connections={"per_server": CAP},
        )
        exporter = Exporter(config)
        try:
            exporter.wait_serving()
            deadline = time.monotonic() + 60
            while pg.active("slow_queue") < CAP or maria.active("slow_queue") < CAP:
                assert time.monotonic() < deadline, "the stores never reached the slow statement"
                time.sleep(0.1)
            signalled = time.monotonic()
            exporter.process.terminate()
            returncode = exporter.process.wait(timeout=30)
            elapsed = time.monotonic() - signalled
        finally:
            exporter.stop()
        print(
            f"\nMEASURED SIGTERM to exit, 24 stores, {2 * CAP} in slow statements: {elapsed:.2f}s"
        )
        assert returncode == 0, exporter.output()
        assert elapsed < 5.0, elapsed
        # PostgreSQL was asked to cancel: its sessions end with the process, not a minute on.
        deadline = time.monotonic() + 3
        while pg.sessions():
            assert time.monotonic() < deadline, "PostgreSQL sessions outlived the exporter"
            time.sleep(0.05)
        print(
            f"\nMEASURED PostgreSQL sessions gone after exit: {pg.sessions()}; MariaDB "
            f"sessions still in SLEEP(): {maria.active('slow_queue')}"
        )
