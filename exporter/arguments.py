"""The command line every crmsync command shares: `--log.level`, `--log.format`, `--version`."""

from __future__ import annotations

import argparse
from typing import Any

from exporter import __version__
from exporter.logs import setup_logging

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")


def command_parser(prog: str, description: str, **options: Any) -> argparse.ArgumentParser:
    """A parser for the command ``prog`` holding the flags all the commands have."""
    parser = argparse.ArgumentParser(prog=prog, description=description, **options)
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        default="info",
        help="only log messages of this level or above (default: %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        default="logfmt",
        help="log line format (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    return parser


def setup_logging_from(args: argparse.Namespace) -> None:
    """Log as the command's ``--log.*`` flags say (Prometheus's ``warn`` is Python's warning)."""
    level = "warning" if args.log_level == "warn" else args.log_level
    setup_logging(level, args.log_format)
