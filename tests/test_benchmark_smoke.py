"""The benchmark in miniature, so that it keeps running: every measurement, tiny stores.

Figures are not checked here (they are measured, not asserted); what is checked is that each
measurement produced them and that the report carries them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import encoding, report
from benchmarks.run import FixtureStores, Plan, benchmark, main
from benchmarks.stores import Size
from exporter.metric_specs import LATENCY_BUCKETS

TINY = Size.of(500, 5_000)


def test_the_quick_benchmark_on_sqlite_writes_its_report(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(f"# Benchmarks\n\nBy hand.\n\n{report.BEGIN}\nold\n{report.END}\n\nAfter.\n")
    code = main(
        [
            "--quick",
            "--no-postgres",
            "--stages",
            "p1k_h10k",
            "--sqlite-dir",
            str(tmp_path / "stores"),
            "--output",
            str(output),
            "--json",
            str(tmp_path / "results.json"),
        ]
    )
    assert code == 0
    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nBy hand.\n")
    assert text.endswith("\n\nAfter.\n")
    assert "old" not in text
    assert "| sqlite | 1k pending, 10k history |" in text
    assert "### Scrapes" in text
    assert "### Memory" in text
    assert "/metrics p99 < 20 ms" in text


@pytest.mark.postgres
def test_the_quick_benchmark_on_postgresql_measures_cycles_and_floor(postgres_url: str) -> None:
    plan = replace(Plan.quick(), stages=(TINY,), sqlite_stages=(), steady_cycles=3)
    plan = replace(plan, serve_stage=Size.of(0, 0))  # scrapes: covered on SQLite above
    results = benchmark(plan, FixtureStores(postgres_url), None, False, Path("unused"))
    (stage,) = results.stages
    assert stage["dialect"] == "postgresql"
    assert stage["cycles"] == 3
    for key in ("first_s", "steady_ms", "floor_ms", "gauges_ms", "floor_gauges_ms"):
        assert stage[key] > 0, key
    assert {"backlog", "history", "errors"} <= set(stage["steps_ms"])
    assert "history: new rows" in stage["kinds_client_ms"]


def test_the_encoding_benchmark_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert encoding.main(["--objects", "2", "--runs", "3"]) == 0
    printed = capsys.readouterr().out
    lines = int(printed.split(" lines,", 1)[0].replace(",", ""))
    assert lines > 2 * 2 * 2 * (len(LATENCY_BUCKETS) + 3)  # each series' histogram
    for row in ("a collection's snapshot", "a scrape, Prometheus's format, gzip", "ages encoded"):
        assert f"| {row}" in printed
