"""A table drawn by Grafana's own Table component in headless Chromium reads as it should.

The Failed records panel of the errors browser, run through Grafana 11.3's frontend against a
PostgreSQL store, drawn as `python -m crmsync_testing.pictures` draws the README's pictures.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.dashboards import dashboards
from crmsync_testing.failed_records import (
    CODES,
    DIRECTIONS,
    LABELS,
    OPERATIONS,
    RANGE,
    expected_failures,
    failures,
    time_unit,
    url,
)
from crmsync_testing.grafana_frontend import Run, datasources, run_answered
from crmsync_testing.grafana_server import Backends, Json, TimeRange, run_sql
from crmsync_testing.pictures import VERSION, Picture, draw, listing_entry
from exporter.schema import create_reference_schema, sync_error

pytestmark = [pytest.mark.chromium, pytest.mark.grafana_frontend, pytest.mark.postgres]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_the_failed_records_table_draws_its_rows(postgres_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(postgres_url)
    create_reference_schema(engine)
    with engine.begin() as connection:
        connection.execute(
            sync_error.insert(), [{**vars(row), "object_type": row.object} for row in failures()]
        )

    def sql(text: str, ref_id: str, window: TimeRange) -> Json:
        return run_sql(engine, text, ref_id, window, "postgresql")

    # Every filter chosen value by value, as a person narrowing down does.
    state = url(
        ("object", "lead"),
        ("object", "contact"),
        *(("operation", value) for value in OPERATIONS),
        *(("direction", value) for value in DIRECTIONS),
        *(("error_code", value) for value in CODES),
    )
    errors = dashboards()["crmsync-errors"]
    (result,) = run_answered(
        VERSION,
        [Run(errors, state, RANGE.start, RANGE.end, labels=LABELS)],
        Backends(sql=sql),
        datasources(),
    )
    engine.dispose()
    picture = Picture(
        "failed-records.png", "crmsync-errors", state, "Failed records, page ${page}", 1800, 520
    )
    (drawn,) = draw([listing_entry(0, picture, errors, result)], tmp_path)

    width, height = _png_size(drawn.file)
    assert width >= 1800
    assert height >= 520
    assert drawn.file.stat().st_size > 20_000, "the picture is nearly blank"
    expected = expected_failures(failures(), objects=("lead", "contact"))
    lines = drawn.text.splitlines()
    shown_ids = [line for line in lines if line.startswith("00Q")]
    assert shown_ids == [row[2] for row in expected][: len(shown_ids)]
    assert len(shown_ids) >= 10
    shape = {"dateTimeAsIso": "%Y-%m-%d %H:%M:%S", "dateTimeAsLocal": "%m/%d/%Y, %I:%M:%S %p"}
    newest = datetime.fromtimestamp(expected[0][0] / 1000, UTC).strftime(shape[time_unit(errors)])
    assert newest in [line.replace("\u202f", " ") for line in lines]
    assert "Failed records, page 1" in lines
    assert f"of {len(expected)} rows" in drawn.text
    # The footer counts the failures: "Count" and the number, not the label alone.
    footer = lines[lines.index("Count") :]
    assert str(len(expected)) in footer[:3], f"the footer reads {footer[:3]}"
