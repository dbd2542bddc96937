"""Incidents as Prometheus records them, rendered as promtool unit tests of the alert pack.

Each scenario models a store's sync traffic and the exporter's fortunes every 15 seconds, the
scrape and evaluation interval, and renders what Prometheus would store: a failed scrape
writes ``up 0`` and a stale marker on every series of the target; a store that cannot be read
drops its gauges (a stale marker each) while ``crmsync_up`` says 0 and counters keep their
values; a restart of the exporter resets its counters, which reappear at 0 once the store is
read; a scrape Prometheus never made leaves no sample at all.

The promtool test of a scenario asserts, over the whole scenario, the first and last moment
each alert was firing, that it fired without interruption in between, and that no other alert
fired. The scenarios themselves, with their expected times, are in crmsync_testing/incidents.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

STEP = 15
"""Seconds between scrapes, collections and rule evaluations."""
HALF_HOUR = 1800.0
"""The latency objective's bucket (latency_slo.threshold)."""

Schedule = Callable[[float], float]
"""A value over time (seconds since the scenario's start)."""


# --- schedules -----------------------------------------------------------------------------


def per_minute(*changes: tuple[float, float], start: float = 0.0) -> Schedule:
    """A rate of ``start`` changes a minute, then of each (minute, rate) from that minute on,
    as the changes of each step."""
    points = sorted([(0.0, start), *changes])

    def rate(t: float) -> float:
        value = points[0][1]
        for minute, per_min in points:
            if t >= minute * 60:
                value = per_min
        return value * STEP / 60

    return rate


def every(seconds: int, offset: int = 0) -> Schedule:
    """One change every ``seconds``, the first at ``offset`` seconds."""
    return lambda t: 1.0 if t >= offset and (t - offset) % seconds == 0 else 0.0


Failures = Callable[[float], Mapping[str, float]]
"""Share of attempts failing, per error code, over time."""


def failing(*changes: tuple[float, Mapping[str, float]]) -> Failures:
    """Shares per error code as of each (minute, shares)."""
    points = sorted(changes, key=lambda item: item[0])

    def shares(t: float) -> Mapping[str, float]:
        value: Mapping[str, float] = {}
        for minute, codes in points:
            if t >= minute * 60:
                value = codes
        return value

    return shares


USUAL_FAILURES = failing((0, {"DUPLICATE_VALUE": 0.01}))
"""1% of the attempts fail."""
UNLIMITED = per_minute(start=math.inf)


def steps(predicate: Callable[[int, float], bool]) -> Callable[[int], bool]:
    """A condition on the step index and its time in seconds."""
    return lambda k: predicate(k, k * STEP)


NEVER = steps(lambda k, t: False)


# --- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stuck:
    """One change that waits from ``enqueued`` to ``synced`` (minutes), failing every
    ``retry`` seconds meanwhile with ``code`` (no retries when 0)."""

    enqueued: float
    synced: float
    retry: int = 0
    code: str = "UNABLE_TO_LOCK_ROW"


@dataclass(frozen=True)
class Flow:
    """The changes of one object and direction: arrivals and an engine working oldest first.

    ``capacity`` is in attempts per step (``UNLIMITED``: everything waiting). A failed attempt
    drops its change; stuck changes wait beside the queue.
    """

    object: str
    direction: str
    arrivals: Schedule
    capacity: Schedule = UNLIMITED
    failures: Failures = USUAL_FAILURES
    stuck: tuple[Stuck, ...] = ()
    operation: str = "update"

    def labels(self, store: str) -> str:
        return (
            f'store="{store}",object="{self.object}",'
            f'operation="{self.operation}",direction="{self.direction}"'
        )


@dataclass
class _Queue:
    """A flow's state: waiting changes as [enqueued_at, count] oldest first, and totals."""

    flow: Flow
    waiting: list[list[float]] = field(default_factory=list)
    synced: float = 0.0
    fast: float = 0.0
    """Synced within the latency objective."""
    errors: dict[str, float] = field(default_factory=dict)

    def step(self, t: float) -> None:
        arrived = self.flow.arrivals(t)
        if arrived > 0:
            self.waiting.append([t - STEP / 2, arrived])
        for stuck in self.flow.stuck:
            waited = t - stuck.enqueued * 60
            waiting = 0 < waited < (stuck.synced - stuck.enqueued) * 60
            if waiting and stuck.retry and waited % stuck.retry == 0:
                self.errors[stuck.code] = self.errors.get(stuck.code, 0) + 1
            if t == stuck.synced * 60:
                self.synced += 1
                self.fast += 1 if waited <= HALF_HOUR else 0
        budget = self.flow.capacity(t)
        shares = self.flow.failures(t)
        failed_share = sum(shares.values())
        while budget > 1e-9 and self.waiting:
            head = self.waiting[0]
            taken = min(budget, head[1])
            budget -= taken
            head[1] -= taken
            for code, share in shares.items():
                self.errors[code] = self.errors.get(code, 0) + taken * share
            ok = taken * (1 - failed_share)
            self.synced += ok
            self.fast += ok if t - head[0] <= HALF_HOUR else 0
            if head[1] <= 1e-9:
                self.waiting.pop(0)

    def pending(self, t: float) -> float:
        stuck = sum(1 for s in self.flow.stuck if s.enqueued * 60 <= t < s.synced * 60)
        return sum(count for _, count in self.waiting) + stuck

    def age(self, t: float) -> float:
        enqueued = [at for at, _ in self.waiting]
        enqueued += [
            s.enqueued * 60 for s in self.flow.stuck if s.enqueued * 60 <= t < s.synced * 60
        ]
        return t - min(enqueued) if enqueued else 0.0


