"""Every PromQL expression of every panel, run by a real Prometheus that scraped the exporter.

The store is filled by the simulator (a backfill, then live traffic with many failures), the
real exporter reads it and a real Prometheus scrapes the exporter every second. Each panel
query, with its variables replaced as Grafana replaces them, must parse and return data.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from exporter.schema import create_reference_schema
from exporter.simulator import backfill
from tests.conftest import require_binary
from tests.dashboards.common import DASHBOARDS, panels
from tests.dashboards.grafana import Context, Selection, interpolate

pytestmark = pytest.mark.prometheus

RATE_INTERVAL = "20s"
# Grafana's $__range for the test's time range; long enough for every window to hold samples.
RANGE = "1m"
WARM_UP = 25.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_for(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass(frozen=True)
class Stack:
    prometheus: str
    started: float


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = require_binary("prometheus")
    work = tmp_path_factory.mktemp("promql")
    url = f"sqlite:///{work / 'store.db'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    backfill(engine, history_rows=3000, error_rows=400, pending_rows=150, span=3 * 3600.0, seed=3)
    engine.dispose()

    exporter_port, prometheus_port = _free_port(), _free_port()
    config = work / "exporter.yml"
    # New counter series count after being scraped at 0 once (Prometheus scrapes every 1 s).
    config.write_text(
        f"stores:\n  - name: main\n    url: '{url}'\n    interval: 1s\n    new_counter_hold: 1s\n"
    )
    prometheus_config = work / "prometheus.yml"
    prometheus_config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: crmsync\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n"
    )
    logs = work / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str]) -> None:
        log = (logs / f"{name}.log").open("wb")
        processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))

    try:
        start(
            "simulator",
            [
                sys.executable,
                "-m",
                "exporter.simulator",
                "--store.url",
                url,
                "--scenario",
                "steady",
                "--rate",
                "10",
                "--speed",
                "5",
                "--error-share",
                "0.25",
                "--sync-interval",
                "0.5",
                "--seed",
                "5",
            ],
        )
        start(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{exporter_port}",
            ],
        )
        start(
            "prometheus",
            [
                prometheus_binary,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
        )
        deadline = time.monotonic() + 30
        _wait_for(f"http://127.0.0.1:{exporter_port}/metrics", deadline)
        base = f"http://127.0.0.1:{prometheus_port}"
        _wait_for(f"{base}/-/ready", deadline)
        started = time.monotonic()
        time.sleep(WARM_UP)
        for process in processes:
            assert process.poll() is None, (logs / "exporter.log").read_text()
        yield Stack(base, started)
    finally:
        for process in processes:
            _stop(process)


def _context(view: str) -> Context:
    every = Selection((), multi=True, include_all=True, all_value=".*", is_all=True)
    return Context(
        {
            "job": every,
            "instance": every,
            "store": Selection.one("main"),
            "object": Selection.one("lead"),
            "direction": every,
            "operation": every,
            "error_code": every,
            "view": Selection.one(view),
            "horizon": Selection.one("14400"),
            "group": Selection.one("error_code"),
        },
        builtins={"__rate_interval": RATE_INTERVAL, "__range": RANGE, "__interval": "1s"},
    )


def _chosen_context(view: str) -> Context:
    """Explicit multi-value selections instead of All: Grafana joins them into (a|b)."""
    context = _context(view)
    variables = dict(context.variables)
    for name, values in (
        ("direction", ("to_crm", "from_crm")),
        ("operation", ("insert", "update")),
        ("job", ("crmsync",)),
    ):
        variables[name] = Selection(values, multi=True, include_all=True, all_value=".*")
    return Context(variables, context.builtins)


def _multi_object_context(view: str) -> Context:
    context = _context(view)
    variables = dict(context.variables)
    variables["object"] = Selection((), multi=True, include_all=True, all_value=".*", is_all=True)
    return Context(variables, context.builtins)


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool
    multi_object: bool


def _queries() -> list[Query]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        object_variable = next(
            (v for v in dashboard["templating"]["list"] if v["name"] == "object"), None
        )
        multi_object = bool(object_variable and object_variable.get("multi"))
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") != "prometheus":
                    continue
                found.append(
                    Query(
                        dashboard["uid"],
                        panel["title"],
                        target["refId"],
                        target["expr"],
                        bool(target.get("instant")),
                        multi_object,
                    )
                )
    return found


QUERIES = _queries()


def _evaluate(stack: Stack, expr: str, instant: bool) -> list[Any]:
    if instant:
        query = urllib.parse.urlencode({"query": expr})
        answer = _get(f"{stack.prometheus}/api/v1/query?{query}")
    else:
        end = time.time()
        query = urllib.parse.urlencode({"query": expr, "start": end - 15, "end": end, "step": "1s"})
        answer = _get(f"{stack.prometheus}/api/v1/query_range?{query}")
    assert answer["status"] == "success", answer
    result: list[Any] = answer["data"]["result"]
    return result


def test_there_are_promql_panels_on_every_dashboard() -> None:
    assert {query.dashboard for query in QUERIES} == {
        "crmsync-status",
        "crmsync-object",
        "crmsync-errors",
        "crmsync-capacity",
    }


STATUS_TABLE = ("crmsync-status", "Sync Status")


@pytest.mark.parametrize(
    "query",
    [q for q in QUERIES if (q.dashboard, q.panel) != STATUS_TABLE],
    ids=[
        f"{q.dashboard}:{q.panel}:{q.ref}"
        for q in QUERIES
        if (q.dashboard, q.panel) != STATUS_TABLE
    ],
)
def test_every_panel_query_parses_and_returns_data(stack: Stack, query: Query) -> None:
    context = _multi_object_context("0") if query.multi_object else _context("0")
    expr = interpolate(query.expr, context, "prometheus")
    assert "$" not in expr, f"a variable is left in {expr}"
    assert _evaluate(stack, expr, query.instant), f"no data for {expr}"
    # The same with values picked one by one rather than "All".
    expr = interpolate(query.expr, _chosen_context("0"), "prometheus")
    assert "(to_crm|from_crm)" in expr or "direction" not in query.expr
    assert _evaluate(stack, expr, query.instant), f"no data for {expr}"


def test_the_status_table_has_every_column_of_its_view_for_every_object(stack: Stack) -> None:
    """One query per view, every cell present: the table can have no empty column."""
    (query,) = [q for q in QUERIES if (q.dashboard, q.panel) == STATUS_TABLE]
    columns = {
        "0": {"Inserts", "Updates", "Oldest pending insert", "Oldest pending update"},
        "1": {"Inserts", "Updates", "Synced in the last full hour"},
    }
    for view, expected in columns.items():
        expr = interpolate(query.expr, _context(view), "prometheus")
        result = _evaluate(stack, expr, instant=True)
        cells = {(r["metric"]["object"], r["metric"]["column"]): r["value"][1] for r in result}
        objects = {obj for obj, _ in cells}
        assert objects >= {"lead", "contact", "account", "opportunity"}
        assert cells.keys() == {(obj, column) for obj in objects for column in expected}
        for (_, column), value in cells.items():
            # "not applicable" in the Last hour view: NaN, which the table maps to N/A.
            assert (value == "NaN") == (view == "1" and column in ("Inserts", "Updates"))


def test_store_readable_reads_down_when_no_exporter_answers(stack: Stack) -> None:
    (query,) = [q for q in QUERIES if q.panel == "Store readable"]
    up = _evaluate(stack, interpolate(query.expr, _context("0"), "prometheus"), instant=True)
    assert [sample["value"][1] for sample in up] == ["1"]
    gone = dict(_context("0").variables)
    gone["job"] = Selection(("gone",), multi=True, include_all=True, all_value=".*")
    absent = interpolate(query.expr, Context(gone), "prometheus")
    assert [sample["value"][1] for sample in _evaluate(stack, absent, instant=True)] == ["0"]


def _variable_queries() -> list[tuple[str, str, str, str]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"]
                found.append((dashboard["uid"], variable["name"], query, variable.get("regex", "")))
    return found


@pytest.mark.parametrize("variable", _variable_queries(), ids=lambda v: f"{v[0]}:{v[1]}")
def test_every_variable_query_finds_values(
    stack: Stack, variable: tuple[str, str, str, str]
) -> None:
    _, name, definition, regex = variable
    result = re.fullmatch(r"query_result\((.+)\)", definition)
    if result:
        # Grafana lists "{labels} value timestamp" and keeps what the regex captures.
        expr = interpolate(result.group(1), _context("0"), "prometheus")
        (sample,) = _evaluate(stack, expr, instant=True)
        text = f"{{}} {sample['value'][1]} {int(sample['value'][0] * 1000)}"
        captured = re.search(regex.strip("/"), text)
        assert captured, text
        assert int(captured.group(1)) % 60_000 == 0, "a full minute, in milliseconds"
        return
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
    assert match, definition
    selector = interpolate(match.group(1), _context("0"), "prometheus")
    query = urllib.parse.urlencode({"match[]": selector})
    answer = _get(f"{stack.prometheus}/api/v1/label/{match.group(2)}/values?{query}")
    assert answer["status"] == "success"
    assert answer["data"], f"no values for ${name} from {selector}"


def test_the_last_hour_variables_are_an_hour_apart(stack: Stack) -> None:
    status = json.loads((DASHBOARDS / "crmsync-status.json").read_text(encoding="utf-8"))
    values = {}
    for variable in status["templating"]["list"]:
        if variable["name"] in ("last_hour_start", "last_hour_end"):
            expr = variable["query"]["query"].removeprefix("query_result(").removesuffix(")")
            expr = interpolate(expr, _context("0"), "prometheus")
            (sample,) = _evaluate(stack, expr, instant=True)
            values[variable["name"]] = float(sample["value"][1])
    assert values["last_hour_end"] - values["last_hour_start"] == 3_600_000
    assert values["last_hour_start"] <= time.time() * 1000 - 3_600_000
