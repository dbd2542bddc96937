"""/-/ready: 503 until every store has been collected once or has failed once, then 200."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, up, write_config
from crmsync_testing.helpers import add_pending, by_name
from crmsync_testing.tcp_proxy import TcpProxy
from exporter.schema import create_reference_schema


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that completes TCP handshakes and then never says a word (nobody accepts)."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield int(listener.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reference_store(url: str, pending: int) -> int:
    """A reference store with ``pending`` queued changes; their count, as SQL reads it."""
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_pending(engine, pending)
    with engine.connect() as connection:
        count = int(connection.execute(sa.text("SELECT count(*) FROM sync_queue")).scalar_one())
    engine.dispose()
    return count


def ready_status(exporter: Exporter, headers: dict[str, str] | None = None) -> int:
    return exporter.get("/-/ready", headers=headers)[0]


def wait_ready(exporter: Exporter, seconds: float = 30.0) -> list[int]:
    """Poll /-/ready until it says 200; every status it gave on the way."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses.append(ready_status(exporter))
        if statuses[-1] == 200:
            return statuses
        time.sleep(0.05)
    raise AssertionError(f"/-/ready never said 200 within {seconds}s: {statuses[-5:]}")


def test_ready_once_every_store_answered_or_failed(tmp_path: Path, black_hole: int) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    pending = reference_store(url, 12)
    # "silent" connects, then hears nothing until the proxy drops the connection: its first
    # collection fails when the test says so.
    proxy = TcpProxy(("127.0.0.1", black_hole))
    dead = "postgresql+psycopg://exporter@127.0.0.1:{}/sync"
    config = write_config(
        tmp_path / "config.yml",
        [
            {"name": "answers", "url": url, "interval": "1s"},
            {"name": "refused", "url": dead.format(closed_port()), "interval": "1s"},
            {"name": "silent", "url": dead.format(proxy.port), "query_timeout": "30s"},
        ],
    )
    exporter = Exporter(config)
    try:
        exporter.wait_serving()
        # The other two are read (or refused) at once; "silent" still waits.
        exporter.wait_until(lambda r: up(r, "answers") == 1.0 and up(r, "refused") == 0.0)
        for _ in range(5):
            assert ready_status(exporter) == 503
            time.sleep(0.1)

        proxy.refuse()
        wait_ready(exporter)
        ready = exporter.scrape()
        assert {name: up(ready, name) for name in ("answers", "refused", "silent")} == {
            "answers": 1.0,
            "refused": 0.0,
            "silent": 0.0,
        }
        failures = by_name(ready, "crmsync_collection_failures_total")
        assert failures[frozenset({("store", "silent")})] == 1
        assert sum(by_name(ready, "crmsync_pending_records").values()) == pending
        # Ready stays ready while stores keep failing: crmsync_up tells which.
        for _ in range(5):
            assert ready_status(exporter) == 200
            time.sleep(0.2)
        assert exporter.get("/-/healthy") == (200, b"OK\n")
    finally:
        exporter.stop()
        proxy.close()


def test_a_slow_first_collection_keeps_the_exporter_unready(
    tmp_path: Path, postgres_url: str
) -> None:
    pending = reference_store(postgres_url, 7)
    server = sa.make_url(postgres_url)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432))
    proxy.stall()
    behind_proxy = server.set(host="127.0.0.1", port=proxy.port)
    config = write_config(
        tmp_path / "config.yml",
        [
            {
                "name": "main",
                "url": behind_proxy.render_as_string(hide_password=False),
                "interval": "1s",
                "query_timeout": "30s",  # the stalled connection outlasts the test's wait
            }
        ],
    )
    exporter = Exporter(config)
    try:
        exporter.wait_serving()
        stalled_until = time.monotonic() + 1.5
        while time.monotonic() < stalled_until:
            assert exporter.get("/-/ready") == (
                503,
                b"Not ready: a store has not been collected yet\n",
            )
            # Alive, and /metrics answers meanwhile.
            assert exporter.get("/-/healthy")[0] == 200
            assert up(exporter.scrape()) in (None, 0.0)
            time.sleep(0.1)

        proxy.restore()
        wait_ready(exporter)
        ready = exporter.scrape()
        assert up(ready) == 1.0
        assert sum(by_name(ready, "crmsync_pending_records").values()) == pending
    finally:
        exporter.stop()
        proxy.close()


def test_ready_asks_for_the_same_credentials_as_everything_else(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    reference_store(url, 1)
    config = write_config(tmp_path / "config.yml", [{"name": "main", "url": url}])
    hashed = bcrypt.hashpw(b"probe-pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  probe: '{hashed}'\n")
    good = {"Authorization": "Basic " + base64.b64encode(b"probe:probe-pw").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"probe:wrong").decode()}
    exporter = Exporter(config, ["--web.config.file", str(web)])
    try:
        exporter.wait_serving()
        deadline = time.monotonic() + 30
        while ready_status(exporter, good) != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        for path in ("/-/ready", "/-/healthy"):
            assert exporter.get(path)[0] == 401
            assert exporter.get(path, headers=bad)[0] == 401
            assert exporter.get(path, headers=good) == (200, b"OK\n")
    finally:
        exporter.stop()