@dataclass(frozen=True)
class Exporter:
    """What happens to the exporter and its scrapes, by step index."""

    failed_scrapes: Callable[[int], bool] = NEVER
    """Prometheus could not scrape: up 0, every series of the target marked stale."""
    missed_scrapes: Callable[[int], bool] = NEVER
    """Prometheus made no scrape at all (itself down): no sample, not even up."""
    unreadable: Callable[[int], bool] = NEVER
    """The collection could not read the store: crmsync_up 0, gauges gone."""
    restarts: tuple[int, ...] = ()
    """Steps at which the exporter restarts: RESTART_SCRAPES scrapes fail, and its counters
    begin again at 0."""


RESTART_SCRAPES = 2
STALE = "stale"
MISSING = "_"
Value = float | str


@dataclass(frozen=True)
class Fire:
    """An alert that must fire: its labels, first and last firing time (None: the end)."""

    alert: str
    labels: Mapping[str, str]
    first: str
    last: str | None = None


@dataclass(frozen=True)
class Store:
    """A store, read by an exporter of its own (instance "<name>:9312")."""

    name: str
    flows: tuple[Flow, ...]
    exporter: Exporter = Exporter()

    @property
    def target(self) -> str:
        return f'job="crmsync",instance="{self.name}:9312"'


@dataclass(frozen=True)
class Scenario:
    """Stores side by side in one promtool test, and the alerts they must raise."""

    name: str
    about: str
    """What happens, and why the expected times follow from the configuration."""
    minutes: int
    stores: tuple[Store, ...]
    fires: tuple[Fire, ...] = ()
    watch: tuple[str, ...] = ()
    """Alerts checked; empty: every alert of the pack (nothing else may fire)."""


def seconds(duration: str) -> int:
    """'45m30s' -> 2730."""
    total, number = 0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for char in duration:
        if char.isdigit():
            number += char
        else:
            total += int(number) * units[char]
            number = ""
    return total


class _Recorder:
    """The samples Prometheus stores for each series of the target, scrape by scrape."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.series: dict[str, list[Value]] = {}
        self._present: set[str] = set()

    def scrape(self, k: int, served: Mapping[str, float] | None) -> None:
        """Scrape ``k``: the exporter's answer, or None when the scrape failed."""
        for name in self._present - set(served or {}):
            self.series[name][k] = STALE
        for name, value in (served or {}).items():
            self.series.setdefault(name, [MISSING] * self.count)[k] = value
        self._present = set(served or {})


def record(scenario: Scenario) -> dict[str, list[Value]]:
    """Every series of the scenario, one value (or stale marker, or nothing) per step."""
    count = scenario.minutes * 60 // STEP + 1
    series: dict[str, list[Value]] = {}
    for store in scenario.stores:
        series.update(_record_store(store, count))
    return series


def _record_store(store: Store, count: int) -> dict[str, list[Value]]:
    queues = [_Queue(flow) for flow in store.flows]
    exporter, target = store.exporter, store.target
    recorder = _Recorder(count)
    up: list[Value] = [MISSING] * count
    # what the running exporter process counts: totals at its start, and whether it has
    # read the store (and so serves counters) since
    baseline: dict[str, float] = {}
    served_counters: set[str] = set()
    collections = failures = 0.0
    read_since_start = False
    for k in range(count):
        t = float(k * STEP)
        for queue in queues:
            queue.step(t)
        totals = _totals(store, queues)
        if k == 0 or k in exporter.restarts:
            baseline, served_counters, read_since_start = dict(totals), set(), False
            collections = failures = 0.0
        readable = not exporter.unreadable(k)
        collections += 1
        failures += 0 if readable else 1
        read_since_start = read_since_start or readable
        if exporter.missed_scrapes(k):
            continue
        restarting = any(r <= k < r + RESTART_SCRAPES for r in exporter.restarts)
        if exporter.failed_scrapes(k) or restarting:
            up[k] = 0
            recorder.scrape(k, None)
            continue
        up[k] = 1
        own = f'{target},store="{store.name}"'
        served: dict[str, float] = {
            f"crmsync_up{{{own}}}": 1.0 if readable else 0.0,
            f"crmsync_collections_total{{{own}}}": collections,
            f"crmsync_collection_failures_total{{{own}}}": failures,
        }
        if read_since_start:
            for name, total in totals.items():
                since_start = total - baseline.get(name, 0.0)
                if name in served_counters:
                    served[name] = since_start
                elif since_start > 0 or "_errors_" not in name:
                    # a label set appears at 0, so that Prometheus counts its first increments;
                    # an error code appears with its first failure
                    served_counters.add(name)
                    served[name] = 0.0
        if readable:
            for queue in queues:
                labels = f"{target},{queue.flow.labels(store.name)}"
                served[f"crmsync_pending_records{{{labels}}}"] = queue.pending(t)
                served[f"crmsync_oldest_pending_age_seconds{{{labels}}}"] = queue.age(t)
        recorder.scrape(k, served)
    return {f"up{{{target}}}": up, **recorder.series}


