"""A sync-engine simulator: realistic queue, history and error traffic in a reference store.

It plays both sides of a sync engine: changes arrive in ``sync_queue`` (inserts and updates of
leads, contacts, accounts and opportunities, to and from the CRM), and an engine takes them
oldest first at a limited capacity, moving each to ``sync_history`` or recording a failed attempt
in ``sync_error``. Named scenarios shape the traffic over time (see ``SCENARIOS``).

Time
    Every timestamp written is *real* time by the database's clock: the simulator reads the
    database's UTC clock once when it starts and advances it with Python's monotonic clock, so
    no timestamp lies in the future of the exporter's ``now`` and ages are real ages.
    ``--speed X`` compresses *simulated* time: one real second carries X simulated seconds of
    traffic. Arrival counts, the engine's capacity and the scenario's timeline (warm-up, burst
    length and period) follow simulated time, so counts per real second are X times larger and
    a scenario's events come X times sooner. Backlog sizes are those of the simulated world.
    What cannot be sped up is age: the engine's own pickup latency (a sync cycle every
    ``sync_interval`` real seconds) and retry back-off stay realistic in real seconds, while
    ages caused by queueing (a backlog draining at X times the capacity per real second)
    shrink by X. A stall's oldest pending age therefore grows at one second per second
    whatever the speed.

It is a separate command: nothing in the exporter's read path imports it.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import itertools
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy import Connection, Row, Table, and_, delete, event, inspect, or_, select, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from crmsync_tools.schema_cli import (
    URL_ENVIRONMENT,
    StoreError,
    describe_error,
    display,
    open_engine,
    parse_store_url,
)
from exporter.arguments import command_parser, setup_logging_from
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

log = logging.getLogger("crmsync_tools.simulator")

OBJECT_WEIGHTS: Mapping[str, float] = {
    "lead": 0.45,
    "contact": 0.25,
    "account": 0.15,
    "opportunity": 0.15,
}
OPERATION_WEIGHTS: Mapping[str, float] = {"update": 0.65, "insert": 0.35}
DIRECTION_WEIGHTS: Mapping[str, float] = {"to_crm": 0.6, "from_crm": 0.4}

BATCH_SIZE = 10_000
"""Rows per INSERT round trip (executemany) in backfills."""
_IN_CHUNK = 500
"""Ids per ``IN (...)`` list: well below every driver's bound-parameter limit."""
_ARRIVAL_STEP = 1.0
"""Simulated seconds per step when integrating the arrival rate over a tick."""
_MAX_BACKOFF = 600.0


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Conditions:
    """What the scenario asks for at one simulated moment."""

    phase: str
    arrival_factor: float
    syncing: bool
    error_share: float
    error_codes: Mapping[str, float]
    capacity_factor: float = 1.0


@dataclass(frozen=True)
class Scenario:
    """A traffic shape over simulated time: steady until ``warmup``, then its event.

    The event lasts ``duration`` simulated seconds (forever when None) and, with ``period``,
    comes back every ``period`` seconds after the warm-up.
    """

    name: str
    summary: str
    event: str = "steady"
    warmup: float = 60.0
    duration: float | None = None
    period: float | None = None
    arrival_factor: float = 1.0
    syncing: bool = True
    error_share: float | None = None
    """Share of attempts failing during the event; None keeps the steady share."""
    error_codes: Mapping[str, float] | None = None
    """Weights of the error codes during the event; None keeps the steady mix."""
    capacity_factor: float = 1.0
    """The engine's capacity during the event, as a share of its usual capacity."""

    def in_event(self, simulated: float) -> bool:
        if self.event == "steady" or simulated < self.warmup:
            return False
        since = simulated - self.warmup
        if self.duration is None:
            return True
        if self.period is not None:
            since %= self.period
        return since < self.duration

    def at(self, simulated: float, error_share: float) -> Conditions:
        """Conditions at ``simulated`` seconds after the start, given the steady error share."""
        if not self.in_event(simulated):
            phase = "warm-up" if self.event != "steady" and simulated < self.warmup else "steady"
            return Conditions(phase, 1.0, True, error_share, STEADY_ERROR_CODES)
        return Conditions(
            self.event,
            self.arrival_factor,
            self.syncing,
            error_share if self.error_share is None else self.error_share,
            STEADY_ERROR_CODES if self.error_codes is None else self.error_codes,
            self.capacity_factor,
        )


STEADY_ERROR_SHARE = 0.02

STEADY_ERROR_CODES: Mapping[str, float] = {
    "DUPLICATE_VALUE": 22,
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": 18,
    "UNABLE_TO_LOCK_ROW": 14,
    "INVALID_EMAIL_ADDRESS": 12,
    "REQUIRED_FIELD_MISSING": 10,
    "REQUEST_LIMIT_EXCEEDED": 6,
    "INSUFFICIENT_ACCESS_OR_READONLY": 6,
    "ENTITY_IS_DELETED": 5,
    "STRING_TOO_LONG": 4,
    "INVALID_CROSS_REFERENCE_KEY": 3,
}

