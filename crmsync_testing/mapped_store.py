"""A single status-table store with other names and values than the reference schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

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
