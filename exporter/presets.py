"""Named mappings of well-known engines' stores, filled into a store's configuration."""

from __future__ import annotations

from typing import Any

HEROKU_CONNECT = "heroku-connect"
HEROKU_CONNECT_SCHEMA = "salesforce"
"""Where Heroku Connect keeps its tables unless the add-on was configured otherwise."""

# Heroku Connect's trigger log: captured changes wait in _trigger_log (NEW, then PENDING while
# it writes them to Salesforce) and move, with their id and processed_at, to
# _trigger_log_archive once processed. Only changes made in Postgres are logged: one direction.
_TRIGGER_LOG_COLUMNS = {
    "object_type": "table_name",
    "operation": "action",
}
_HEROKU_CONNECT: dict[str, Any] = {
    "operations": {"insert": ["INSERT"], "update": ["UPDATE"], "delete": ["DELETE"]},
    "mapping": {
        "constants": {"direction": "to_crm"},
        "queue": {
            "table": "_trigger_log",
            **_TRIGGER_LOG_COLUMNS,
            "record_id": "record_id",
            "enqueued_at": "created_at",
            "filter": {"column": "state", "values": ["NEW", "PENDING"]},
        },
        "history": {
            "table": "_trigger_log",
            "archive_table": "_trigger_log_archive",
            **_TRIGGER_LOG_COLUMNS,
            "enqueued_at": "created_at",
            "synced_at": "processed_at",
            "filter": {"column": "state", "values": ["SUCCESS"]},
        },
        "errors": {
            "table": "_trigger_log",
            "archive_table": "_trigger_log_archive",
            **_TRIGGER_LOG_COLUMNS,
            "record_id": "record_id",
            "record_name": None,
            "error_code": None,
            "error_message": "sf_message",
            "failed_at": "processed_at",
            "filter": {"column": "state", "values": ["FAILED"]},
        },
    },
}
PRESETS = {HEROKU_CONNECT: (_HEROKU_CONNECT, HEROKU_CONNECT_SCHEMA)}


def apply_preset(store: dict[str, Any]) -> dict[str, Any]:
    """``store`` (a store's YAML mapping) with its preset's keys, where it does not set them.

    A preset's mapping is whole: a store that names a preset names no ``mapping``.
    """
    name = store.get("preset")
    if name not in PRESETS:
        return store  # validation of ``preset`` names the choices
    if store.get("mapping") is not None:
        raise ValueError(f"preset {name!r} maps the whole store: leave out mapping")
    preset, schema = PRESETS[name]
    merged = {**preset, **{key: value for key, value in store.items() if key != "mapping"}}
    merged.setdefault("schema", schema)
    return merged