_STORM_CODE = "REQUEST_LIMIT_EXCEEDED"
_STEADY_OTHERS = sum(w for code, w in STEADY_ERROR_CODES.items() if code != _STORM_CODE)
STORM_ERROR_CODES: Mapping[str, float] = {
    # 85% of failed attempts hit the API limit; the usual mix makes up the rest.
    **{
        code: 15 * weight / _STEADY_OTHERS
        for code, weight in STEADY_ERROR_CODES.items()
        if code != _STORM_CODE
    },
    _STORM_CODE: 85,
}

SCENARIOS: Mapping[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "steady",
            "arrivals below the engine's capacity: a small backlog, ~2% of attempts fail",
        ),
        Scenario(
            "burst",
            "after 60 s, arrivals x5 for 90 s, every 30 min; the backlog peaks and drains alone",
            event="burst",
            duration=90.0,
            period=1800.0,
            arrival_factor=5.0,
        ),
        Scenario(
            "stall",
            "after 60 s the engine stops syncing while changes keep arriving",
            event="stalled",
            syncing=False,
        ),
        Scenario(
            "near-stall",
            "after 60 s the engine slows to a thirtieth: one change in twenty arriving is synced",
            event="nearly stalled",
            capacity_factor=1 / 30,
        ),
        Scenario(
            "error-storm",
            "after 60 s, 60% of attempts fail, mostly REQUEST_LIMIT_EXCEEDED (retried)",
            event="error storm",
            error_share=0.6,
            error_codes=STORM_ERROR_CODES,
        ),
    )
}


# --- what a CRM says when a change fails ---------------------------------------------------


@dataclass(frozen=True)
class ErrorKind:
    """A CRM error code: whether the engine retries it and the messages it comes with."""

    code: str
    retriable: bool
    messages: Mapping[str, tuple[str, ...]]
    """Message templates per object type; key ``*`` for any object."""
    operations: frozenset[str] = frozenset({"insert", "update"})

    def applies(self, object_type: str, operation: str) -> bool:
        return operation in self.operations and (
            object_type in self.messages or "*" in self.messages
        )

    def templates(self, object_type: str) -> tuple[str, ...]:
        return self.messages.get(object_type) or self.messages["*"]


ERROR_KINDS: Mapping[str, ErrorKind] = {
    kind.code: kind
    for kind in (
        ErrorKind(
            "DUPLICATE_VALUE",
            False,
            {
                "lead": (
                    "duplicate value found: Email duplicates value on record with id: {other}",
                ),
                "contact": (
                    "duplicate value found: Email duplicates value on record with id: {other}",
                    "duplicate value found: External_Id__c duplicates value on record with id: "
                    "{other}",
                ),
                "*": (
                    "duplicate value found: External_Id__c duplicates value on record with id: "
                    "{other}",
                ),
            },
        ),
        ErrorKind(
            "REQUEST_LIMIT_EXCEEDED",
            True,
            {
                "*": (
                    "TotalRequests Limit exceeded.",
                    "ConcurrentPerOrgLongTxn Limit exceeded.",
                    "Too many concurrent API requests in the last 60 seconds; try again later.",
                )
            },
        ),
        ErrorKind(
            "UNABLE_TO_LOCK_ROW",
            True,
            {"*": ("unable to obtain exclusive access to this record or 1 records: {record}",)},
            frozenset({"update"}),
        ),
        ErrorKind(
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            False,
            {
                "lead": (
                    "Postal code is required for leads in Germany, Austria and Switzerland: "
                    "[PostalCode]",
                    "Lead Source must be set before a lead is handed to sales: [LeadSource]",
                ),
                "contact": ("A contact needs a phone number or an e-mail address: [Phone]",),
                "account": ("VAT number must start with the two-letter country code: [VAT__c]",),
                "opportunity": (
                    "Close Date cannot be in the past for an open opportunity: [CloseDate]",
                    "Amount is required from stage Proposal/Price Quote on: [Amount]",
                ),
            },
        ),
        ErrorKind(
            "INVALID_EMAIL_ADDRESS",
            False,
            {
                "lead": ("Email: invalid email address: {bad_email}",),
                "contact": ("Email: invalid email address: {bad_email}",),
            },
        ),
        ErrorKind(
            "REQUIRED_FIELD_MISSING",
            False,
            {
                "lead": ("Required fields are missing: [LastName, Company]",),
                "contact": ("Required fields are missing: [LastName]",),
                "account": ("Required fields are missing: [Name]",),
                "opportunity": ("Required fields are missing: [StageName, CloseDate]",),
                "*": ("Required fields are missing: [Name]",),
            },
            frozenset({"insert"}),
        ),
        ErrorKind(
            "INSUFFICIENT_ACCESS_OR_READONLY",
            False,
            {
                "*": (
                    "insufficient access rights on object id",
                    "insufficient access rights on cross-reference id: {other}",
                )
            },
        ),
        ErrorKind(
            "ENTITY_IS_DELETED",
            False,
            {"*": ("entity is deleted",)},
            frozenset({"update"}),
        ),
        ErrorKind(
            "STRING_TOO_LONG",
            False,
            {
                "lead": ("Title: data value too large: {long_title} (max length=128)",),
                "contact": ("Title: data value too large: {long_title} (max length=128)",),
                "*": ("Description: data value too large (max length=32000)",),
            },
        ),
        ErrorKind(
            "INVALID_CROSS_REFERENCE_KEY",
            False,
            {
                "contact": ("invalid cross reference id: AccountId {other}",),
                "opportunity": ("invalid cross reference id: AccountId {other}",),
            },
        ),
    )
}

