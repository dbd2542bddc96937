"""Test helpers: writing rows into a reference store and reading back what the exporter serves."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collection import StoreReader
from exporter.config import Config, StoreConfig, parse_config
from exporter.metrics import SyncStoreCollector
from exporter.runner import StoreRunner, StoreState
from exporter.schema import sync_error, sync_history, sync_queue

OBJECTS = ("lead", "contact", "account", "opportunity")
OPERATIONS = ("insert", "update")
DIRECTIONS = ("to_crm", "from_crm")
CODES = ("DUPLICATE_VALUE", "REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "INVALID_EMAIL_ADDRESS")

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def store_config(url: str, name: str = "main", **settings: Any) -> StoreConfig:
    """A validated store configuration, as the YAML file would give it."""
    return parse_config_dict({"stores": [{"name": name, "url": url, **settings}]}).stores[0]


def parse_config_dict(document: dict[str, Any]) -> Config:
    return parse_config(yaml.safe_dump(document))


def change(rng: random.Random, objects: Sequence[str] = OBJECTS) -> dict[str, Any]:
    return {
        "object_type": rng.choice(objects),
        "record_id": str(rng.randrange(1, 10**9)),
        "operation": rng.choice(OPERATIONS),
        "direction": rng.choice(DIRECTIONS),
    }


def add_pending(engine: sa.Engine, rows: int, seed: int = 1, age: float = 600.0) -> None:
    rng = random.Random(seed)
    now = utcnow()
    values = [
        {**change(rng), "enqueued_at": now - timedelta(seconds=rng.uniform(1, age))}
        for _ in range(rows)
    ]
    if values:
        with engine.begin() as connection:
            connection.execute(sync_queue.insert(), values)


def add_history(
    engine: sa.Engine,
    rows: int,
    seed: int = 2,
    hours: float = 2.0,
    objects: Sequence[str] = OBJECTS,
) -> None:
    rng = random.Random(seed)
    now = utcnow()
    values = []
    for _ in range(rows):
        synced = now - timedelta(seconds=rng.uniform(0, hours * 3600))
        latency = timedelta(seconds=rng.choice((0.5, 3.0, 40.0, 700.0, 5000.0, 90000.0)))
        values.append(
            {**change(rng, objects), "enqueued_at": synced - latency, "synced_at": synced}
        )
    if values:
        with engine.begin() as connection:
            connection.execute(sync_history.insert(), values)


def add_errors(engine: sa.Engine, rows: int, seed: int = 3, codes: Sequence[str] = CODES) -> None:
    rng = random.Random(seed)
    now = utcnow()
    values = [
        {
            **change(rng),
            "record_name": "Jane O'Neil",
            "error_code": rng.choice(codes),
            "error_message": "Duplicate value found: Email",
            "failed_at": now - timedelta(seconds=rng.uniform(0, 7200)),
        }
        for _ in range(rows)
    ]
    if values:
        with engine.begin() as connection:
            connection.execute(sync_error.insert(), values)


def exposition(states: Iterable[StoreState]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    frozen = list(states)
    registry.register(SyncStoreCollector(lambda: frozen))
    return generate_latest(registry).decode()


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, label set)."""
    result: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return result


def scrape(*runners: StoreRunner) -> Samples:
    return samples(exposition(runner.state for runner in runners))


def collect(runner: StoreRunner) -> Samples:
    """Run one collection cycle and return what a scrape would then see."""
    runner.run_once()
    return scrape(runner)


def collect_settled(runner: StoreRunner) -> Samples:
    """Two cycles: series the first introduces read 0 in it, their values in the second.

    (With ``new_counter_hold`` 0, as ``runner_for`` sets it, a new series is held at 0
    for the one collection that introduces it.)
    """
    runner.run_once()
    return collect(runner)


def runner_for(url: str, **settings: Any) -> StoreRunner:
    """A runner whose new counter series are held at 0 for one collection only."""
    settings.setdefault("new_counter_hold", 0)
    return StoreRunner(StoreReader(store_config(url, **settings)))


def by_name(result: Samples, name: str) -> dict[Labels, float]:
    return {labels: value for (sample, labels), value in result.items() if sample == name}


def series_total(result: Samples, name: str) -> dict[tuple[str, ...], float]:
    """Values of ``name`` keyed by (object, operation, direction[, error_code]), store dropped."""
    totals: dict[tuple[str, ...], float] = {}
    for labels, value in by_name(result, name).items():
        label_map = dict(labels)
        key = tuple(
            label_map[k]
            for k in ("object", "operation", "direction", "error_code")
            if k in label_map
        )
        totals[key] = totals.get(key, 0.0) + value
    return totals


def served_last_hour(result: Samples) -> dict[tuple[str, str], float]:
    """``crmsync_records_synced_last_hour`` keyed by (object, direction)."""
    return {
        (dict(labels)["object"], dict(labels)["direction"]): value
        for labels, value in by_name(result, "crmsync_records_synced_last_hour").items()
    }


def synced_between(
    engine: sa.Engine, start: datetime, end: datetime
) -> dict[tuple[str, str], float]:
    """An independent count of the history rows synced in [start, end) per (object, direction),
    0 for each pair with none: what ``served_last_hour`` must show for that hour."""
    query = sa.text(
        "SELECT object_type, direction, COUNT(*) FROM sync_history "
        "WHERE synced_at >= :start AND synced_at < :end GROUP BY object_type, direction"
    )
    with engine.connect() as connection:
        rows = connection.execute(query, {"start": start, "end": end}).all()
    counts = {(obj, direction): 0.0 for obj in OBJECTS for direction in DIRECTIONS}
    counts.update({(obj, direction): float(count) for obj, direction, count in rows})
    return counts


def sql_counts(engine: sa.Engine, query: str) -> dict[tuple[str, ...], float]:
    """An independent GROUP BY count: the last column is the count, the rest the key."""
    with engine.connect() as connection:
        rows = connection.execute(sa.text(query)).all()
    return {tuple(str(v).lower() for v in row[:-1]): float(row[-1]) for row in rows}


def nonzero(values: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {key: value for key, value in values.items() if value}


def newest_id(engine: sa.Engine, table: str) -> int:
    """The largest id in ``table`` (0 when empty): what a feed starting now takes as position."""
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT MAX(id) FROM {table}")).scalar() or 0)


def history_counts(engine: sa.Engine, after_id: int) -> dict[tuple[str, ...], float]:
    """History rows per series with ids above ``after_id``: those added since a feed started."""
    return sql_counts(
        engine,
        "SELECT object_type, operation, direction, COUNT(*) FROM sync_history "
        f"WHERE id > {after_id} GROUP BY object_type, operation, direction",
    )


def error_counts(engine: sa.Engine, after_id: int) -> dict[tuple[str, ...], float]:
    """Error rows per series (lower-cased, code included) with ids above ``after_id``."""
    return sql_counts(
        engine,
        "SELECT object_type, operation, direction, error_code, COUNT(*) FROM sync_error "
        f"WHERE id > {after_id} GROUP BY object_type, operation, direction, error_code",
    )


def lowered(values: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {tuple(part.lower() for part in key): value for key, value in values.items()}


def queue_table(column_type: sa.types.TypeEngine[Any]) -> sa.Table:
    """The reference queue with ``enqueued_at`` of another column type."""
    return sa.Table(
        "sync_queue",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("object_type", sa.String(64)),
        sa.Column("record_id", sa.String(64)),
        sa.Column("operation", sa.String(16)),
        sa.Column("direction", sa.String(16)),
        sa.Column("enqueued_at", column_type),
    )
