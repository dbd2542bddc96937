"""The ``crmsync-exporter`` command: flags, wiring, and a clean exit on user mistakes."""

from __future__ import annotations

import argparse
import gc
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from sqlalchemy.engine import make_url

from exporter import __version__, allocator
from exporter.arguments import command_parser, setup_logging_from
from exporter.collection import StoreEngineError, StoreReader, store_engines
from exporter.config import Config, ConfigError, load_config
from exporter.connect_check import connect_check
from exporter.connections import ConnectionLimits, server_of
from exporter.http import ExporterHTTPServer
from exporter.publisher import EverySecond, Publisher
from exporter.runner import StoreRunner
from exporter.scheduler import Scheduler
from exporter.sharding import Shard, ShardInfo
from exporter.snapshot import LatestSnapshot
from exporter.store_values import unconfirmed_defaults
from exporter.web_config import WebConfig, load_web_config

DEFAULT_PORT = 9312
# Kubernetes kills a pod 30 s after SIGTERM; systemd and docker wait 10 s by default.
SHUTDOWN_SECONDS = 4.5
log = logging.getLogger("exporter")


class UsageError(Exception):
    """A mistake in the command line or the files it names: reported in one line, exit 1."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser(
        "crmsync-exporter", "Prometheus exporter for CRM synchronisation stores."
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        type=Path,
        default=Path("crmsync-exporter.yml"),
        help="configuration file (default: %(default)s)",
    )
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration (and web configuration), then exit",
    )
    parser.add_argument(
        "--config.connect-check",
        dest="connect_check",
        action="store_true",
        help="connect to each store (read-only), check the mapping against what the store "
        "holds, print a report, then exit",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        help="address to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path under which metrics are served (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        default=None,
        help="exporter-toolkit web configuration: TLS and basic auth",
    )
    parser.add_argument(
        "--shard.index",
        dest="shard_index",
        default="0",
        metavar="I",
        help="collect only shard I (from 0) of the stores (default: %(default)s)",
    )
    parser.add_argument(
        "--shard.count",
        dest="shard_count",
        default="1",
        metavar="N",
        help="the number of shards the stores are split into (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.telemetry_path.startswith("/"):
        parser.error("--web.telemetry-path must start with /")
    return args


def parse_listen_address(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``[v6]:port`` into a socket address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--web.listen-address {address!r}: expected host:port, e.g. :9312")
    return host.strip("[]"), int(port)


def parse_shard(index: str, count: str) -> Shard:
    """The shard flags' values, checked (they often come from a pod spec's variables)."""
    for flag, value in (("--shard.count", count), ("--shard.index", index)):
        if not re.fullmatch(r"-?[0-9]+", value):
            hint = (
                " (Kubernetes leaves $(NAME) as it is when the container has no variable NAME)"
                if value.startswith("$(")
                else ""
            )
            raise UsageError(f"{flag} {value!r}: expected a whole number{hint}")
    try:
        return Shard(int(index), int(count))
    except ValueError as error:
        raise UsageError(f"--shard.index {index} --shard.count {count}: {error}") from None


def build_runners(
    config: Config, shard: Shard, limits: ConnectionLimits | None = None
) -> list[StoreRunner]:
    """A runner for each store of the shard; a store's errors name its place in the file."""
    numbered = [(index, store) for index, store in enumerate(config.stores) if shard.keeps(store)]
    urls = []
    for index, store in numbered:
        try:
            urls.append((store, store.database_url()))
        except ConfigError as error:  # a password that cannot be read
            raise UsageError(f"stores[{index}].{'; '.join(error.problems)}") from None
    try:
        engines = store_engines(urls, limits)
    except StoreEngineError as failed:
        raise UsageError(f"stores[{numbered[failed.position][0]}].url: {failed}") from None
    return [StoreRunner(StoreReader(store, engines[store.name])) for _, store in numbered]


