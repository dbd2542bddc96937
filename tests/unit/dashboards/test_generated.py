"""The committed dashboards are the generator's output, and the generator serves mapped stores."""

from __future__ import annotations

import json
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from crmsync_testing.dashboards import DASHBOARDS, REFERENCE_CONFIG, ROOT, dashboards
from crmsync_testing.failed_records import MAPPED as MAPPED_SINGLE_TABLE
from crmsync_tools.dashboards import build_dashboards, main, render
from exporter.config import StoreConfig, load_config, parse_config

MAPPED = """
stores:
  - name: crm
    url: mysql+pymysql://grafana@db/crm
    mapping:
      errors: {table: crm.failures, failed_at: happened_at, error_message: detail}
      queue: {table: crm.outbox, enqueued_at: created}
"""


def test_committed_dashboards_equal_the_generated_ones() -> None:
    """Regenerate with: python -m crmsync_tools.dashboards --config.file
    deploy/exporter/crmsync-exporter.yml --out dashboards"""
    store = load_config(REFERENCE_CONFIG).stores[0]
    generated = build_dashboards(store)
    committed = {path.name: path.read_text(encoding="utf-8") for path in DASHBOARDS.glob("*.json")}
    assert set(committed) == set(generated)
    for name, dashboard in generated.items():
        assert committed[name] == render(dashboard), f"{name} is stale: regenerate it"


def test_the_reference_configuration_is_the_reference_schema() -> None:
    store = load_config(REFERENCE_CONFIG).stores[0]
    assert store.mapping.single_table is None
    assert store.mapping.errors is not None
    assert store.mapping.errors.table == "sync_error"
    assert store.mapping.queue.table == "sync_queue"


def test_one_command_generates_dashboards_that_fit_a_mapped_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exporter.yml"
    config.write_text(MAPPED, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--config.file", str(config), "--out", str(out)]) == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted(
        f"crmsync-{n}.json" for n in ("status", "object", "errors", "capacity")
    )
    assert str(out / "crmsync-errors.json") in capsys.readouterr().out
    errors = json.loads((out / "crmsync-errors.json").read_text(encoding="utf-8"))
    sql = [t["rawSql"] for p in errors["panels"] for t in p["targets"] if "rawSql" in t]
    assert sql
    for text in sql:
        assert "FROM crm.failures" in text
        assert "$__timeFilter(happened_at)" in text
        assert "detail AS error_message" in text
        assert "sync_error" not in text
        # MySQL from the store's URL: the MySQL datasource and its dialect.
        assert "CAST(CONCAT('&'" in text
    assert errors["templating"]["list"][1]["query"] == "mysql"
    detail = json.loads((out / "crmsync-object.json").read_text(encoding="utf-8"))
    (oldest,) = [p for p in detail["panels"] if p["title"] == "Oldest pending records"]
    assert "FROM crm.outbox" in oldest["targets"][0]["rawSql"]


def test_the_dialect_can_be_chosen_and_a_sqlite_store_needs_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exporter.yml"
    config.write_text("stores:\n  - name: a\n    url: sqlite:///x.db\n", encoding="utf-8")
    assert main(["--config.file", str(config), "--out", str(tmp_path / "x")]) == 1
    assert "--sql-dialect" in capsys.readouterr().err
    out = tmp_path / "pg"
    assert (
        main(["--config.file", str(config), "--out", str(out), "--sql-dialect", "postgresql"]) == 0
    )
    errors = json.loads((out / "crmsync-errors.json").read_text(encoding="utf-8"))
    assert errors["templating"]["list"][1]["query"] == "grafana-postgresql-datasource"


def test_mistakes_are_reported_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exporter.yml"
    config.write_text(MAPPED, encoding="utf-8")
    out = str(tmp_path / "out")
    assert main(["--config.file", str(config), "--out", out, "--store", "nope"]) == 1
    assert "no store named 'nope'" in capsys.readouterr().err
    assert main(["--config.file", str(config), "--out", out, "--latency-objective", "1000"]) == 1
    assert "histogram bucket" in capsys.readouterr().err
    assert main(["--config.file", str(tmp_path / "missing.yml"), "--out", out]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_each_failed_record_links_to_the_crm_record_of_the_configured_url(
    tmp_path: Path,
) -> None:
    config = tmp_path / "exporter.yml"
    config.write_text(
        "stores:\n  - name: crm\n    url: postgresql+psycopg://u@h/db\n"
        "    crm_record_url: https://org.crm.dynamics.com/main.aspx?etn={object}"
        "&id={record_id}&pagetype=entityrecord\n",
        encoding="utf-8",
    )
    assert main(["--config.file", str(config), "--out", str(tmp_path / "out")]) == 0
    errors = json.loads((tmp_path / "out" / "crmsync-errors.json").read_text(encoding="utf-8"))
    (failed,) = [p for p in errors["panels"] if p["title"].startswith("Failed records")]
    links = [
        prop["value"]
        for override in failed["fieldConfig"]["overrides"]
        if override["matcher"]["options"] == "record_id"
        for prop in override["properties"]
        if prop["id"] == "links"
    ]
    assert links == [
        [
            {
                "title": "Open ${__value.raw} in the CRM",
                "url": "https://org.crm.dynamics.com/main.aspx?etn=${__data.fields.object:percentencode}"
                "&id=${__value.raw:percentencode}&pagetype=entityrecord",
                "targetBlank": True,
            }
        ]
    ]
    # Without a URL in the configuration there is no such link.
    assert not any(
        override["matcher"]["options"] == "record_id"
        for panel in json.loads((DASHBOARDS / "crmsync-errors.json").read_text(encoding="utf-8"))[
            "panels"
        ]
        for override in panel.get("fieldConfig", {}).get("overrides", [])
    )


def test_the_sdk_is_the_release_for_the_grafana_of_the_stack() -> None:
    """The pin allows grafana-foundation-sdk's release for the compose Grafana, and no other."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    grafana = Version(compose["services"]["grafana"]["image"].rpartition(":")[2])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (requirement,) = map(Requirement, pyproject["project"]["optional-dependencies"]["dashboards"])
    installed = Version(version("grafana-foundation-sdk"))
    assert installed.release == grafana.release
    assert installed in requirement.specifier
    epoch = installed.epoch
    next_minor = f"{grafana.major}.{grafana.minor + 1}.0"
    # A later build's releases all outrank this one by their epoch: none may be taken.
    for other in (f"{epoch}!{next_minor}", f"{epoch + 1}!{grafana}", f"{epoch + 1}!10.1.0"):
        assert Version(other) not in requirement.specifier, other


def test_reference_and_mapped_sql_differ_only_where_the_mapping_does() -> None:
    def errors_sql(store: StoreConfig | None) -> str:
        errors = dashboards(store)["crmsync-errors"]
        panel = next(p for p in errors["panels"] if p["title"].startswith("Failed records"))
        return str(panel["targets"][0]["rawSql"])

    mapped_store = parse_config(MAPPED_SINGLE_TABLE).stores[0]
    reference = errors_sql(None)
    mapped = errors_sql(mapped_store)
    assert "state IN ('ERR')" in mapped
    assert "WHEN t.operation_text IN ('i', 'ins') THEN 'insert'" in mapped
    assert "FROM sync_error" in reference
