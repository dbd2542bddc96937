"""Pictures of the Sync Status and Failed records tables, drawn by Grafana's own Table.

    python -m crmsync_testing.pictures [--out docs/images]

Fills a PostgreSQL store with the simulator's three hours of history, runs the real exporter
and a real Prometheus on it, runs the committed dashboards through Grafana 11.3's frontend
code (grafana_frontend.py: scenes, the Prometheus datasource, @grafana/data) against them, and
draws the tables with @grafana/ui's Table in headless Chromium (frontend/pictures.mjs). Needs
what the tests need: PostgreSQL (CRMSYNC_TEST_POSTGRES), prometheus, the npm packages
(scripts/test.sh installs them) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.dashboards import DASHBOARDS, ROOT
from crmsync_testing.grafana_frontend import (
    FRONTEND,
    Json,
    Panel,
    Result,
    Run,
    datasources,
    ensure_built,
    node,
    run_answered,
)
from crmsync_testing.grafana_server import Backends, TimeRange, run_sql
from crmsync_testing.servers import postgres_schema, require_binary, unavailable
from crmsync_testing.stack import running_stack
from crmsync_tools.simulator import backfill
from exporter.schema import create_reference_schema

VERSION = "11.3"
# Debian's Chromium (the test image has it at /usr/bin/chromium).
CHROMIUM = os.environ.get("CHROMIUM", "chromium")
SCRAPE_INTERVAL = "1s"
# Grafana's "sm" cell height and header, for a table tall enough to show every row.
ROW_HEIGHT = 36


@dataclass(frozen=True)
class Picture:
    """One panel of one dashboard state, drawn to a file."""

    file: str
    dashboard: str
    url: str
    panel: str
    width: int
    height: int | None = None


PICTURES = [
    Picture("sync-status-backlog.png", "crmsync-status", "", "Sync Status", 1100),
    Picture("sync-status-last-hour.png", "crmsync-status", "var-view=1", "Sync Status", 1100),
    Picture("failed-records.png", "crmsync-errors", "", "Failed records, page ${page}", 1800, 520),
]


def time_range(dashboard: Json, now: datetime) -> tuple[datetime, datetime]:
    """The dashboard's default time range, "now-6h" to "now"."""
    match = re.fullmatch(r"now-(\d+)([mhd])", str(dashboard.get("time", {}).get("from", "now-6h")))
    amount, unit = (int(match.group(1)), match.group(2)) if match else (6, "h")
    size = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}[unit]
    return now - amount * size, now


def _height(panel: Panel, picture: Picture) -> int:
    if picture.height is not None:
        return picture.height
    rows = max((frame["length"] for frame in panel.frames), default=0)
    return ROW_HEIGHT * (rows + 1) + 4


@dataclass(frozen=True)
class Drawn:
    file: Path
    text: str  # what a person reads in the picture


def draw(pictures: Sequence[Json], out: Path, version: str = VERSION) -> list[Drawn]:
    """Render panels ({id, file, panel, dataFrames, width, height}) to PNG files in ``out``."""
    ensure_built()
    if shutil.which(CHROMIUM) is None:
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as listing:
        json.dump(list(pictures), listing)
        listing.flush()
        completed = subprocess.run(
            [node(), str(FRONTEND / "pictures.mjs"), listing.name, str(out), version],
            env={**os.environ, "CHROMIUM": shutil.which(CHROMIUM) or CHROMIUM},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"drawing the pictures failed:\n{completed.stderr}")
    drawn = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return [Drawn(Path(item["file"]), str(item["text"])) for item in drawn]


def make_pictures(out: Path) -> list[Drawn]:
    """Fill a store, monitor it, run the dashboards against it and draw the tables."""
    prometheus = require_binary("prometheus")
    dashboards = {
        d["uid"]: d
        for d in (json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS.glob("*.json"))
    }
    with postgres_schema() as url, tempfile.TemporaryDirectory() as work:
        engine = sa.create_engine(url)
        create_reference_schema(engine)
        backfill(
            engine, history_rows=3000, error_rows=400, pending_rows=150, span=3 * 3600.0, seed=3
        )

        def sql(text: str, ref_id: str, window: TimeRange) -> Json:
            return run_sql(engine, text, ref_id, window, "postgresql")

        with running_stack(
            url, Path(work), prometheus, traffic=False, scrape_interval=SCRAPE_INTERVAL
        ) as stack:
            stack.wait_for_series("crmsync_records_synced_last_hour")
            time.sleep(3)  # a few scrapes more: the ages and counts of now
            now = datetime.now(UTC)
            runs = [
                Run(
                    dashboards[p.dashboard],
                    p.url,
                    *time_range(dashboards[p.dashboard], now),
                    stack.prometheus,
                )
                for p in PICTURES
            ]
            results = run_answered(
                VERSION,
                runs,
                Backends(sql=sql, prometheus=stack.prometheus, scrape_interval=SCRAPE_INTERVAL),
                datasources(scrape_interval=SCRAPE_INTERVAL),
            )
        engine.dispose()
    listing = [
        listing_entry(index, picture, dashboards[picture.dashboard], result)
        for index, (picture, result) in enumerate(zip(PICTURES, results, strict=True))
    ]
    return draw(listing, out)


def listing_entry(index: int, picture: Picture, dashboard: Json, result: Result) -> Json:
    """What frontend/pictures.mjs needs to draw one picture: the panel and its frames."""
    panel = result.panel(picture.panel)
    if panel.errors:
        raise RuntimeError(f"{picture.panel} at {picture.url!r}: {panel.errors}")
    panel_json = next(p for p in dashboard["panels"] if p["title"] == picture.panel)
    return {
        "id": f"picture{index}",
        "file": picture.file,
        "panel": panel_json,
        "title": panel.shown_title,
        "dataFrames": panel.data_frames,
        "interpolations": panel.interpolations,
        "width": picture.width,
        "height": _height(panel, picture),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crmsync_testing.pictures", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "images", help="directory of the PNG files"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        written = make_pictures(args.out)
    except (pytest.skip.Exception, pytest.fail.Exception) as missing:
        # What the tests skip for (no PostgreSQL, prometheus, npm packages) stops this too.
        print(f"cannot draw the pictures: {missing}", file=sys.stderr)
        return 2
    for drawn in written:
        print(drawn.file)
    print(f"{len(written)} pictures in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
