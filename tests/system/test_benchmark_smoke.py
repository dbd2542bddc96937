"""The benchmark in miniature, so that it keeps running: every measurement, tiny stores.

Figures are not checked here (they are measured, not asserted); what is checked is that each
measurement produced them and that the report carries them. The benchmark runs as its users
run it, ``python -m benchmarks``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.servers import POSTGRES_ADMIN, server_engine

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "BENCHMARKS.md"


def run_benchmark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )


def markers() -> tuple[str, str]:
    """The lines around the generated tables in the committed report, which a run rewrites."""
    lines = COMMITTED.read_text(encoding="utf-8").splitlines()
    (begin,) = [line for line in lines if line.startswith("<!-- benchmark results")]
    (end,) = [line for line in lines if line.startswith("<!-- end of benchmark results")]
    return begin, end


def test_the_quick_benchmark_on_sqlite_writes_its_report(tmp_path: Path) -> None:
    begin, end = markers()
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(f"# Benchmarks\n\nBy hand.\n\n{begin}\nold\n{end}\n\nAfter.\n")
    result = run_benchmark(
        "--no-postgres",
        "--stages",
        "p1k_h10k",
        "--sqlite-dir",
        str(tmp_path / "stores"),
        "--output",
        str(output),
        "--json",
        str(tmp_path / "results.json"),
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nBy hand.\n")
    assert text.endswith("\n\nAfter.\n")
    assert "old" not in text
    assert "| sqlite | 1k pending, 10k history |" in text
    assert "### Scrapes" in text
    assert "### Memory" in text
    assert "/metrics p99 < 20 ms" in text


@pytest.mark.postgres
def test_the_quick_benchmark_on_postgresql_measures_cycles_and_floor(tmp_path: Path) -> None:
    admin = server_engine(POSTGRES_ADMIN, "PostgreSQL")
    database = f"crmsync_bench_t_{uuid.uuid4().hex[:10]}"
    try:
        result = run_benchmark(
            "--no-sqlite",
            "--no-serve",  # scrapes: covered on SQLite above
            "--stages",
            "p1k_h10k",
            "--postgres",
            POSTGRES_ADMIN,
            "--database",
            database,
            "--json",
            str(tmp_path / "results.json"),
        )
    finally:
        with admin.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            )
        admin.dispose()
    assert result.returncode == 0, result.stderr
    (stage,) = json.loads((tmp_path / "results.json").read_text())["stages"]
    assert stage["dialect"] == "postgresql"
    assert stage["cycles"] > 0
    for key in ("first_s", "steady_ms", "floor_ms", "gauges_ms", "floor_gauges_ms"):
        assert stage[key] > 0, key
    assert {"backlog", "history", "errors"} <= set(stage["steps_ms"])
    assert "history: new rows" in stage["kinds_client_ms"]


def test_the_quick_fleet_stage_writes_its_part_of_the_report(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    begin, end = markers()
    (fleet_begin,) = [
        line
        for line in COMMITTED.read_text(encoding="utf-8").splitlines()
        if line.startswith("<!-- fleet results")
    ]
    (fleet_end,) = [
        line
        for line in COMMITTED.read_text(encoding="utf-8").splitlines()
        if line.startswith("<!-- end of fleet results")
    ]
    output.write_text(
        f"# Benchmarks\n\n{begin}\nother stages\n{end}\n\n{fleet_begin}\nold\n{fleet_end}\n"
    )
    results = tmp_path / "results.json"
    result = run_benchmark("--fleet", "--output", str(output), "--json", str(results))
    assert result.returncode == 0, result.stderr

    text = output.read_text()
    assert "other stages" in text
    assert "old" not in text
    assert "| every store up within two intervals |" in text
    fleet = json.loads(results.read_text())["fleet"]
    assert "error" not in fleet, fleet
    assert fleet["stores"] == 20
    # Measured by the server: the exporter was seen connected, and never over its cap.
    assert 0 < fleet["peak_connections"] <= fleet["per_server"]
    # Every store's pending rows as served equal SQL's count of its queue.
    assert fleet["pending_checked"]
    assert fleet["exit_code"] == 0


def test_the_encoding_benchmark_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.encoding", "--objects", "2", "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = int(result.stdout.split(" lines,", 1)[0].replace(",", ""))
    assert lines > 2 * 2 * 2 * 17  # at least each series' latency histogram
    for row in (
        "a collection's snapshot, Prometheus's format",
        "a scrape, Prometheus's format, gzip",
        "the first scrape of a second (ages encoded)",
    ):
        assert f"| {row} |" in result.stdout
