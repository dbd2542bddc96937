"""Configuration: defaults that fit the reference store, and every mistake named by key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_config

MINIMAL = """
stores:
  - name: main
    url: postgresql+psycopg://exporter@db:5432/sync
"""


def test_the_minimal_configuration_describes_the_reference_store() -> None:
    store = parse_config(MINIMAL).stores[0]
    assert store.interval == 15.0
    assert store.objects == ("lead", "contact", "account", "opportunity")
    assert store.mapping.queue.table == "sync_queue"
    assert store.mapping.history is not None
    assert store.mapping.history.synced_at == "synced_at"
    assert store.mapping.errors is not None
    assert store.mapping.errors.error_code == "error_code"
    assert store.mapping.single_table is None


def test_the_configuration_is_immutable() -> None:
    store = parse_config(MINIMAL).stores[0]
    with pytest.raises(ValueError, match="frozen"):
        store.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "(top level): expected a mapping"),
        ("stores: [", "YAML syntax at line 1"),
        ("- a\n- b\n", "(top level): expected a mapping"),
        ("stores: []", "stores: list at least one store"),
        ("store: []", "store: unknown key"),
        ("stores: [{name: main}]", "stores[0].url: required key is missing"),
        ("stores: [{url: 'sqlite://'}]", "stores[0].name: required key is missing"),
        ("stores: [{name: 'a b', url: 'sqlite://'}]", "stores[0].name: use 1-64 letters"),
        (
            "stores: [{name: a, url: 'not a url'}]",
            "stores[0].url: not a database URL (no scheme://); use postgresql+psycopg://",
        ),
        ("stores: [{name: a, url: 'sqlite://', interval: 5q}]", "stores[0].interval: '5q'"),
        (
            "stores: [{name: a, url: 'sqlite://', interval: -1}]",
            "stores[0].interval: must be greater than 0, not -1",
        ),
        ("stores: [{name: a, url: 'sqlite://', intervall: 5}]", "stores[0].intervall: unknown"),
        (
            "stores: [{name: a, url: 'sqlite://'}, {name: a, url: 'sqlite://'}]",
            "stores: store name 'a' is used twice",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', max_error_codes: 0}]",
            "stores[0].max_error_codes: must be greater than or equal to 1, not 0",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', objects: [lead, Lead]}]",
            "stores[0].objects: objects are listed twice",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', operations: {insert: [I], update: [i]}}]",
            "stores[0].operations: store value 'i' maps to both insert and update",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', directions: {}}]",
            "stores[0].directions: at least one direction is needed",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', password_env: X, password_file: /x}]",
            "stores[0]: give password_env or password_file, not both",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', mapping: {queue: {table: 'q; drop'}}}]",
            "stores[0].mapping.queue.table: 'q; drop' is not a plain SQL identifier",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', mapping: {history: {synced_at: '1=1'}}}]",
            "stores[0].mapping.history.synced_at: '1=1' is not a plain SQL identifier",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', mapping: {errors: {tabel: x}}}]",
            "stores[0].mapping.errors.tabel: unknown key",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', mapping: {single_table: {status: s}}}]",
            "stores[0].mapping.single_table.table: required key is missing",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', mapping: {single_table: {table: t}, queue: {}}}]",
            "stores[0].mapping: single_table cannot be combined with queue",
        ),
        (
            "stores: [{name: a, url: 'sqlite://', mapping: {status_values: {synced: [p], "
            "pending: [p]}}}]",
            "stores[0].mapping.status_values: status value 'p' is listed under both",
        ),
        (
            "stores:\n  - name: a\n    url: 'sqlite://'\n  - name: b\n    url: 'sqlite://'\n"
            "    query_timeout: soon\n",
            "stores[1].query_timeout: 'soon' is not a duration",
        ),
    ],
)
def test_each_mistake_is_reported_with_its_key_path(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yml")
    assert any(problem.startswith(expected) for problem in caught.value.problems), (
        caught.value.problems
    )


def test_durations_accept_prometheus_notation() -> None:
    store = parse_config(
        "stores: [{name: a, url: 'sqlite://', interval: 1m30s, query_timeout: 500ms}]"
    ).stores[0]
    assert (store.interval, store.query_timeout) == (90.0, 0.5)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"--config.file: cannot read .*absent\.yml: No such file or directory"
    ):
        load_config(tmp_path / "absent.yml")


def test_password_from_the_environment_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Sup3r-s3cret-pa55word"
    path = tmp_path / "env.yml"
    path.write_text(
        "stores: [{name: main, url: 'postgresql+psycopg://exporter@127.0.0.1:1/sync', "
        "password_env: CRMSYNC_TEST_PASSWORD}]\n"
    )
    store = load_config(path).stores[0]
    monkeypatch.setenv("CRMSYNC_TEST_PASSWORD", secret)
    assert store.database_url().password == secret
    assert secret not in store.display_url()


def test_password_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-a-file\n")
    store = parse_config(
        "stores: [{name: a, url: 'postgresql+psycopg://u@h/d', "
        f"password_file: {tmp_path / 'secret'}}}]"
    ).stores[0]
    assert store.database_url().password == "from-a-file"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://exporter:pw@db:5432/sync",
        "mysql+pymysql://exporter@db:3306/sync",
        "mariadb+pymysql://exporter@db:3306/sync",
        "sqlite:///relative.db",
        "sqlite:////var/lib/sync.db",
        "sqlite+pysqlite:///x.db",
        "sqlite://",
    ],
)
def test_the_supported_urls_are_accepted(url: str) -> None:
    assert parse_config(f"stores: [{{name: a, url: '{url}'}}]").stores[0].url == url
