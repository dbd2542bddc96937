"""The ``crmsync-demo`` command: a SQLite store, a simulated sync engine, the exporter reading."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml
from sqlalchemy import func, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from crmsync_tools.schema_cli import StoreError, describe_error
from crmsync_tools.simulator import (
    SCENARIOS,
    STEADY_ERROR_SHARE,
    Simulator,
    backfill,
    use_wal,
    writer_engine,
)
from exporter import cli
from exporter.arguments import command_parser
from exporter.schema import create_reference_schema, sync_history

log = logging.getLogger("crmsync_tools.demo")
STORE = "demo"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser(
        "crmsync-demo",
        "Run the exporter against a SQLite sync store that a simulated sync engine keeps "
        "busy. Needs nothing but Python: the store is a file, created on first use.",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("crmsync-demo.db"),
        help="SQLite file of the demo store (default: %(default)s); the exporter's "
        "configuration is written next to it",
    )
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="steady")
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="changes arriving per simulated second (default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per real second (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=float,
        default=3.0,
        metavar="HOURS",
        help="hours of past traffic to write into a new store (default: %(default)s)",
    )
    parser.add_argument(
        "--reset", action="store_true", help="delete the store first and start from scratch"
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{cli.DEFAULT_PORT}",
        help="address the exporter listens on (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for name in ("rate", "speed"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be a positive number")
    if not args.history >= 0:
        parser.error("--history must be 0 or more hours")
    return args


def metrics_url(listen_address: str) -> str:
    host, _, port = listen_address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def prepare_store(path: Path, args: argparse.Namespace) -> tuple[Engine, str]:
    """Create (or reuse) the store; backfill history into a new one. Returns (engine, summary)."""
    if args.reset:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    url = URL.create("sqlite", database=str(path))
    engine = writer_engine(url)
    try:
        use_wal(engine)
        create_reference_schema(engine)
        with engine.connect() as connection:
            synced = connection.execute(select(func.count()).select_from(sync_history)).scalar()
        if synced or not args.history:
            return engine, f"reusing {synced} synced changes already in the store"
        # As if the engine had run at today's pace for the last few hours.
        seconds = args.history * 3600.0
        per_second = args.rate * args.speed
        filled = backfill(
            engine,
            history_rows=round(per_second * seconds * (1 - STEADY_ERROR_SHARE)),
            error_rows=round(per_second * seconds * STEADY_ERROR_SHARE),
            pending_rows=round(per_second * 2),
            span=seconds,
            pending_span=2.0,
        )
    except SQLAlchemyError as error:
        engine.dispose()
        raise StoreError(f"{path}: {describe_error(error, url)}") from None
    return engine, (
        f"backfilled {args.history:g} h of history: {filled.history} synced changes, "
        f"{filled.errors} failed attempts"
    )


def write_config(db: Path) -> Path:
    """The exporter's configuration for the demo store, written next to it."""
    config = db.with_name(db.stem + ".yml")
    document = {
        "stores": [
            {
                "name": STORE,
                "url": URL.create("sqlite", database=str(db)).render_as_string(),
                "interval": "5s",
                # Counters of new series count after one collection at 0 rather than after a
                # minute: enough for curl and for a Prometheus scraping every 5 s or faster.
                "new_counter_hold": "5s",
            }
        ]
    }
    config.write_text(
        "# Written by crmsync-demo: the exporter's configuration for the demo store.\n"
        + yaml.safe_dump(document, sort_keys=False),
        encoding="utf-8",
    )
    return config


def what_to_expect(args: argparse.Namespace) -> list[str]:
    scenario = SCENARIOS[args.scenario]
    per_second = args.rate * args.speed
    soon = f"after {scenario.warmup / args.speed:g} s"
    lines = [
        'crmsync_up{store="demo"} 1',
        "crmsync_records_synced_total   counts from the exporter's start, then grows by about "
        f"{per_second * (1 - STEADY_ERROR_SHARE):g} per second",
        "crmsync_records_synced_last_hour  the previous full clock hour, per object and direction",
    ]
    if args.scenario == "steady":
        lines += [
            "crmsync_pending_records        a small backlog, emptied every second or so",
            "crmsync_sync_errors_total      a few failed attempts a minute, by error_code",
        ]
    elif args.scenario == "burst":
        peak = (scenario.arrival_factor - 1.5) * (scenario.duration or 0) * args.rate
        lines += [
            f"crmsync_pending_records        {soon} jumps to ~{peak:.0f} in total, then "
            "drains on its own; the burst comes back every "
            f"{(scenario.period or 0) / args.speed / 60:g} min",
        ]
    elif args.scenario == "stall":
        lines += [
            f"crmsync_records_synced_total   stops growing {soon}",
            f"crmsync_pending_records        {soon} grows by about {per_second:g} per second",
            "crmsync_oldest_pending_age_seconds  climbs one second per second",
        ]
    else:
        lines += [
            f'crmsync_sync_errors_total{{error_code="REQUEST_LIMIT_EXCEEDED"}}  {soon} '
            "climbs fast: most attempts fail",
            "crmsync_pending_records        grows, as retried changes stay queued",
        ]
    return lines


def _announce(url: str, args: argparse.Namespace, summary: str, stop: threading.Event) -> None:
    """Print where to look once the exporter serves the store, not before."""
    deadline = time.monotonic() + 60.0
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310
                if f'crmsync_up{{store="{STORE}"}} 1.0' in response.read().decode():
                    break
        except (OSError, urllib.error.URLError):
            pass
        stop.wait(0.5)
    else:
        return
    expect = "\n".join(f"    {line}" for line in what_to_expect(args))
    print(
        f"\ncrmsync demo is running: scenario {args.scenario}, {args.rate:g} changes per "
        f"simulated second, speed x{args.speed:g}\n"
        f"  store     {args.db.resolve()} ({summary})\n"
        f"  metrics   {url}\n\n"
        f"  try       curl -s {url} | grep '^crmsync_'\n"
        f"  expect\n{expect}\n\n"
        "  other scenarios: crmsync-demo --scenario burst | stall | error-storm\n"
        "  stop with Ctrl-C\n",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    db = args.db.resolve()
    try:
        engine, summary = prepare_store(db, args)
    except StoreError as error:
        print(f"crmsync-demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crmsync-demo: interrupted", file=sys.stderr)
        return 130
    config = write_config(db)

    stop = threading.Event()
    simulator = Simulator(engine, args.scenario, rate=args.rate, speed=args.speed)
    writer = threading.Thread(target=simulator.run, kwargs={"stop": stop}, name="simulator")
    url = metrics_url(args.listen_address)
    announcer = threading.Thread(
        target=_announce, args=(url, args, summary, stop), name="announce", daemon=True
    )
    writer.start()
    announcer.start()
    try:
        # The exporter runs in the main thread: its SIGINT/SIGTERM handlers end it cleanly.
        status = cli.main(
            [
                "--config.file",
                str(config),
                "--web.listen-address",
                args.listen_address,
                "--log.level",
                args.log_level,
                "--log.format",
                args.log_format,
            ]
        )
    finally:
        stop.set()
        writer.join(timeout=10.0)
        engine.dispose()
    if status == 0:
        totals = simulator.totals
        print(
            f"crmsync demo stopped: {totals.enqueued} changes enqueued, {totals.synced} synced, "
            f"{totals.failed} failed attempts this run; the store stays in {db} "
            "(--reset starts afresh)",
            file=sys.stderr,
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
