"""A store that is not the reference one: a single table with a status column, other names."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import by_name, collect, nonzero, runner_for, series_total, sql_counts, utcnow

metadata = sa.MetaData()
crm_changes = sa.Table(
    "crm_changes",
    metadata,
    sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entity", sa.String(32), nullable=False),
    sa.Column("op", sa.String(1), nullable=False),
    sa.Column("dir", sa.String(3), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("ext_id", sa.String(32), nullable=False),
    sa.Column("label", sa.String(64)),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.Column("completed", sa.DateTime),
    sa.Column("err_code", sa.String(64)),
    sa.Column("err_text", sa.Text),
)

MAPPED: dict[str, Any] = {
    "objects": ["Lead", "Contact"],
    "operations": {"insert": ["I"], "update": ["U"]},
    "directions": {"to_crm": ["OUT"], "from_crm": ["IN"]},
    "settle_time": "2m",
    "mapping": {
        "single_table": {
            "table": "crm_changes",
            "id": "change_id",
            "status": "state",
            "object_type": "entity",
            "operation": "op",
            "direction": "dir",
            "record_id": "ext_id",
            "record_name": "label",
            "enqueued_at": "created",
            "synced_at": "completed",
            "failed_at": "completed",
            "error_code": "err_code",
            "error_message": "err_text",
        },
        "status_values": {"pending": ["queued", "retry"], "synced": ["done"], "failed": ["error"]},
    },
}
LABEL_CASE = (
    "CASE op WHEN 'I' THEN 'insert' ELSE 'update' END, "
    "CASE dir WHEN 'OUT' THEN 'to_crm' ELSE 'from_crm' END"
)


def counts(engine: sa.Engine, states: str, extra: str = "") -> dict[tuple[str, ...], float]:
    return sql_counts(
        engine,
        f"SELECT entity, {LABEL_CASE}{extra}, COUNT(*) FROM crm_changes "
        f"WHERE state IN ({states}) GROUP BY entity, op, dir{extra}",
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


def check_against_store(result: Any, engine: sa.Engine) -> None:
    assert nonzero(series_total(result, "crmsync_pending_records")) == counts(
        engine, "'queued', 'retry'"
    )
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == counts(engine, "'done'")
    errors = {
        tuple(part.lower() for part in key): value
        for key, value in nonzero(series_total(result, "crmsync_sync_errors_total")).items()
    }
    assert errors == counts(engine, "'error'", ", err_code")


def test_single_table_store_matches_its_own_counts(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    metadata.create_all(engine)
    insert_changes(engine, 3_000, seed=1)
    runner = runner_for(store_url, **MAPPED)
    first = collect(runner)
    assert by_name(first, "crmsync_up") == {frozenset({("store", "main")}): 1.0}
    check_against_store(first, engine)

    # The engine moves on: queued rows complete in place, new rows arrive.
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            crm_changes.update()
            .where(crm_changes.c.state == "queued", crm_changes.c.change_id % 2 == 0)
            .values(state="done", completed=now)
        )
        connection.execute(
            crm_changes.update()
            .where(crm_changes.c.state == "retry", crm_changes.c.change_id % 3 == 0)
            .values(state="error", completed=now, err_code="UNABLE_TO_LOCK_ROW", err_text="x")
        )
    insert_changes(engine, 200, seed=2, minutes_ago=1.5)
    for _ in range(2):  # and a cycle with nothing new must not count anything twice
        check_against_store(collect(runner), engine)

    # Labels come from the mapping: unmapped objects are kept, lower-cased, zero-filled ones too.
    pending = series_total(collect(runner), "crmsync_pending_records")
    assert ("campaign", "insert", "to_crm") in pending
    assert pending[("contact", "update", "from_crm")] >= 0
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
