"""Shared helpers of the dashboard tests: the generated dashboards and their queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crmsync_tools.dashboard_sql import SqlDialect
from crmsync_tools.dashboards import Json, Options, build_dashboards
from exporter.config import StoreConfig, parse_config

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
REFERENCE_CONFIG = ROOT / "deploy" / "exporter" / "crmsync-exporter.yml"


def reference_store(url: str = "postgresql+psycopg://exporter@db:5432/sync") -> StoreConfig:
    return parse_config(f"stores:\n  - name: main\n    url: '{url}'\n").stores[0]


def dashboards(
    store: StoreConfig | None = None, dialect: SqlDialect = "postgresql"
) -> dict[str, Json]:
    return {
        dashboard["uid"]: dashboard
        for dashboard in build_dashboards(
            store or reference_store(), Options(dialect=dialect)
        ).values()
    }


def panels(dashboard: Json) -> Iterator[Json]:
    """Every panel that shows something (rows only group them)."""
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel
        yield from panel.get("panels", [])


def panel(dashboard: Json, title: str) -> Json:
    for candidate in panels(dashboard):
        if candidate["title"] == title:
            return candidate
    raise KeyError(title)


def sql_of(dashboard: Json, title: str) -> str:
    (target,) = panel(dashboard, title)["targets"]
    text: Any = target["rawSql"]
    assert isinstance(text, str)
    return text


def link_values(href: str, variable: str) -> list[str]:
    """The values of ``variable`` a dashboard opened by a link's href takes: scenes reads the
    query string as URLSearchParams does (`+` is a space; the fragment is no part of it)."""
    query = parse_qs(urlsplit(href).query, keep_blank_values=True)
    return query.get(f"var-{variable}", [])
