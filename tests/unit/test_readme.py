"""The README against the code: its metric tables against the metric specifications, its module
table against the tree."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import metric_specs
from exporter.metric_specs import MetricSpec

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The packages whose every module the module table names; ``__init__.py`` has no job of its own,
# and of the ``__main__.py`` files only ``python -m exporter`` is a command users run.
PACKAGES = ("exporter", "crmsync_tools", "crmsync_testing")


def section(title: str) -> str:
    """The README's text under a ``## title`` heading, up to the next one."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def tables(text: str, header: str) -> list[list[list[str]]]:
    """Each Markdown table of ``text`` whose header row is ``header``: its rows' cells."""
    found: list[list[list[str]]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != header:
            continue
        rows = []
        for row in lines[index + 2 :]:
            if not row.startswith("|"):
                break
            rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
        found.append(rows)
    return found


def as_documented(spec: MetricSpec) -> tuple[str, str, tuple[str, ...]]:
    """A spec as the README's tables show it: an info metric is its ``_info`` gauge."""
    if spec.kind == "info":
        return f"{spec.name}_info", "gauge", spec.labels + spec.keys
    return spec.name, spec.kind, spec.labels


def documented(rows: list[list[str]]) -> dict[str, tuple[str, tuple[str, ...]]]:
    metrics: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, kind, labels, *_ in rows:
        key = name.strip("`")
        assert key not in metrics, f"{key} is listed twice"
        metrics[key] = (kind, tuple(label.strip() for label in labels.split(",") if label.strip()))
    return metrics


def test_the_metric_tables_list_every_metric_with_its_type_and_labels() -> None:
    metrics, own = tables(section("Metrics"), "| metric | type | labels | meaning |")
    specs = [v for v in vars(metric_specs).values() if isinstance(v, MetricSpec)]
    expected = {name: (kind, labels) for name, kind, labels in map(as_documented, specs)}
    listed = documented(metrics) | documented(own)
    assert len(listed) == len(metrics) + len(own), "a metric is in both tables"
    assert listed == expected


def test_the_module_table_names_every_module_and_only_those() -> None:
    (rows,) = tables(section("Development"), "| module | job |")
    named = {path for row in rows for path in re.findall(r"`([\w/.]+\.py)`", row[0])}
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).glob("*.py")
        if path.name != "__init__.py" and (package == "exporter" or path.name != "__main__.py")
    }
    others = {name for name in named if not name.startswith(tuple(f"{p}/" for p in PACKAGES))}
    assert named - others == modules
    assert all((ROOT / name).is_file() for name in others), others
    folders = {path for row in rows for path in re.findall(r"`([\w/]+/)`", row[0])}
    assert all((ROOT / folder).is_dir() for folder in folders), folders