_KEY_PREFIX = {"lead": "00Q", "contact": "003", "account": "001", "opportunity": "006"}
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIRST = (
    "Anna", "Lukas", "Sophie", "Jonas", "Marie", "Felix", "Lena", "Paul", "Emma", "Leon",
    "Julia", "Max", "Clara", "Elias", "Hannah", "Noah", "Chloé", "Mateo", "Zoë", "Jürgen",
    "Sarah", "David", "Olivia", "James", "Amélie", "Luca", "Nora", "Henrik", "Ines", "Tomás",
)  # fmt: skip
_LAST = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
    "Hoffmann", "Schäfer", "Koch", "Richter", "Klein", "Wolf", "Neumann", "Schwarz",
    "Dubois", "Martin", "Rossi", "García", "Smith", "Johnson", "O'Brien", "Nowak", "Jensen",
    "van Dijk", "Lefèvre", "Andersson", "Costa", "Brown",
)  # fmt: skip
_COMPANY = (
    "Nordwind Logistik GmbH", "Alpenblick Software AG", "Rheinmetallbau KG",
    "Blue Harbor Analytics", "Hansa Medizintechnik GmbH", "Sonnenfeld Energie eG",
    "Acme Industrial Ltd", "Lumière Cosmétiques SA", "Grünwerk Bau GmbH & Co. KG",
    "Northstar Retail Inc.", "Vega Finanzpartner AG", "Kieler Werft Service GmbH",
    "Baltic Foods ApS", "Helix Biolabs Ltd", "Isar Mobility GmbH", "Costa Verde Turismo Lda",
)  # fmt: skip
_PRODUCT = (
    "250 licences", "Enterprise renewal", "Onboarding package", "Premium support 2y",
    "Pilot project", "Upsell analytics add-on", "Framework agreement",
)  # fmt: skip
_ASCII = str.maketrans(
    {"ü": "ue", "ö": "oe", "ä": "ae", "ß": "ss", "é": "e", "è": "e", "á": "a", "í": "i"}
)


