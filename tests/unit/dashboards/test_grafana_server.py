"""The parts of Grafana's server the dashboard tests re-implement, against Grafana's own
documented examples (docs of the SQL datasources, pkg/promlib's tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from crmsync_testing.grafana_server import (
    TimeRange,
    expand_macros,
    format_interval,
    go_duration,
    interpolate_prometheus,
    prometheus_frames,
    prometheus_step,
    rate_interval,
    round_interval,
    rows_frame,
)

# The docs' examples use 2017-05-10T10:06:23Z to 2017-05-10T10:09:43Z (1494410783..1494410983).
DOCS = TimeRange(datetime.fromtimestamp(1494410783, UTC), datetime.fromtimestamp(1494410983, UTC))


@pytest.mark.parametrize(
    ("sql", "dialect", "expanded"),
    [
        (
            "WHERE $__timeFilter(dateColumn)",
            "postgresql",
            "WHERE dateColumn BETWEEN '2017-05-10T10:06:23Z' AND '2017-05-10T10:09:43Z'",
        ),
        (
            "SELECT $__timeFrom(), $__timeTo()",
            "postgresql",
            "SELECT '2017-05-10T10:06:23Z', '2017-05-10T10:09:43Z'",
        ),
        ("SELECT $__time(dateColumn)", "postgresql", 'SELECT dateColumn AS "time"'),
        (
            "WHERE $__timeFilter(dateColumn)",
            "mysql",
            "WHERE dateColumn BETWEEN FROM_UNIXTIME(1494410783) AND FROM_UNIXTIME(1494410983)",
        ),
        ("SELECT $__timeFrom()", "mysql", "SELECT FROM_UNIXTIME(1494410783)"),
        (
            "WHERE $__unixEpochFilter(dateColumn)",
            "mysql",
            "WHERE dateColumn >= 1494410783 AND dateColumn <= 1494410983",
        ),
        # Template variables are the frontend's: a "$x" that is no macro call stays.
        ("SELECT '$__all', '$x'", "postgresql", "SELECT '$__all', '$x'"),
    ],
)
def test_sql_macros_expand_as_grafanas_docs_show(sql: str, dialect: str, expanded: str) -> None:
    assert expand_macros(sql, DOCS, dialect) == expanded  # type: ignore[arg-type]


def test_an_unknown_macro_is_an_error_not_text() -> None:
    with pytest.raises(ValueError, match="__nope"):
        expand_macros("SELECT $__nope(x)", DOCS, "postgresql")


@pytest.mark.parametrize(
    ("seconds", "go"),
    [(20, "20s"), (60, "1m0s"), (90, "1m30s"), (7200, "2h0m0s"), (1.5, "1.5s"), (0.5, "500ms")],
)
def test_durations_print_as_go_prints_them(seconds: float, go: str) -> None:
    assert go_duration(timedelta(seconds=seconds)) == go


@pytest.mark.parametrize(
    ("seconds", "text"), [(15, "15s"), (60, "1m"), (90, "1m"), (7200, "2h"), (0.2, "200ms")]
)
def test_intervals_print_as_gtime_formats_them(seconds: float, text: str) -> None:
    assert format_interval(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("seconds", "rounded"), [(2.4, 2), (4, 5), (13, 15), (40, 30), (100, 120), (3600 * 30, 86400)]
)
def test_intervals_round_as_the_interval_calculator_rounds(seconds: float, rounded: float) -> None:
    assert round_interval(timedelta(seconds=seconds)) == timedelta(seconds=rounded)


def test_rate_interval_is_four_scrapes_or_interval_plus_one() -> None:
    assert rate_interval(timedelta(seconds=15), "15s") == timedelta(minutes=1)
    assert rate_interval(timedelta(minutes=2), "15s") == timedelta(minutes=2, seconds=15)
    assert rate_interval(timedelta(seconds=1), "1s") == timedelta(seconds=4)


def test_the_server_replaces_its_own_variables() -> None:
    hour = TimeRange(datetime(2026, 1, 1, 12, tzinfo=UTC), datetime(2026, 1, 1, 13, tzinfo=UTC))
    query = {"intervalMs": 15000, "maxDataPoints": 1500}
    assert prometheus_step(query, hour) == timedelta(seconds=15)
    expr, step = interpolate_prometheus(
        "rate(x[$__rate_interval]) / $__range_s + increase(x[${__range}]) + $__interval_ms",
        query,
        hour,
        "15s",
    )
    assert expr == "rate(x[1m0s]) / 3600 + increase(x[3600s]) + 15000"
    assert step == timedelta(seconds=15)


def test_a_query_without_series_answers_one_frame_without_fields() -> None:
    frames = prometheus_frames(
        "N0", {}, {"resultType": "vector", "result": []}, "up", timedelta(seconds=15)
    )
    assert frames == [
        {
            "schema": {
                "refId": "N0",
                "meta": {"executedQueryString": "Expr: up\nStep: 15s"},
                "fields": [],
            },
            "data": {"values": []},
        }
    ]


def test_nan_samples_travel_as_entities() -> None:
    result = {"metric": {"object": "lead"}, "value": [1700000000.5, "NaN"]}
    (frame,) = prometheus_frames(
        "A", {}, {"resultType": "vector", "result": [result]}, "x", timedelta(seconds=1)
    )
    assert frame["data"] == {"values": [[1700000000500], [None]], "entities": [None, {"NaN": [0]}]}
    time_field, value_field = frame["schema"]["fields"]
    assert time_field["type"] == "time"
    assert value_field["labels"] == {"object": "lead"}
    assert value_field["config"]["displayNameFromDS"] == '{object="lead"}'


def test_sql_rows_become_typed_fields_and_no_rows_no_fields() -> None:
    moment = datetime(2026, 1, 1, 12, 0, 0, 250000)
    frame = rows_frame("A", ["time", "n", "age", "name"], [(moment, 3, Decimal("1.5"), None)], "q")
    kinds = [(f["name"], f["type"], f["typeInfo"]["frame"]) for f in frame["schema"]["fields"]]
    assert kinds == [
        ("time", "time", "time.Time"),
        ("n", "number", "int64"),
        ("age", "number", "float64"),
        ("name", "string", "string"),
    ]
    assert frame["data"]["values"] == [[1767268800250], [3], [1.5], [None]]
    assert rows_frame("A", ["time"], [], "q")["schema"]["fields"] == []
