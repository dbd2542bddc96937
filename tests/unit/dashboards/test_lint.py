"""Structural checks of the committed dashboards, in the spirit of grafana/dashboard-linter."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from crmsync_testing.dashboards import DASHBOARDS, ROOT, dashboards, panels
from crmsync_tools.dashboards import KEEP_ENCODED, SQL_PLUGIN, UIDS, Json

PROVISIONED_DATASOURCES = (
    ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "crmsync.yml"
)
# Grafana's own variables, usable anywhere without being defined.
BUILTINS = {
    "__all",
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__url_time_range",
    "__value",
    "__field",
    "__data",
    "__series",
    "__dashboard",
    "__from",
    "__to",
}
_REFERENCE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::\w+)?\]\]|\$\{(\w+)(?:\.[^:}]+)?(?::[^}]+)?\}")
# The SQL backends' macros ($__name(...)) are expanded by Grafana's server, not templating.
_SQL_MACROS = {"__timeFilter", "__timeFrom", "__timeTo", "__unixEpochFilter", "__time"}


def _committed() -> dict[str, Json]:
    found = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard: Json = json.loads(path.read_text(encoding="utf-8"))
        found[path.name] = dashboard
    return found


COMMITTED = _committed()
BY_UID = {dashboard["uid"]: dashboard for dashboard in COMMITTED.values()}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _variables(dashboard: Json) -> dict[str, Json]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def _provisioned() -> dict[str, str]:
    document = yaml.safe_load(PROVISIONED_DATASOURCES.read_text(encoding="utf-8"))
    return {source["uid"]: source["type"] for source in document["datasources"]}


def test_the_four_dashboards_have_their_contract_uids_and_the_tag() -> None:
    assert {f"{uid}.json" for uid in UIDS.values()} == set(COMMITTED)
    for name, dashboard in COMMITTED.items():
        assert name == f"{dashboard['uid']}.json"
        assert "crmsync" in dashboard["tags"]
        assert dashboard["title"]
        assert dashboard["description"]


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_panels_have_unique_ids_title_description_unit(name: str) -> None:
    dashboard = COMMITTED[name]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert all(isinstance(panel_id, int) and panel_id > 0 for panel_id in ids)
    for panel in panels(dashboard):
        assert panel["title"].strip(), panel
        assert len(panel["description"]) > 20, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_panels_do_not_overlap(name: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(COMMITTED[name]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_every_variable_used_is_defined_and_every_defined_one_used(name: str) -> None:
    dashboard = COMMITTED[name]
    defined = set(_variables(dashboard))
    used: set[str] = set()
    for text in _strings({"panels": dashboard["panels"], "templating": dashboard["templating"]}):
        for match in _REFERENCE.finditer(text):
            used.add(match.group(1) or match.group(2) or match.group(3))
    undefined = used - defined - BUILTINS - _SQL_MACROS
    assert not undefined, f"undefined variables: {undefined}"
    # The datasource variable is used by the others' queries; every other must serve a panel.
    assert defined <= used, f"unused variables: {defined - used}"


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_datasources_are_variables_defaulting_to_the_provisioned_uids(name: str) -> None:
    dashboard = COMMITTED[name]
    variables = _variables(dashboard)
    provisioned = _provisioned()
    plugin_of_type = {"prometheus": "prometheus", **{p: p for p in SQL_PLUGIN.values()}}
    for variable in variables.values():
        if variable["type"] == "datasource":
            uid = variable["current"]["value"]
            assert uid in provisioned, f"${variable['name']} defaults to unprovisioned {uid}"
            assert provisioned[uid] == variable["query"]
    for panel in panels(dashboard):
        for holder in (panel, *panel["targets"]):
            source = holder["datasource"]
            match = re.fullmatch(r"\$\{(\w+)\}", source["uid"])
            assert match, f"{panel['title']}: datasource uid must be a variable"
            variable = variables[match.group(1)]
            assert variable["type"] == "datasource"
            assert plugin_of_type[source["type"]] == variable["query"]


def _links(dashboard: Json) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        field_config = panel["fieldConfig"]
        for link in field_config["defaults"].get("links", []):
            yield panel["title"], link["url"]
        for override in field_config["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "links":
                    for link in prop["value"]:
                        yield panel["title"], link["url"]


def test_data_links_point_to_existing_dashboards_and_variables() -> None:
    seen = 0
    for dashboard in COMMITTED.values():
        own = _variables(dashboard)
        for title, url in _links(dashboard):
            seen += 1
            parts = urlsplit(url)
            match = re.fullmatch(r"/d/([\w-]+)", parts.path)
            assert match, url
            target = BY_UID[match.group(1)]
            target_variables = _variables(target)
            names = [key.removeprefix("var-") for key, _ in parse_qsl(parts.query)]
            names += re.findall(r"\$\{(\w+):queryparam\}", parts.query)
            for variable in names:
                if variable.startswith("${__"):
                    continue
                assert variable in target_variables, f"{title}: {target['uid']} has no ${variable}"
            for variable in re.findall(r"\$\{(\w+):queryparam\}", parts.query):
                assert variable in own, f"{title}: ${variable} is not defined here"
            assert "${__url_time_range}" in parts.query, f"{title}: the time range is not kept"
            assert url.endswith(KEEP_ENCODED), f"{title}: Grafana 12+ would decode the values"
    assert seen >= 3


def test_dashboards_link_to_each_other_by_tag() -> None:
    for dashboard in COMMITTED.values():
        (link,) = dashboard["links"]
        assert link["type"] == "dashboards"
        assert link["tags"] == ["crmsync"]
        assert link["keepTime"]
        assert link["includeVars"]
        others = [d for d in COMMITTED.values() if d is not dashboard and "crmsync" in d["tags"]]
        assert len(others) == 3


def test_the_status_table_opens_the_object_detail() -> None:
    status = BY_UID["crmsync-status"]
    urls = [url for title, url in _links(status) if title == "Sync Status"]
    assert urls == [
        "/d/crmsync-object?${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"
        "&${store:queryparam}&${direction:queryparam}&var-object=${__value.raw:percentencode}"
        "&${__url_time_range}#%"
    ]


def test_table_renames_refer_to_existing_queries() -> None:
    for dashboard in COMMITTED.values():
        for panel in panels(dashboard):
            refs = {target["refId"] for target in panel["targets"]}
            for transformation in panel.get("transformations", []):
                for field in transformation["options"].get("renameByName", {}):
                    if field.startswith("Value #"):
                        assert field.removeprefix("Value #") in refs


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_sql_takes_variables_only_percent_encoded(dialect: str) -> None:
    """No variable reaches SQL in a format that could carry a quote or a backslash."""
    generated = dashboards(dialect=dialect)  # type: ignore[arg-type]
    checked = 0
    for dashboard in generated.values():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                if "rawSql" not in target:
                    continue
                checked += 1
                sql = target["rawSql"]
                for match in re.finditer(r"\$\{?(\w+)(?::(\w+))?", sql):
                    name, fmt = match.group(1), match.group(2)
                    if name in _SQL_MACROS:
                        continue
                    assert fmt in ("queryparam", "percentencode"), f"{match.group(0)} in {sql}"
                    assert any(f"{before}{match.group(0)}" in sql for before in "'&="), match
                    if fmt == "percentencode":
                        # A whole list, named as a URL parameter of its own.
                        assert f"&var-{name}=${{{name}:percentencode}}" in sql
                if dialect == "mysql":
                    # Grafana's MySQL backend refuses queries that match these.
                    assert not re.search(
                        r"(?im)([\s]*show[\s]+grants|[\s,]session_user\(|[\s,]current_user"
                        r"|[\s,]system_user\(|[\s,]user\()",
                        sql,
                    )
    assert checked == 4
