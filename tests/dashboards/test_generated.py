"""The committed dashboards are the generator's output, and the generator serves mapped stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.dashboards import build_dashboards, main, render
from tests.dashboards.common import DASHBOARDS, REFERENCE_CONFIG

MAPPED = """
stores:
  - name: crm
    url: mysql+pymysql://grafana@db/crm
    mapping:
      errors: {table: crm.failures, failed_at: happened_at, error_message: detail}
      queue: {table: crm.outbox, enqueued_at: created}
"""


def test_committed_dashboards_equal_the_generated_ones() -> None:
    """Regenerate with: python -m exporter.dashboards --config.file
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
