"""Dashboards run by Grafana's own frontend code (crmsync_testing/frontend), from Python.

Each run loads a dashboard into @grafana/scenes, takes the variables' state from a dashboard
URL, and lets scenes and the datasources' frontend code interpolate and send every panel's
queries. The harness reports them as Grafana's server would receive them; given the server's
answers (grafana_server.py runs the queries for real), it carries on as Grafana does: the
datasource shapes the frames, scenes applies the panel's transformations, @grafana/data its
field config, and the harness reports the table a person sees and its CSV export.

Two frontends are checked: the one of the Grafana image that docker-compose.yml runs, and the
newest published (see frontend/package.json and frontend/build.mjs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from crmsync_testing.grafana_server import Backends, answer
from crmsync_testing.servers import unavailable

Json = dict[str, Any]

FRONTEND = Path(__file__).resolve().parent / "frontend"
PROVISIONED_DATASOURCES = (
    FRONTEND.parents[1] / "deploy" / "grafana" / "provisioning" / "datasources" / "crmsync.yml"
)
# The frontend of docker-compose.yml's grafana/grafana-oss:11.3.0, and the newest.
VERSIONS = ("11.3", "latest")
SQL_PLUGINS = {"postgresql": "grafana-postgresql-datasource", "mysql": "mysql"}


def datasources(sql_dialect: str = "postgresql", scrape_interval: str | None = None) -> list[Json]:
    """The datasources the demo provisions; the store's plugin follows the SQL dialect."""
    provisioned = yaml.safe_load(PROVISIONED_DATASOURCES.read_text(encoding="utf-8"))
    found = []
    for source in provisioned["datasources"]:
        json_data = dict(source.get("jsonData", {}))
        kind = source["type"]
        if kind == "prometheus" and scrape_interval:
            json_data["timeInterval"] = scrape_interval
        if kind != "prometheus":
            kind = SQL_PLUGINS[sql_dialect]
        found.append(
            {
                "name": source["name"],
                "uid": source["uid"],
                "type": kind,
                "isDefault": bool(source.get("isDefault")),
                "jsonData": json_data,
            }
        )
    return found


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Run:
    """One dashboard at one URL (its variables' state) and time range."""

    dashboard: Json
    url: str
    start: datetime
    end: datetime
    # Where the Prometheus query variables read their values: a Prometheus, else this table.
    prometheus: str | None = None
    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    answers: Mapping[str, Json] | None = None
    # For run_answered: where this run's queries go (else the call's), and which panels' go.
    backends: Backends | None = None
    panels: Collection[str] | None = None


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    shown_title: str
    type: str
    requests: list[Json]
    state: str
    errors: list[str]
    query_frames: list[Json]
    frames: list[Json]
    table: list[Json] | None
    csv: str | None
    # The frames after the panel's transformations, as DataFrameJSON, and what the field
    # config's texts interpolated to.
    data_frames: list[Json] | None
    interpolations: dict[str, str] | None

    @property
    def queries(self) -> list[Json]:
        """The queries as they reach Grafana's server."""
        return [query for body in self.requests for query in body["queries"]]

    def rows(self, ref_id: str) -> int:
        """How many rows (samples) the datasource gave for one query."""
        return sum(frame["length"] for frame in self.query_frames if frame["refId"] == ref_id)

    def texts(self) -> list[str]:
        """Each query's text: the PromQL expression or the SQL."""
        return [str(query.get("expr", query.get("rawSql"))) for query in self.queries]

    def columns(self) -> dict[str, list[str]]:
        """The table a person sees: each column's header and formatted cells (one frame)."""
        assert self.table is not None, f"{self.title}: no table was made"
        assert len(self.table) == 1, f"{self.title}: {len(self.table)} tables, one expected"
        return {column["name"]: column["texts"] for column in self.table[0]["fields"]}


@dataclass(frozen=True)
class Result:
    dashboard: str
    url: str
    variables: dict[str, Json]
    panels: list[Panel]
    error: str | None

    def panel(self, title: str) -> Panel:
        for panel in self.panels:
            if panel.title == title:
                return panel
        raise KeyError(f"{self.dashboard} has no panel {title!r}")