def make_server(
    address: str,
    telemetry_path: str,
    web_config: WebConfig,
    metrics: LatestSnapshot,
    ready: Callable[[], bool],
) -> ExporterHTTPServer:
    host, port = parse_listen_address(address)
    server_class = ExporterHTTPServer
    if ":" in host:

        class _IPv6Server(ExporterHTTPServer):
            address_family = socket.AF_INET6

        server_class = _IPv6Server
    try:
        return server_class((host, port), metrics, telemetry_path, web_config, ready)
    except OSError as error:
        raise UsageError(f"--web.listen-address {address!r}: {error.strerror}") from None


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config_file)
    web_config = load_web_config(args.web_config_file) if args.web_config_file else WebConfig()
    shard = parse_shard(args.shard_index, args.shard_count)
    if args.connect_check:
        numbered = [(i, store) for i, store in enumerate(config.stores) if shard.keeps(store)]
        code, report = connect_check(numbered, str(args.config_file))
        print(report)
        return code
    if args.config_check:
        unconfirmed = [
            f"stores[{index}].mapping.status_values: {reason}"
            for index, store in enumerate(config.stores)
            if (reason := unconfirmed_defaults(store)) is not None
        ]
        if unconfirmed:
            raise ConfigError(str(args.config_file), unconfirmed)
        # Building the engines (without connecting) also checks drivers and password sources.
        for runner in build_runners(config, shard):
            runner.reader.close()
        names = ", ".join(store.name for store in config.stores)
        print(f"{args.config_file}: valid, {len(config.stores)} store(s): {names}")
        if shard.count > 1:
            kept = shard.select(config.stores)
            kept_names = ", ".join(store.name for store in kept) or "none"
            print(f"{shard}: {len(kept)} store(s): {kept_names}")
        return 0

    limits = ConnectionLimits(config.connections.per_server, config.connections.keep_open_below)
    runners = build_runners(config, shard, limits)
    # The stores' metrics are encoded once per publication; the rest is collected per scrape.
    extras = CollectorRegistry(auto_describe=False)
    extras.register(ShardInfo(shard))
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        extras.register(collector)
    metrics = LatestSnapshot(lambda: [runner.state for runner in runners], extras)

    # Encoded after collections, once for however many ended meanwhile (see publisher), before
    # any scrape asks for them.
    publisher = Publisher(metrics.publish)
    # The ages and the process's own metrics, written once a second before the scrapes ask.
    ticker = EverySecond(metrics.prepare)

    # Ready once every store's first collection (or failure) is in /metrics: from then on
    # /metrics tells the truth about each (crmsync_up says which could not be read).
    def ready() -> bool:
        return len(publisher.published) == len(runners)

    server = make_server(args.listen_address, args.telemetry_path, web_config, metrics, ready)
    scheduler = Scheduler(
        runners,
        workers=config.collection.workers,
        per_server=config.connections.per_server,
        server_of=lambda runner: server_of(make_url(runner.reader.config.url)),
        after_cycle=lambda runner: publisher.collected(runner.name),
    )

    # A scrape is short and waits on sockets; a collection cycle computes for tens of
    # milliseconds. Handing the interpreter over every millisecond rather than every five
    # keeps scrapes from queueing behind it.
    sys.setswitchinterval(0.001)
    allocator.limit_arenas()
    # A shard may be empty (more shards than stores): it still serves its self-metrics.
    log.log(
        logging.INFO if runners else logging.WARNING,
        f"kept {len(runners)} of {len(config.stores)} stores",
        extra={"shard_index": shard.index, "shard_count": shard.count},
    )
    for runner in runners:
        store = runner.reader.config
        log.info(
            "collecting",
            extra={"store": store.name, "url": store.display_url(), "interval": store.interval},
        )
    log.info(
        "collection workers",
        extra={
            "workers": config.collection.workers,
            "connections_per_server": config.connections.per_server,
        },
    )
    # What was built so far (stores, engines, their SQL) lives as long as the process: out of
    # the garbage collector's full passes, which otherwise walk it all every few collections.
    # With 500 stores, that halved the time until every store was first collected.
    gc.freeze()
    publisher.start()
    ticker.start()
    scheduler.start()
    stop_by = [float("inf")]

    def shut_down(signum: int, _frame: FrameType | None) -> None:
        stop_by[0] = min(stop_by[0], time.monotonic() + SHUTDOWN_SECONDS)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    port = server.server_address[1]
    log.info(
        "listening",
        extra={"port": port, "path": args.telemetry_path, "version": __version__},
    )
    try:
        server.serve_forever()
    finally:
        deadline = min(stop_by[0], time.monotonic() + SHUTDOWN_SECONDS)
        server.server_close()
        # Every store at once, against one deadline: collections still running have their
        # statements cancelled; what is still busy at the deadline ends with the process.
        if not scheduler.stop(deadline):
            log.warning("collections still running at exit", extra={"stores": len(runners)})
        publisher.stop(max(0.0, deadline - time.monotonic()))
        ticker.stop(max(0.0, deadline - time.monotonic()))
        close_all(runners, deadline)
    return 0


def close_all(runners: Sequence[StoreRunner], deadline: float) -> None:
    """Close the stores' connections, in a thread: a dead network must not hold the exit."""

    def close() -> None:
        for runner in runners:
            runner.close()

    closer = threading.Thread(target=close, name="close", daemon=True)
    closer.start()
    closer.join(max(0.0, deadline - time.monotonic()))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging_from(args)
    try:
        return run(args)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
    except UsageError as error:
        print(f"crmsync-exporter: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
