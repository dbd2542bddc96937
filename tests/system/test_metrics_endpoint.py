"""/metrics over HTTP: gzip and OpenMetrics negotiated per request, a body promtool accepts."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser

from crmsync_testing.helpers import add_errors, add_history, add_pending, runner_for
from crmsync_testing.servers import require_binary
from exporter.http import ExporterHTTPServer
from exporter.runner import StoreRunner
from exporter.schema import create_reference_schema
from exporter.sharding import Shard, ShardInfo
from exporter.snapshot import PROMETHEUS_ACCEPT, LatestSnapshot
from exporter.web_config import WebConfig

openmetrics_families: Callable[[str], Iterator[Metric]] = (
    openmetrics_parser.text_string_to_metric_families
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def extras() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardInfo(Shard()))
    return registry


@pytest.fixture
def store(sqlite_url: str) -> Iterator[StoreRunner]:
    """A store read twice (the second read counts new rows)."""
    writer = sa.create_engine(sqlite_url)
    create_reference_schema(writer)
    add_pending(writer, 200)
    runner = runner_for(sqlite_url)
    assert runner.run_once().last_error is None
    add_history(writer, 400, seed=5, hours=0.01)
    add_errors(writer, 40, seed=6)
    assert runner.run_once().last_error is None
    assert runner.run_once().last_error is None
    writer.dispose()
    yield runner
    runner.reader.close()


@pytest.fixture
def served(store: StoreRunner, tmp_path: Path) -> Iterator[tuple[int, Clock, LatestSnapshot]]:
    """An HTTP server over a store that is up and one that cannot be read."""
    runner = store
    down = runner_for(f"sqlite:///{tmp_path / 'missing.db'}", name="down")
    assert down.run_once().last_error is not None
    clock = Clock(runner.state.gauges_taken + 1.0)
    metrics = LatestSnapshot(lambda: [runner.state, down.state], extras(), clock)
    metrics.publish()
    server = ExporterHTTPServer(("127.0.0.1", 0), metrics, "/metrics", WebConfig())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1]), clock, metrics
    server.shutdown()
    server.server_close()
    down.reader.close()


def get(port: int, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        return dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5, br", True),
        ("GZip", True),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
    ],
)
def test_gzip_is_negotiated_per_accept_encoding(
    served: tuple[int, Clock, LatestSnapshot], accept_encoding: str, compressed: bool
) -> None:
    port, *_ = served
    _, plain = get(port, {})
    headers, body = get(port, {"Accept-Encoding": accept_encoding})
    assert int(headers["Content-Length"]) == len(body)
    assert ("Content-Encoding" in headers) is compressed
    if compressed:
        assert headers["Content-Encoding"] == "gzip"
        assert len(body) < len(plain) / 4
        body = gzip.decompress(body)
    assert body == plain


def test_openmetrics_is_served_to_prometheus_and_text_to_others(
    served: tuple[int, Clock, LatestSnapshot],
) -> None:
    port, *_ = served
    for encoding in ({}, {"Accept-Encoding": "gzip"}):
        headers, body = get(port, {"Accept": PROMETHEUS_ACCEPT, **encoding})
        text = (gzip.decompress(body) if encoding else body).decode()
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert text.endswith("\n# EOF\n")
        assert text.count("# EOF") == 1
        families = {family.name: family for family in openmetrics_families(text)}
        assert families["crmsync_records_synced"].type == "counter"
        assert families["crmsync_shard"].type == "info"

        headers, body = get(port, encoding)
        text = (gzip.decompress(body) if encoding else body).decode()
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# EOF" not in text
        assert "# TYPE crmsync_records_synced_total counter" in text


def test_promtool_accepts_the_served_body(served: tuple[int, Clock, LatestSnapshot]) -> None:
    promtool = require_binary("promtool")
    port, *_ = served
    for encoding in ({}, {"Accept-Encoding": "gzip"}):
        _, body = get(port, encoding)
        if encoding:
            body = gzip.decompress(body)
        assert b'crmsync_up{store="down"} 0.0' in body
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout + result.stderr == b""