def _panel(data: Json) -> Panel:
    return Panel(
        id=int(data["id"]),
        title=str(data["title"]),
        shown_title=str(data["shownTitle"]),
        type=str(data["type"]),
        requests=list(data["requests"]),
        state=str(data["state"]),
        errors=list(data["errors"]),
        query_frames=list(data["queryFrames"]),
        frames=list(data["frames"]),
        table=data.get("table"),
        csv=data.get("csv"),
        data_frames=data.get("dataFrames"),
        interpolations=data.get("interpolations"),
    )


def node() -> str:
    path = shutil.which("node")
    if path is None:
        unavailable("node is not installed (apt-get install nodejs npm)")
        raise AssertionError  # unreachable: unavailable() raised
    return path


def ensure_built() -> None:
    """The npm packages are installed (scripts/test.sh runs npm ci); bundle what is stale."""
    if not (FRONTEND / "node_modules" / ".package-lock.json").exists():
        unavailable(f"Grafana's npm packages are not installed: run npm ci in {FRONTEND}")
    subprocess.run([node(), "build.mjs"], cwd=FRONTEND, check=True, capture_output=True)


def run(
    version: str,
    runs: Sequence[Run],
    sources: Sequence[Json] | None = None,
    timeout: float = 300,
) -> tuple[Json, list[Result]]:
    """Run the dashboards through one Grafana frontend; returns its versions and the results."""
    ensure_built()
    dashboards: list[Json] = []
    index: dict[int, int] = {}
    requests = []
    for item in runs:
        if id(item.dashboard) not in index:
            index[id(item.dashboard)] = len(dashboards)
            dashboards.append(item.dashboard)
        request: Json = {
            "dashboard": index[id(item.dashboard)],
            "url": item.url,
            "from": _iso(item.start),
            "to": _iso(item.end),
            "labels": item.labels,
        }
        if item.prometheus:
            request["prometheus"] = item.prometheus
        if item.answers is not None:
            request["answers"] = item.answers
        requests.append(request)
    payload = {
        "datasources": list(sources if sources is not None else datasources()),
        "dashboards": dashboards,
        "runs": requests,
    }
    # Times display in the dashboard's zone, "browser" being the process's: UTC, as in CI.
    env = {**os.environ, "TZ": "UTC"}
    completed = subprocess.run(
        [node(), str(FRONTEND / "dist" / f"harness-{version}.cjs")],
        input=json.dumps(payload).encode(),
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"the Grafana {version} harness failed:\n{completed.stderr.decode(errors='replace')}"
        )
    output = json.loads(completed.stdout)
    results = [
        Result(
            dashboard=str(item["dashboard"]),
            url=str(item["url"]),
            variables=dict(item.get("variables", {})),
            panels=[_panel(panel) for panel in item.get("panels", [])],
            error=item.get("error"),
        )
        for item in output["runs"]
    ]
    return dict(output["grafana"]), results


def run_answered(
    version: str,
    runs: Sequence[Run],
    backends: Backends | None = None,
    sources: Sequence[Json] | None = None,
    panels: Collection[str] | None = None,
) -> list[Result]:
    """Each run twice: to learn the queries the frontend sends, then with the server's answers.

    ``backends``: where the queries go, unless a run names its own; ``panels``: the titles of
    the panels whose queries run (the others get no data), unless a run names its own; all when
    None."""
    _, first = run(version, runs, sources)
    answered = []
    for item, result in zip(runs, first, strict=True):
        assert result.error is None, f"{result.dashboard} at {item.url!r}: {result.error}"
        target = item.backends or backends
        assert target is not None, f"no backends for {result.dashboard} at {item.url!r}"
        chosen = item.panels if item.panels is not None else panels
        answers: dict[str, Json] = {}
        for panel in result.panels:
            if chosen is None or panel.title in chosen:
                answers.update(answer(panel.requests, result.dashboard, panel.id, target))
        answered.append(replace(item, answers=answers))
    _, second = run(version, answered, sources)
    for item, result in zip(answered, second, strict=True):
        assert result.error is None, f"{result.dashboard} at {item.url!r}: {result.error}"
    return second