def _totals(store: Store, queues: Sequence[_Queue]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for queue in queues:
        labels = f"{store.target},{queue.flow.labels(store.name)}"
        totals[f"crmsync_records_synced_total{{{labels}}}"] = queue.synced
        totals[f'crmsync_sync_latency_seconds_bucket{{{labels},le="1800"}}'] = queue.fast
        totals[f'crmsync_sync_latency_seconds_bucket{{{labels},le="+Inf"}}'] = queue.synced
        totals[f"crmsync_sync_latency_seconds_count{{{labels}}}"] = queue.synced
        for code, errors in sorted(queue.errors.items()):
            totals[f'crmsync_sync_errors_total{{{labels},error_code="{code}"}}'] = errors
    return totals


# --- promtool ----------------------------------------------------------------------------


def _number(value: float) -> str:
    text = f"{round(value, 4):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def encode(values: Sequence[Value]) -> str:
    """promtool's notation, runs folded: ``a+bxn`` is n+1 values from a in steps of b."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        value = values[i]
        if isinstance(value, str):
            run = i
            while run + 1 < len(values) and values[run + 1] == value and value == MISSING:
                run += 1
            parts.append(value if run == i else f"{value}x{run - i}")
            i = run + 1
            continue
        j = i + 1
        step = None
        while j < len(values) and not isinstance(values[j], str):
            delta = round(float(values[j]) - float(values[j - 1]), 4)
            if step is None:
                step = delta
            elif delta != step:
                break
            j += 1
        run = j - 1 - i
        if run >= 2 and step is not None:
            sign = "-" if step < 0 else "+"
            parts.append(
                f"{_number(value)}x{run}"
                if step == 0
                else f"{_number(value)}{sign}{_number(abs(step))}x{run}"
            )
            i = j
        else:
            parts.append(_number(value))
            i += 1
    return " ".join(parts)


def _labels(fire: Fire) -> str:
    labels = {"alertname": fire.alert, "alertstate": "firing", **fire.labels}
    return "{" + ", ".join(f'{name}="{value}"' for name, value in sorted(labels.items())) + "}"


def promtool_test(scenario: Scenario) -> dict[str, Any]:
    end = f"{scenario.minutes}m"
    selector = 'alertstate="firing"'
    if scenario.watch:
        selector += f', alertname=~"{"|".join(scenario.watch)}"'
    alerts, window = f"ALERTS{{{selector}}}", f"[{end}:{STEP}s]"
    first, last, unbroken = [], [], []
    for fire in scenario.fires:
        start = seconds(fire.first)
        stop = seconds(fire.last) if fire.last else scenario.minutes * 60
        first.append({"labels": _labels(fire), "value": start})
        last.append({"labels": _labels(fire), "value": stop})
        unbroken.append({"labels": _labels(fire), "value": (stop - start) // STEP + 1})
    return {
        "name": scenario.name,
        "interval": f"{STEP}s",
        "input_series": [
            {"series": name, "values": encode(values)} for name, values in record(scenario).items()
        ],
        "promql_expr_test": [
            {
                "expr": f"min_over_time(timestamp({alerts}){window})",
                "eval_time": end,
                "exp_samples": first,
            },
            {
                "expr": f"max_over_time(timestamp({alerts}){window})",
                "eval_time": end,
                "exp_samples": last,
            },
            {
                "expr": f"count_over_time({alerts}{window})",
                "eval_time": end,
                "exp_samples": unbroken,
            },
        ],
    }


HEADER = """\
# promtool test rules: incidents as Prometheus records them, every 15s, with failed scrapes
# (up 0 and stale markers), unreadable stores, exporter restarts and missed scrapes. Each test
# asserts when every alert first and last fired, that it fired without a break in between,
# and that nothing else fired.
# Generated by `python -m crmsync_testing.incidents` from crmsync_testing/incidents.py, where each
# scenario explains its expected times: edit that, not this file.
"""


def render(scenarios: Sequence[Scenario]) -> str:
    """The promtool test file of ``scenarios``."""
    document = {
        "rule_files": ["../recording_rules.yml", "../alerting_rules.yml"],
        "evaluation_interval": f"{STEP}s",
        # recording rules first, so that alerts read this evaluation's recorded values
        "group_eval_order": [
            "crmsync.rules",
            "crmsync-latency-slo.rules",
            "crmsync-backlog",
            "crmsync-errors",
            "crmsync-latency",
            "crmsync-exporter",
            "crmsync-exporter-health",
        ],
        "tests": [promtool_test(scenario) for scenario in scenarios],
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=1 << 20)
