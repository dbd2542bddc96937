"""The configuration of other store shapes: the new mapping keys, their mistakes named by key
path, and what the heroku-connect preset fills in."""

from __future__ import annotations

from typing import Any

import pytest

from crmsync_testing.helpers import runner_for, store_config
from exporter.config import ConfigError, RowFilter


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"mapping": {"errors": {"error_code": None, "error_code_pattern": "[A-Z]+:"}}},
            "stores[0].mapping.errors.error_code_pattern: '[A-Z]+:' has no group",
        ),
        (
            {"mapping": {"queue": {"error_code_pattern": "(["}}},
            "stores[0].mapping.queue.error_code_pattern: '([' is not a regular expression",
        ),
        (
            {"operations": {"upsert": ["U"]}, "mapping": {"constants": {"operation": "upsert"}}},
            "stores[0]: operations has no effect where mapping.constants gives the label",
        ),
        (
            {"mapping": {"constants": {"object_type": "Lead"}}},
            "stores[0].mapping.constants.object_type: 'Lead' is not a usable label value",
        ),
        (
            {"mapping": {"queue": {"filter": {"column": "state"}}}},
            "stores[0].mapping.queue.filter.values: required key is missing",
        ),
        (
            {"mapping": {"failing_from_errors": True, "errors": None}},
            "stores[0].mapping: failing_from_errors needs an errors table",
        ),
        (
            {"mapping": {"failing_from_errors": True, "single_table": {"table": "t"}}},
            "stores[0].mapping: failing_from_errors needs an errors table apart from the queue",
        ),
        (
            {"preset": "heroku-connect", "mapping": {"queue": {"table": "q"}}},
            "stores[0]: preset 'heroku-connect' maps the whole store: leave out mapping",
        ),
        ({"preset": "heroku"}, "stores[0].preset: must be 'heroku-connect', not 'heroku'"),
        (
            {"naive_time_zone": "Europe/Berlim"},
            "stores[0].naive_time_zone: 'Europe/Berlim' is not an IANA time zone name",
        ),
    ],
)
def test_mistakes_in_the_shapes_are_named_by_key_path(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        runner_for("sqlite://", **settings)
    assert any(problem.startswith(expected) for problem in raised.value.problems), (
        raised.value.problems
    )


def test_the_heroku_connect_preset_fills_in_the_trigger_log_mapping() -> None:
    store = store_config("postgresql+psycopg://h/db", preset="heroku-connect")
    assert store.schema_ == "salesforce"
    queue, history, errors = store.mapping.roles()
    assert (queue.table, queue.filter) == (
        "_trigger_log",
        RowFilter(column="state", values=("NEW", "PENDING")),
    )
    assert history is not None
    assert errors is not None
    assert (history.table, history.archive_table) == ("_trigger_log", "_trigger_log_archive")
    assert errors.error_code is None
    assert errors.error_message == "sf_message"
    assert store.operations["delete"] == ("DELETE",)
    assert store.mapping.constants.direction == "to_crm"
    mine = store_config("sqlite://", preset="heroku-connect", schema="sf", objects=["lead"])
    assert (mine.schema_, mine.objects) == ("sf", ("lead",))
