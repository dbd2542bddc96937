"""The exporter's command line run in this process: its exit code, stdout and stderr."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence

from exporter import cli


@contextlib.contextmanager
def _isolated_logging() -> Iterator[None]:
    """main() installs its own log handler: give the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """``crmsync-exporter ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with _isolated_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()