def _weights(choices: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    if choices is None:
        return dict(OBJECT_WEIGHTS)
    if isinstance(choices, Mapping):
        weights = {str(key): float(value) for key, value in choices.items()}
    else:
        weights = dict.fromkeys(choices, 1.0)
    if not weights or any(value < 0 for value in weights.values()) or not sum(weights.values()):
        raise ValueError("objects need at least one positive weight")
    return weights


Change = tuple[str, str, str, str]
"""(object_type, record_id, operation, direction) of one change."""
_CHANGE_COLUMNS = ("object_type", "record_id", "operation", "direction")


class Traffic:
    """Draws changes, record ids, names and error details; all randomness from one ``rng``."""

    def __init__(self, rng: random.Random, objects: Mapping[str, float]) -> None:
        self.rng = rng
        self.objects = list(objects)
        self._object_cum = list(itertools.accumulate(objects.values()))
        self._operations = list(OPERATION_WEIGHTS)
        self._operation_cum = list(itertools.accumulate(OPERATION_WEIGHTS.values()))
        self._directions = list(DIRECTION_WEIGHTS)
        self._direction_cum = list(itertools.accumulate(DIRECTION_WEIGHTS.values()))
        # Updates touch records that exist: recent ids per object, a bounded pool.
        self._known: dict[str, deque[str]] = {name: deque(maxlen=5000) for name in objects}

    def record_id(self, object_type: str) -> str:
        """A CRM-style 18-character id: the object's key prefix, then letters and digits."""
        prefix = _KEY_PREFIX.get(object_type, "a0" + _BASE62[zlib.crc32(object_type.encode()) % 62])
        token = base64.b64encode(self.rng.getrandbits(72).to_bytes(9, "big"), altchars=b"Xy")
        return prefix + "Dn0" + token.decode()

    def changes(self, count: int) -> Iterator[Change]:
        """``count`` changes: (object_type, record_id, operation, direction)."""
        rng = self.rng
        objects = rng.choices(self.objects, cum_weights=self._object_cum, k=count)
        operations = rng.choices(self._operations, cum_weights=self._operation_cum, k=count)
        directions = rng.choices(self._directions, cum_weights=self._direction_cum, k=count)
        for object_type, operation, direction in zip(objects, operations, directions, strict=True):
            known = self._known[object_type]
            if operation == "update" and known:
                record_id = known[int(rng.random() * len(known))]
            else:
                record_id = self.record_id(object_type)
                known.append(record_id)
            yield object_type, record_id, operation, direction

    def error_code(self, object_type: str, operation: str, weights: Mapping[str, float]) -> str:
        codes = [
            code
            for code in weights
            if code not in ERROR_KINDS or ERROR_KINDS[code].applies(object_type, operation)
        ]
        if not codes:
            return "UNKNOWN_EXCEPTION"
        return self.rng.choices(codes, weights=[weights[code] for code in codes])[0]

    def failure(self, change: Change, code: str, failed_at: datetime) -> dict[str, Any]:
        """A ``sync_error`` row for a failed attempt at ``change``."""
        object_type, record_id, operation, direction = change
        # The same record keeps its name across retries: derive it from the id.
        person = random.Random(record_id)
        first, last = person.choice(_FIRST), person.choice(_LAST)
        company = person.choice(_COMPANY)
        email = (
            f"{first}.{last}".lower().translate(_ASCII).replace(" ", "").replace("'", "")
            + "@"
            + company.split()[0].lower().translate(_ASCII)
            + person.choice((".de", ".com", ".eu", ".at", ".ch"))
        )
        if object_type in ("lead", "contact"):
            name = email if person.random() < 0.4 else f"{first} {last}"
        elif object_type == "account":
            name = company
        elif object_type == "opportunity":
            name = f"{company} - {person.choice(_PRODUCT)}"
        else:
            name = f"{object_type.title()} {record_id[-6:]}"
        kind = ERROR_KINDS.get(code)
        if kind is None:
            message = f"{code}: the CRM rejected the change"
        else:
            template = self.rng.choice(kind.templates(object_type))
            message = template.format(
                other=self.record_id(object_type),
                record=record_id,
                bad_email=self.rng.choice(
                    (
                        email.replace("@", "@@"),
                        email.replace("@", " at "),
                        email.replace("@", "@."),
                        email.rsplit(".", 1)[0],
                        email + ",",
                    )
                ),
                long_title="Head of " + "International " * 12 + "Business Development",
            )
        return {
            "object_type": object_type,
            "record_id": record_id,
            "operation": operation,
            "direction": direction,
            "record_name": name,
            "error_code": code,
            "error_message": message,
            "failed_at": failed_at,
        }


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean < 30:
        limit, count, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
        return count
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


# --- the clock -----------------------------------------------------------------------------


def database_now(connection: Connection) -> datetime:
    """The database's clock in UTC, as a naive datetime like the reference columns."""
    name = connection.dialect.name
    if name == "postgresql":
        value: Any = connection.execute(text("SELECT clock_timestamp() AT TIME ZONE 'UTC'"))
    elif name in ("mysql", "mariadb"):
        value = connection.execute(text("SELECT UTC_TIMESTAMP(6)"))
    elif name == "sqlite":
        value = connection.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    else:
        return datetime.now(UTC).replace(tzinfo=None)
    now = value.scalar_one()
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    return now  # type: ignore[no-any-return]


# --- the simulator -------------------------------------------------------------------------


@dataclass
class Counts:
    """Rows the simulator wrote: changes enqueued, synced, failed attempts, changes dropped."""

    enqueued: int = 0
    synced: int = 0
    failed: int = 0
    dropped: int = 0
    """Failed with a code that is not retried: removed from the queue."""

    def add(self, other: Counts) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))


@dataclass
class _Retries:
    """Queue rows that failed with a retriable code: when each may be tried again."""

    due: list[tuple[datetime, int]] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)

    def take_due(self, now: datetime, limit: int) -> list[tuple[datetime, int]]:
        taken: list[tuple[datetime, int]] = []
        while self.due and self.due[0][0] <= now and len(taken) < limit:
            taken.append(heapq.heappop(self.due))
        return taken

    def put_back(self, entries: Sequence[tuple[datetime, int]]) -> None:
        for entry in entries:
            heapq.heappush(self.due, entry)


_Row = Row[*tuple[Any, ...]]
_QUEUE_COLUMNS = (
    sync_queue.c.id,
    sync_queue.c.object_type,
    sync_queue.c.record_id,
    sync_queue.c.operation,
    sync_queue.c.direction,
    sync_queue.c.enqueued_at,
)


