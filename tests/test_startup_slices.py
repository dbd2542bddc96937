"""On start, totals read a slice of ids at a time still equal the store's own counts."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from exporter import feeds
from exporter.schema import create_reference_schema
from tests.helpers import (
    add_errors,
    add_history,
    collect,
    nonzero,
    runner_for,
    series_total,
    sql_counts,
)
from tests.test_collection import ERROR_COUNTS, HISTORY_COUNTS, lowered


def test_start_up_totals_read_in_many_slices_equal_the_stores_counts(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    add_history(engine, 1_000)
    add_errors(engine, 300)
    # 1,000 rows, the newest 100 read one by one: the rest in slices of 37 ids (ragged at the end).
    monkeypatch.setattr(feeds, "STARTUP_TAIL_IDS", 100)
    monkeypatch.setattr(feeds, "STARTUP_SLICE_IDS", 37)
    monkeypatch.setattr(feeds, "STARTUP_SLICE_LIMITS", (37, 37))

    result = collect(runner_for(store_url))

    history = sql_counts(engine, HISTORY_COUNTS)
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == history
    assert nonzero(series_total(result, "crmsync_sync_latency_seconds_count")) == history
    errors = lowered(nonzero(series_total(result, "crmsync_sync_errors_total")))
    assert errors == sql_counts(engine, ERROR_COUNTS)
    engine.dispose()
