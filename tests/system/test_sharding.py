"""Sharding: N exporters with --shard.index/--shard.count split one configuration, each store
collected by exactly one of them, the same way in every process."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, write_config
from crmsync_testing.helpers import Samples, add_pending, by_name, parse_config_dict
from exporter.schema import create_reference_schema
from exporter.sharding import Shard, shard_of

# Names as fleets have them: customers, regions, CRM orgs, some much alike.
NAMES = [
    *(f"customer-{number:03d}" for number in range(40)),
    *(
        "emea",
        "apac",
        "amer",
        "emea-2",
        "EMEA",
        "crm.org:7",
        "org_00D5e",
        "sync.eu-west-1",
        "a",
        "main",
    ),
]


def test_names_are_fifty_distinct_stores() -> None:
    config = parse_config_dict({"stores": [{"name": n, "url": "sqlite://"} for n in NAMES]})
    assert len(config.stores) == len(set(NAMES)) == 50


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 10, 16, 50, 64])
def test_shards_cover_every_store_exactly_once(count: int) -> None:
    config = parse_config_dict({"stores": [{"name": n, "url": "sqlite://"} for n in NAMES]})
    kept = [
        store.name for index in range(count) for store in Shard(index, count).select(config.stores)
    ]
    assert sorted(kept) == sorted(NAMES)
    # And each shard keeps the stores in the configuration's order.
    for index in range(count):
        names = [store.name for store in Shard(index, count).select(config.stores)]
        assert names == [name for name in NAMES if name in names]


def test_a_shard_is_the_first_eight_bytes_of_the_names_sha256_modulo_the_count() -> None:
    # Written down so that a change of the rule, which would move stores between running
    # replicas, cannot go unnoticed.
    for name in NAMES:
        number = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16)
        for count in (2, 3, 7, 50):
            assert shard_of(name, count) == number % count


def test_every_process_puts_a_store_in_the_same_shard() -> None:
    # str hashes differ per process (PYTHONHASHSEED); the shard must not.
    code = (
        "import json, sys; from exporter.sharding import shard_of; "
        "print(json.dumps([shard_of(n, 7) for n in json.loads(sys.argv[1])]))"
    )
    expected = [shard_of(name, 7) for name in NAMES]
    for seed in ("1", "2", "random"):
        result = subprocess.run(
            [sys.executable, "-c", code, json.dumps(NAMES)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(result.stdout) == expected


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--shard.count", "0"],
            "--shard.index 0 --shard.count 0: the count must be at least 1, got 0",
        ),
        (
            ["--shard.count", "-2"],
            "--shard.index 0 --shard.count -2: the count must be at least 1, got -2",
        ),
        (
            ["--shard.index", "3", "--shard.count", "3"],
            "--shard.index 3 --shard.count 3: the index must be from 0 to 2, got 3",
        ),
        (
            ["--shard.index", "-1", "--shard.count", "3"],
            "--shard.index -1 --shard.count 3: the index must be from 0 to 2, got -1",
        ),
        (
            ["--shard.index", "1"],
            "--shard.index 1 --shard.count 1: the index must be from 0 to 0, got 1",
        ),
        (["--shard.index", "one"], "--shard.index 'one': expected a whole number"),
        (["--shard.count", "2.5"], "--shard.count '2.5': expected a whole number"),
        (
            ["--shard.index", "$(SHARD_INDEX)", "--shard.count", "3"],
            "--shard.index '$(SHARD_INDEX)': expected a whole number (Kubernetes leaves $(NAME) "
            "as it is when the container has no variable NAME)",
        ),
    ],
)
def test_bad_shard_flags_are_one_line_and_exit_1(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    config = write_config(tmp_path / "config.yml", [{"name": "main", "url": "sqlite://"}])
    for mode in (["--config.check"], ["--web.listen-address", "127.0.0.1:0"]):
        result = run_cli("--config.file", str(config), *flags, *mode)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [f"crmsync-exporter: {message}"]


def test_config_check_names_the_stores_of_the_shard(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.yml", [{"name": name, "url": "sqlite://"} for name in NAMES]
    )
    mine = [name for name in NAMES if shard_of(name, 4) == 2]

    result = run_cli(
        "--config.file", str(config), "--config.check", "--shard.index=2", "--shard.count=4"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{config}: valid, 50 store(s): {', '.join(NAMES)}",
        f"shard 2 of 4: {len(mine)} store(s): {', '.join(mine)}",
    ]


def test_config_check_of_a_shard_checks_only_its_stores(tmp_path: Path) -> None:
    # A store of another shard whose password variable this replica lacks is not its concern.
    theirs = next(name for name in NAMES if shard_of(name, 2) == 1)
    mine = next(name for name in NAMES if shard_of(name, 2) == 0)
    config = write_config(
        tmp_path / "config.yml",
        [
            {"name": mine, "url": "sqlite://"},
            {"name": theirs, "url": "postgresql+psycopg://u@h/db", "password_env": "NO_SUCH_VAR"},
        ],
    )
    common = ("--config.file", str(config), "--config.check", "--shard.count=2")
    assert run_cli(*common, "--shard.index=0").returncode == 0
    other = run_cli(*common, "--shard.index=1")
    assert other.returncode == 1
    assert "NO_SUCH_VAR is not set" in other.stderr


def make_stores(directory: Path, names: list[str]) -> dict[str, int]:
    """A SQLite reference store per name with its own backlog; the backlog sizes by name."""
    backlog = {}
    for number, name in enumerate(names):
        engine = sa.create_engine(f"sqlite:///{directory / f'store{number}.db'}")
        create_reference_schema(engine)
        add_pending(engine, 3 + number, seed=number)
        with engine.connect() as connection:
            backlog[name] = connection.execute(
                sa.text("SELECT count(*) FROM sync_queue")
            ).scalar_one()
        engine.dispose()
    return backlog


def all_up(stores: set[str], result: Samples) -> bool:
    """Exactly ``stores`` are served, each read."""
    up = {dict(labels)["store"]: value for labels, value in by_name(result, "crmsync_up").items()}
    return up == dict.fromkeys(stores, 1.0)


def test_each_exporter_serves_exactly_the_stores_of_its_shard(tmp_path: Path) -> None:
    names = NAMES[38:47]  # nine stores
    backlog = make_stores(tmp_path, names)
    stores = [
        {"name": name, "url": f"sqlite:///{tmp_path / f'store{number}.db'}", "interval": "1s"}
        for number, name in enumerate(names)
    ]
    count = 3
    exporters = [
        # One file each: an exporter's log is written next to its configuration.
        Exporter(
            write_config(tmp_path / f"shard{index}.yml", stores),
            ["--shard.index", str(index), "--shard.count", str(count)],
        )
        for index in range(count)
    ]
    try:
        served: list[str] = []
        for index, exporter in enumerate(exporters):
            exporter.wait_serving()
            expected = {name for name in names if shard_of(name, count) == index}
            _, result = exporter.wait_until(functools.partial(all_up, expected))
            pending: dict[str, float] = {}
            for labels, value in by_name(result, "crmsync_pending_records").items():
                store = dict(labels)["store"]
                pending[store] = pending.get(store, 0.0) + value
            assert pending == {name: backlog[name] for name in expected}
            assert by_name(result, "crmsync_shard_info") == {
                frozenset({("index", str(index)), ("count", str(count))}): 1.0
            }
            kept = [line for line in exporter.logs() if str(line.get("msg", "")).startswith("kept")]
            assert [line["msg"] for line in kept] == [f"kept {len(expected)} of 9 stores"]
            assert (kept[0]["shard_index"], kept[0]["shard_count"]) == (index, count)
            served += sorted(expected)
        assert sorted(served) == sorted(names)
    finally:
        for exporter in exporters:
            exporter.stop()


def test_an_empty_shard_serves_its_self_metrics_and_is_ready(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yml", [{"name": "main", "url": "sqlite://"}])
    index = (shard_of("main", 5) + 1) % 5
    exporter = Exporter(config, [f"--shard.index={index}", "--shard.count=5"])
    try:
        exporter.wait_serving()
        result = exporter.scrape()
        assert by_name(result, "crmsync_up") == {}
        assert by_name(result, "crmsync_shard_info") == {
            frozenset({("index", str(index)), ("count", "5")}): 1.0
        }
        assert by_name(result, "crmsync_build_info")
        assert exporter.get("/-/ready") == (200, b"OK\n")
        warnings = [line for line in exporter.logs() if line.get("level") == "warning"]
        assert [line["msg"] for line in warnings] == ["kept 0 of 1 stores"]
    finally:
        assert exporter.stop() == 0