class Simulator:
    """Changes arriving in a reference store and an engine syncing them, per scenario.

    ``tick(real_seconds)`` advances the simulator's clock by that much real time (arrivals,
    then a sync cycle when one is due) and is what tests drive; ``run()`` ticks in step with the
    real clock. The clock starts at the database's ``now`` unless ``start`` (naive UTC) is given.
    Run one simulator per store: its engine remembers which queue rows it has seen.
    """

    def __init__(
        self,
        engine: Engine,
        scenario: str | Scenario = "steady",
        *,
        rate: float = 5.0,
        speed: float = 1.0,
        sync_rate: float | None = None,
        sync_interval: float = 2.0,
        error_share: float = STEADY_ERROR_SHARE,
        seed: int | None = None,
        objects: Mapping[str, float] | Sequence[str] | None = None,
        start: datetime | None = None,
    ) -> None:
        if isinstance(scenario, str):
            if scenario not in SCENARIOS:
                raise ValueError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
            scenario = SCENARIOS[scenario]
        for name, value in (("rate", rate), ("speed", speed), ("sync_interval", sync_interval)):
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        if not 0 <= error_share <= 1:
            raise ValueError(f"error_share must lie between 0 and 1, not {error_share!r}")
        self.engine = engine
        self.scenario = scenario
        self.rate = rate
        self.speed = speed
        self.sync_rate = 1.5 * rate if sync_rate is None else sync_rate
        if not self.sync_rate >= 0 or not math.isfinite(self.sync_rate):
            raise ValueError(f"sync_rate must be a number >= 0, not {sync_rate!r}")
        self.sync_interval = sync_interval
        self.error_share = error_share
        self.rng = random.Random(seed)
        self.traffic = Traffic(self.rng, _weights(objects))
        if start is None:
            with engine.connect() as connection:
                start = database_now(connection)
        self.started = start
        self.now = start
        """The simulator's clock (naive UTC): every timestamp it writes comes from it."""
        self.elapsed = 0.0
        """Real seconds simulated so far."""
        self.totals = Counts()
        self.phase = self.conditions().phase
        self._budget = 0.0
        self._next_cycle = start + timedelta(seconds=sync_interval * self.rng.random())
        # The last fresh row taken, as (enqueued_at, id): the engine works oldest first. Ids
        # alone will not do: SQLite hands out a deleted highest id again.
        self._cursor: tuple[datetime, int] | None = None
        self._retries = _Retries()

    @property
    def simulated(self) -> float:
        """Simulated seconds since the start."""
        return self.elapsed * self.speed

    def conditions(self) -> Conditions:
        return self.scenario.at(self.simulated, self.error_share)

    def tick(self, real_seconds: float) -> Counts:
        """Advance the clock by ``real_seconds``: write arrivals, then sync if a cycle is due."""
        return self.advance_to(self.now + timedelta(seconds=real_seconds))

    def advance_to(self, now: datetime) -> Counts:
        counts = Counts()
        seconds = (now - self.now).total_seconds()
        if seconds <= 0:
            return counts
        arrivals = self._arrivals(seconds)
        if arrivals:
            with self.engine.begin() as connection:
                connection.execute(sync_queue.insert(), arrivals)
        counts.enqueued = len(arrivals)
        self.totals.enqueued += len(arrivals)
        self.now = now
        self.elapsed += seconds

        conditions = self.conditions()
        if conditions.phase != self.phase:
            log.info(
                "scenario phase",
                extra={"phase": conditions.phase, "simulated_seconds": round(self.simulated)},
            )
            self.phase = conditions.phase
        if conditions.syncing:
            # Capacity accrues with time but idle capacity cannot be saved up for later.
            rate = self.sync_rate * self.speed * conditions.capacity_factor
            self._budget += rate * seconds
            self._budget = min(self._budget, rate * max(3 * self.sync_interval, seconds))
            if now >= self._next_cycle:
                jitter = self.sync_interval * self.rng.uniform(0.5, 1.5)
                self._next_cycle = now + timedelta(seconds=jitter)
                capacity = int(self._budget)
                attempts = self._cycle(now, capacity, conditions, counts)
                self._budget = self._budget - attempts if attempts == capacity else 0.0
        else:
            self._budget = 0.0
        return counts

    def _arrivals(self, seconds: float) -> list[dict[str, Any]]:
        """Changes arriving over the next ``seconds`` real seconds, oldest first."""
        simulated = seconds * self.speed
        steps = min(1000, max(1, math.ceil(simulated / _ARRIVAL_STEP)))
        times: list[float] = []
        for step in range(steps):
            middle = self.simulated + (step + 0.5) * simulated / steps
            factor = self.scenario.at(middle, self.error_share).arrival_factor
            count = _poisson(self.rng, self.rate * factor * simulated / steps)
            times.extend((step + self.rng.random()) * seconds / steps for _ in range(count))
        times.sort()
        return [
            {**dict(zip(_CHANGE_COLUMNS, change, strict=True)), "enqueued_at": self.now + delay}
            for change, delay in zip(
                self.traffic.changes(len(times)),
                (timedelta(seconds=offset) for offset in times),
                strict=True,
            )
        ]

    def _cycle(self, now: datetime, capacity: int, conditions: Conditions, counts: Counts) -> int:
        """One sync cycle: up to ``capacity`` attempts, oldest first, in one transaction."""
        if capacity <= 0:
            return 0
        due = self._retries.take_due(now, capacity)
        try:
            with self.engine.begin() as connection:
                retried, fresh = self._pending(connection, [entry[1] for entry in due], capacity)
                rows = retried + fresh
                synced, failed, gone, retry = self._attempt(rows, now, conditions)
                for chunk in _chunks(gone, _IN_CHUNK):
                    connection.execute(delete(sync_queue).where(sync_queue.c.id.in_(chunk)))
                if synced:
                    connection.execute(sync_history.insert(), synced)
                if failed:
                    connection.execute(sync_error.insert(), failed)
        except BaseException:
            self._retries.put_back(due)
            raise
        # Only now, after the commit, does the engine's memory follow the store.
        if fresh:
            self._cursor = (_naive(fresh[-1].enqueued_at), int(fresh[-1].id))
        for row_id in gone:
            self._retries.attempts.pop(row_id, None)
        for entry in due:
            if entry[1] not in retry and entry[1] not in gone:
                self._retries.attempts.pop(entry[1], None)  # the row vanished from the queue
        for row_id in retry:
            attempt = self._retries.attempts.get(row_id, 0) + 1
            self._retries.attempts[row_id] = attempt
            backoff = min(_MAX_BACKOFF, 5.0 * 2 ** (attempt - 1)) * self.rng.uniform(0.8, 1.2)
            heapq.heappush(self._retries.due, (now + timedelta(seconds=backoff), row_id))
        cycle = Counts(synced=len(synced), failed=len(failed), dropped=len(gone) - len(synced))
        counts.add(cycle)
        self.totals.add(cycle)
        return len(rows)

    def _pending(
        self, connection: Connection, due: list[int], capacity: int
    ) -> tuple[list[_Row], list[_Row]]:
        """Queue rows to attempt: (retries now due, fresh rows after the cursor), oldest first."""
        retried: list[_Row] = []
        for chunk in _chunks(due, _IN_CHUNK):
            query = select(*_QUEUE_COLUMNS).where(sync_queue.c.id.in_(chunk))
            retried.extend(connection.execute(query).all())
        retried.sort(key=lambda row: (_naive(row.enqueued_at), int(row.id)))
        fresh: list[_Row] = []
        if len(retried) < capacity:
            query = (
                select(*_QUEUE_COLUMNS)
                .where(sync_queue.c.enqueued_at <= self.now)
                .order_by(sync_queue.c.enqueued_at, sync_queue.c.id)
                .limit(capacity - len(retried))
            )
            if self._cursor is not None:
                enqueued_at, row_id = self._cursor
                query = query.where(
                    or_(
                        sync_queue.c.enqueued_at > enqueued_at,
                        and_(sync_queue.c.enqueued_at == enqueued_at, sync_queue.c.id > row_id),
                    )
                )
            seen = {int(row.id) for row in retried}
            fresh = [row for row in connection.execute(query).all() if int(row.id) not in seen]
        return retried, fresh

    def _attempt(
        self, rows: Sequence[_Row], now: datetime, conditions: Conditions
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int], set[int]]:
        """Decide each attempt: (history rows, error rows, ids leaving the queue, ids to retry)."""
        synced: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        gone: list[int] = []
        retry: set[int] = set()
        for row in rows:
            change: Change = (
                str(row.object_type),
                str(row.record_id),
                str(row.operation),
                str(row.direction),
            )
            if self.rng.random() >= conditions.error_share:
                gone.append(row.id)
                synced.append(
                    {
                        **dict(zip(_CHANGE_COLUMNS, change, strict=True)),
                        "enqueued_at": _naive(row.enqueued_at),
                        "synced_at": now,
                    }
                )
                continue
            code = self.traffic.error_code(change[0], change[2], conditions.error_codes)
            failed.append(self.traffic.failure(change, code, now))
            kind = ERROR_KINDS.get(code)
            if kind is not None and kind.retriable:
                retry.add(row.id)
            else:
                gone.append(row.id)
        return synced, failed, gone, retry

    def run(
        self,
        duration: float | None = None,
        stop: threading.Event | None = None,
        tick_interval: float = 0.25,
        report_every: float = 30.0,
    ) -> Counts:
        """Tick in step with the real clock for ``duration`` seconds or until ``stop`` is set.

        A database error in one tick is logged and the next tick tries again, so the simulator
        rides out a database restart as a sync engine would.
        """
        stop = stop or threading.Event()
        began = time.monotonic()
        anchor = self.now
        reported, since_report = began, Counts()
        while not stop.is_set():
            real = time.monotonic()
            if duration is not None and real - began >= duration:
                break
            try:
                since_report.add(self.advance_to(anchor + timedelta(seconds=real - began)))
            except SQLAlchemyError as error:
                log.warning(
                    "writing to the store failed; retrying",
                    extra={"error": describe_error(error, self.engine.url)},
                )
                stop.wait(1.0)
            if real - reported >= report_every:
                log.info("traffic", extra={"phase": self.phase, **vars(since_report)})
                reported, since_report = real, Counts()
            wait = tick_interval
            if duration is not None:
                wait = min(wait, max(0.0, began + duration - time.monotonic()))
            stop.wait(wait)
        return self.totals


