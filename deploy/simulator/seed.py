"""Give the demo store three hours of history once, so that every panel has data at once."""

from __future__ import annotations

import os
import sys

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from crmsync_tools.simulator import backfill, writer_engine
from exporter.schema import create_reference_schema, sync_history


def main() -> int:
    engine = writer_engine(make_url(os.environ["CRMSYNC_STORE_URL"]))
    create_reference_schema(engine)
    with engine.connect() as connection:
        if connection.execute(select(func.count()).select_from(sync_history)).scalar_one():
            print("seed: the store already has history; nothing to do")
            return 0
    written = backfill(
        engine, history_rows=40_000, error_rows=1_500, pending_rows=300, span=3 * 3600.0, seed=7
    )
    print(f"seed: wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
