"""Durations: one grammar for the exporter's configuration and the alert pack's."""

from __future__ import annotations

import pytest

from crmsync_tools.alerts import Duration
from exporter.config import parse_config
from exporter.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5s", 1.5),
        (" 5m ", 300.0),
    ],
)
def test_durations_read_as_prometheus_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "often", "5 minutes", "1w", "-5s", "s", "1m 30s"])
def test_anything_else_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as raised:
        parse_duration(text)
    assert repr(text) in str(raised.value)


@pytest.mark.parametrize("text", ["250ms", "15s", "1m30s", "2h", "1d", "1h1m1s1ms"])
def test_the_configuration_and_the_alert_pack_read_a_duration_alike(text: str) -> None:
    store = parse_config(f"stores: [{{name: a, url: 'sqlite://', interval: {text}}}]").stores[0]
    assert Duration.parse(text).seconds == pytest.approx(store.interval)
    assert str(Duration.parse(text)) == text  # and the rules write it back as it was written


def test_the_alert_pack_refuses_what_prometheus_cannot_write() -> None:
    with pytest.raises(ValueError, match="whole milliseconds"):
        Duration.parse("0.5ms")
    with pytest.raises(ValueError, match="expected a duration"):
        Duration.parse("soon")
