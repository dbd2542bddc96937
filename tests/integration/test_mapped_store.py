"""A store that is not the reference one: a single table with a status column, other names."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import (
    by_name,
    collect,
    collect_settled,
    nonzero,
    runner_for,
    series_total,
    sql_counts,
    utcnow,
)
from crmsync_testing.mapped_store import MAPPED, crm_changes, metadata

LABEL_CASE = (
    "CASE op WHEN 'I' THEN 'insert' ELSE 'update' END, "
    "CASE dir WHEN 'OUT' THEN 'to_crm' ELSE 'from_crm' END"
)


def counts(
    engine: sa.Engine, states: str, extra: str = "", where: str = "1 = 1"
) -> dict[tuple[str, ...], float]:
    return sql_counts(
        engine,
        f"SELECT entity, {LABEL_CASE}{extra}, COUNT(*) FROM crm_changes "
        f"WHERE state IN ({states}) AND ({where}) GROUP BY entity, op, dir{extra}",
    )


def insert_changes(engine: sa.Engine, rows: int, seed: int, minutes_ago: float = 180) -> None:
    rng = random.Random(seed)
    now = utcnow()
    values = []
    for _ in range(rows):
        created = now - timedelta(minutes=rng.uniform(1, minutes_ago))
        state = rng.choice(["queued", "retry", "done", "done", "done", "error"])
        completed = None
        if state in ("done", "error"):
            completed = min(now, created + timedelta(seconds=rng.uniform(1, 600)))
        values.append(
            {
                "entity": rng.choice(["Lead", "Contact", "Campaign"]),
                "op": rng.choice("IU"),
                "dir": rng.choice(["OUT", "IN"]),
                "state": state,
                "ext_id": str(rng.randrange(10**6)),
                "label": "Zoë Ünal",
                "created": created,
                "completed": completed,
                "err_code": rng.choice(["DUPLICATE_VALUE", "ENTITY_IS_DELETED"])
                if state == "error"
                else None,
                "err_text": "failed" if state == "error" else None,
            }
        )
    with engine.begin() as connection:
        connection.execute(crm_changes.insert(), values)


def ids(engine: sa.Engine, where: str) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(f"SELECT change_id FROM crm_changes WHERE {where}")
            ).scalars()
        )


def check_against_store(result: Any, engine: sa.Engine, changed: str) -> None:
    """Pending rows as in the store; counters as the rows that ``changed`` selects."""
    assert nonzero(series_total(result, "crmsync_pending_records")) == counts(
        engine, "'queued', 'retry'"
    )
    synced = counts(engine, "'done'", where=changed)
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == synced
    errors = {
        tuple(part.lower() for part in key): value
        for key, value in nonzero(series_total(result, "crmsync_sync_errors_total")).items()
    }
    assert errors == counts(engine, "'error'", ", err_code", where=changed)


def test_single_table_store_counts_the_status_changes_after_its_first_read(
    store_url: str,
) -> None:
    engine = sa.create_engine(store_url)
    metadata.create_all(engine)
    insert_changes(engine, 3_000, seed=1)  # some completed within the last minutes
    runner = runner_for(store_url, **MAPPED)
    first = collect(runner)
    assert by_name(first, "crmsync_up") == {frozenset({("store", "main")}): 1.0}
    check_against_store(first, engine, changed="1 = 0")

    # The engine moves on: queued rows complete in place, new rows arrive.
    start = max(ids(engine, "1 = 1"))
    completed = ids(engine, "state = 'queued' AND MOD(change_id, 2) = 0")
    failed = ids(engine, "state = 'retry' AND MOD(change_id, 3) = 0")
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            crm_changes.update()
            .where(crm_changes.c.change_id.in_(completed))
            .values(state="done", completed=now)
        )
        connection.execute(
            crm_changes.update()
            .where(crm_changes.c.change_id.in_(failed))
            .values(state="error", completed=now, err_code="UNABLE_TO_LOCK_ROW", err_text="x")
        )
    insert_changes(engine, 200, seed=2, minutes_ago=1.5)
    changed = f"change_id > {start} OR change_id IN ({', '.join(map(str, completed + failed))})"
    assert counts(engine, "'done', 'error'", where=changed)
    check_against_store(collect_settled(runner), engine, changed)
    # A cycle with nothing new counts nothing twice.
    check_against_store(collect(runner), engine, changed)

    # Labels come from the mapping: unmapped objects are kept, lower-cased, zero-filled ones too.
    pending = series_total(collect(runner), "crmsync_pending_records")
    assert ("campaign", "insert", "to_crm") in pending
    assert pending[("contact", "update", "from_crm")] >= 0
    engine.dispose()


def test_rows_stamped_earlier_than_settle_time_are_counted_late_until_twice_that(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(sqlite_url)
    metadata.create_all(engine)
    now = utcnow()
    queued = {"entity": "Lead", "op": "I", "dir": "OUT", "state": "queued", "ext_id": "1"}
    with engine.begin() as connection:
        connection.execute(crm_changes.insert(), [{**queued, "created": now}] * 3)
    runner = runner_for(sqlite_url, **MAPPED)  # settle_time 2m
    collect(runner)

    def complete(change_id: int, minutes_ago: float) -> None:
        with engine.begin() as connection:
            connection.execute(
                crm_changes.update()
                .where(crm_changes.c.change_id == change_id)
                .values(state="done", completed=utcnow() - timedelta(minutes=minutes_ago))
            )

    def served() -> tuple[float, float]:
        result = collect_settled(runner)
        late = by_name(result, "crmsync_late_rows_total")
        return (
            sum(series_total(result, "crmsync_records_synced_total").values()),
            late[frozenset({("store", "main"), ("table", "history")})],
        )

    complete(1, 0.5)  # within settle_time: on time
    assert served() == (1.0, 0.0)
    with caplog.at_level(logging.WARNING):
        complete(2, 3)  # committed three minutes after its stamp: late, still found
        assert served() == (2.0, 1.0)
    warning = next(r for r in caplog.records if "settle_time" in r.getMessage())
    assert warning.__dict__["rows"] == 1
    assert warning.__dict__["lateness"] == pytest.approx(180, abs=5)
    complete(3, 5)  # later than twice settle_time: cannot be found (the documented limit)
    assert served() == (2.0, 1.0)
    engine.dispose()


def test_unmapped_operation_values_are_reported_as_other(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    metadata.create_all(engine)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            crm_changes.insert(),
            [
                {
                    "entity": "Lead",
                    "op": op,
                    "dir": "OUT",
                    "state": "queued",
                    "ext_id": "1",
                    "created": now,
                }
                for op in ("I", "D", "X")
            ],
        )
    result = collect(runner_for(sqlite_url, **MAPPED))
    pending = series_total(result, "crmsync_pending_records")
    assert pending[("lead", "other", "to_crm")] == 2
    assert pending[("lead", "insert", "to_crm")] == 1
    folded = by_name(result, "crmsync_folded_label_values")
    assert folded[frozenset({("store", "main"), ("label", "operation")})] == 2


@pytest.mark.parametrize("table", ["x; DROP TABLE crm_changes", "crm changes", "a.b.c"])
def test_table_names_that_are_not_identifiers_are_refused(table: str) -> None:
    from exporter.config import ConfigError

    settings = {**MAPPED, "mapping": {"single_table": {"table": table}}}
    with pytest.raises(ConfigError, match=r"stores\[0\]\.mapping\.single_table\.table"):
        runner_for("sqlite://", **settings)