def _chunks(values: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _naive(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


# --- backfill ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backfilled:
    """Rows a backfill wrote."""

    history: int
    errors: int
    pending: int


_LATENCY_POOL = 8192


def _latency(rng: random.Random) -> float:
    """Enqueue-to-sync seconds: mostly a few seconds, a tail of backlog minutes, rarely hours."""
    draw = rng.random()
    if draw < 0.93:
        return min(86_400.0, rng.lognormvariate(math.log(3.0), 0.8))
    if draw < 0.995:
        return min(86_400.0, rng.lognormvariate(math.log(240.0), 1.0))
    return min(3 * 86_400.0, rng.lognormvariate(math.log(7_200.0), 1.0))


def backfill(
    engine: Engine,
    *,
    history_rows: int = 0,
    error_rows: int = 0,
    pending_rows: int = 0,
    span: float = 3 * 3600.0,
    pending_span: float = 300.0,
    end: datetime | None = None,
    objects: Mapping[str, float] | Sequence[str] | None = None,
    seed: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> Backfilled:
    """Fill a store quickly: history and errors spread over the ``span`` seconds before ``end``.

    History rows are written in ``synced_at`` order and errors in ``failed_at`` order, as an
    append-only engine writes them; pending rows were enqueued within the last
    ``pending_span`` seconds. ``end`` (naive UTC) defaults to the database's clock. Rows go in
    batches of ``batch_size`` (one executemany and one transaction each).
    """
    if min(history_rows, error_rows, pending_rows) < 0 or batch_size < 1 or span <= 0:
        raise ValueError("row counts must be >= 0, batch_size >= 1 and span > 0")
    rng = random.Random(seed)
    traffic = Traffic(rng, _weights(objects))
    if end is None:
        with engine.connect() as connection:
            end = database_now(connection)
    begin = end - timedelta(seconds=span)

    def spread(count: int, first: datetime, seconds: float) -> Iterator[datetime]:
        """``count`` moments in order, one in each of ``count`` equal slices of the span."""
        step, draw = seconds / max(count, 1), rng.random
        for index in range(count):
            yield first + timedelta(seconds=step * (index + draw()))

    # Drawn once: a million lognormal draws would cost more than the inserts.
    latencies = [timedelta(seconds=_latency(rng)) for _ in range(_LATENCY_POOL)]

    def history() -> Iterator[tuple[Any, ...]]:
        times = spread(history_rows, begin, span)
        draw = rng.random
        for change, synced_at in zip(traffic.changes(history_rows), times, strict=True):
            yield (*change, synced_at - latencies[int(draw() * _LATENCY_POOL)], synced_at)

    def errors() -> Iterator[tuple[Any, ...]]:
        times = spread(error_rows, begin, span)
        for change, failed_at in zip(traffic.changes(error_rows), times, strict=True):
            code = traffic.error_code(change[0], change[2], STEADY_ERROR_CODES)
            failure = traffic.failure(change, code, failed_at)
            yield tuple(failure[column] for column in _ERROR_COLUMNS)

    def pending() -> Iterator[tuple[Any, ...]]:
        seconds = min(pending_span, span)
        times = spread(pending_rows, end - timedelta(seconds=seconds), seconds)
        for change, enqueued_at in zip(traffic.changes(pending_rows), times, strict=True):
            yield (*change, enqueued_at)

    for table, columns, rows in (
        (sync_history, (*_CHANGE_COLUMNS, "enqueued_at", "synced_at"), history()),
        (sync_error, _ERROR_COLUMNS, errors()),
        (sync_queue, (*_CHANGE_COLUMNS, "enqueued_at"), pending()),
    ):
        while batch := list(itertools.islice(rows, batch_size)):
            with engine.begin() as connection:
                bulk_insert(connection, table, columns, batch)
    return Backfilled(history_rows, error_rows, pending_rows)


_ERROR_COLUMNS = (
    *_CHANGE_COLUMNS,
    "record_name",
    "error_code",
    "error_message",
    "failed_at",
)


def bulk_insert(
    connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert many rows the fastest way the driver offers: COPY, else a plain executemany."""
    dialect = connection.dialect
    names = ", ".join(columns)
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    if dialect.name in ("sqlite", "mysql", "mariadb") and dialect.paramstyle in (
        "qmark",
        "format",
        "pyformat",
    ):
        # Below SQLAlchemy's type processing, timestamps go as text in the format it writes
        # itself (SQLite compares them as text, so the format must match exactly).
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            f"INSERT INTO {table.name} ({names}) VALUES ({', '.join([marker] * len(columns))})",
            [
                tuple(
                    value.isoformat(" ", "microseconds") if isinstance(value, datetime) else value
                    for value in row
                )
                for row in rows
            ],
        )
        return
    connection.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])


# --- command line --------------------------------------------------------------------------


def use_wal(engine: Engine) -> None:
    """Put a SQLite file into WAL mode, so an exporter reads while the simulator writes."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")


def writer_engine(url: URL) -> Engine:
    """An engine for writing: waits for SQLite locks, keeps SQLite in WAL mode."""
    if url.get_backend_name() == "sqlite":
        engine = open_engine(url, connect_args={"timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _sqlite(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA synchronous = NORMAL")

        return engine
    return open_engine(url, pool_pre_ping=True)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number > 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return number


def _non_negative(value: str) -> float:
    return 0.0 if value.strip() in ("0", "0.0") else _positive(value)


def _share(value: str) -> float:
    number = _non_negative(value)
    if number > 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a share between 0 and 1")
    return number


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    scenarios = "\n".join(f"  {name:<12} {item.summary}" for name, item in SCENARIOS.items())
    parser = command_parser(
        "crmsync-simulator",
        "Write realistic sync-engine traffic into a reference sync store.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"scenarios (times in simulated seconds):\n{scenarios}\n\n"
            "Timestamps are real time by the database's clock; --speed scales the amount of\n"
            "traffic per real second and the scenario's timeline, not the ages."
        ),
    )
    parser.add_argument(
        "--store.url",
        dest="store_url",
        default=os.environ.get(URL_ENVIRONMENT),
        help=f"SQLAlchemy URL of the store (default: ${URL_ENVIRONMENT})",
    )
    parser.add_argument(
        "--create-schema",
        dest="create_schema",
        action="store_true",
        help="create the reference tables and indexes first where missing",
    )
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="steady")
    parser.add_argument(
        "--rate",
        type=_positive,
        default=5.0,
        help="changes arriving per simulated second (default: %(default)s)",
    )
    parser.add_argument(
        "--sync-rate",
        dest="sync_rate",
        type=_non_negative,
        default=None,
        help="sync attempts the engine makes per simulated second (default: 1.5 x --rate)",
    )
    parser.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        help="simulated seconds per real second (default: %(default)s)",
    )
    parser.add_argument(
        "--sync-interval",
        dest="sync_interval",
        type=_positive,
        default=2.0,
        help="real seconds between the engine's sync cycles, +-50%% (default: %(default)s)",
    )
    parser.add_argument(
        "--error-share",
        dest="error_share",
        type=_share,
        default=STEADY_ERROR_SHARE,
        help="share of attempts failing outside an error storm (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        default=None,
        help="real seconds to run, then exit (default: until SIGINT or SIGTERM)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible traffic")
    args = parser.parse_args(argv)
    if not args.store_url:
        parser.error(f"--store.url is required (or set {URL_ENVIRONMENT})")
    return args


def _open_store(args: argparse.Namespace) -> Engine:
    url = parse_store_url(args.store_url)
    engine = writer_engine(url)
    try:
        if args.create_schema:
            create_reference_schema(engine)
        present = set(inspect(engine).get_table_names())
        missing = [t.name for t in (sync_queue, sync_history, sync_error) if t.name not in present]
        if missing:
            raise StoreError(
                f"{display(url)}: table(s) {', '.join(missing)} missing; "
                "run with --create-schema or crmsync-schema first"
            )
        use_wal(engine)
    except SQLAlchemyError as error:
        engine.dispose()
        raise StoreError(f"{display(url)}: {describe_error(error, url)}") from None
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging_from(args)
    try:
        engine = _open_store(args)
    except StoreError as error:
        print(f"crmsync-simulator: {error}", file=sys.stderr)
        return 1
    try:
        simulator = Simulator(
            engine,
            args.scenario,
            rate=args.rate,
            speed=args.speed,
            sync_rate=args.sync_rate,
            sync_interval=args.sync_interval,
            error_share=args.error_share,
            seed=args.seed,
        )
    except SQLAlchemyError as error:
        engine.dispose()
        url = engine.url
        print(f"crmsync-simulator: {display(url)}: {describe_error(error, url)}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def shut_down(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    log.info(
        "simulating",
        extra={
            "store": display(engine.url),
            "scenario": simulator.scenario.name,
            "rate": simulator.rate,
            "sync_rate": simulator.sync_rate,
            "speed": simulator.speed,
        },
    )
    try:
        totals = simulator.run(args.duration, stop)
    finally:
        engine.dispose()
    log.info("stopped", extra=vars(totals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
