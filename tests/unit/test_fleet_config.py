"""The fleet's settings: workers, connections per server, connections kept open."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from crmsync_testing.helpers import parse_config_dict
from exporter.cli import build_runners
from exporter.config import ConfigError
from exporter.connections import ConnectionLimits, server_of
from exporter.sharding import Shard

STORE = {"name": "main", "url": "postgresql+psycopg://exporter@db:5432/sync"}


def test_the_defaults_suit_a_fleet_on_a_small_server() -> None:
    config = parse_config_dict({"stores": [STORE]})
    assert config.collection.workers == 8
    assert config.connections.per_server == 4
    assert config.connections.keep_open_below == 5.0


def test_the_settings_are_read_with_durations() -> None:
    config = parse_config_dict(
        {
            "stores": [STORE],
            "collection": {"workers": 2},
            "connections": {"per_server": 1, "keep_open_below": "1m"},
        }
    )
    assert config.collection.workers == 2
    assert config.connections.per_server == 1
    limits = ConnectionLimits(config.connections.per_server, config.connections.keep_open_below)
    assert limits.keeps([30.0])
    assert not limits.keeps([60.0])
    # Stores sharing an engine: together they start a cycle every 75 s, then every 30 s.
    assert not limits.keeps([150.0, 150.0])
    assert limits.keeps([60.0, 120.0, 120.0])
    assert not ConnectionLimits(4, 0.0).keeps([1.0] * 500)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"collection": {"workers": 0}}, "collection.workers: must be greater than or equal to 1"),
        ({"connections": {"per_server": "many"}}, "connections.per_server: a whole number"),
        ({"connections": {"keep_open_below": "often"}}, "connections.keep_open_below: 'often'"),
        ({"connections": {"per_host": 3}}, "connections.per_host: unknown key"),
    ],
)
def test_bad_settings_name_their_key(section: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_dict({"stores": [STORE], **section})
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("postgresql+psycopg://u@db1/sync", ("db1", 5432)),
        ("postgresql+psycopg://u@db1:6432/sync", ("db1", 6432)),
        ("mysql+pymysql://u@db2/sync", ("db2", 3306)),
        ("mariadb+pymysql://u@db2:3307/sync", ("db2", 3307)),
        ("sqlite:////var/lib/store.db", None),
    ],
)
def test_stores_share_a_cap_by_host_and_port(url: str, server: tuple[str, int] | None) -> None:
    assert server_of(make_url(url)) == server


def test_stores_that_connect_alike_share_an_engine(tmp_path: Path) -> None:
    shared = "postgresql+psycopg://exporter@db:5432/sync"
    sqlite = f"sqlite:///{tmp_path / 'store.db'}"
    config = parse_config_dict(
        {
            "stores": [
                {"name": "a", "url": shared, "schema": "tenant_a"},
                {"name": "b", "url": shared, "schema": "tenant_b", "interval": "1m"},
                {"name": "c", "url": shared, "schema": "tenant_c", "query_timeout": "5s"},
                {"name": "d", "url": "postgresql+psycopg://exporter@db:5432/other"},
                {"name": "e", "url": "postgresql+psycopg://other@db:5432/sync"},
                {"name": "f", "url": sqlite},
                {"name": "g", "url": sqlite},
            ]
        }
    )
    runners = build_runners(config, Shard(), ConnectionLimits(4, 5.0))
    engines = {runner.name: runner.reader.engine for runner in runners}
    try:
        assert engines["a"] is engines["b"]
        # Another query timeout, database or login, or SQLite: an engine of its own.
        others = [engines[name] for name in "cdefg"]
        assert len({id(engine) for engine in [engines["a"], *others]}) == 6
    finally:
        for runner in runners:
            runner.close()
