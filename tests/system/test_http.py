"""The running exporter over HTTP: /metrics that promtool and a real Prometheus accept."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import add_errors, add_history, add_pending
from crmsync_testing.servers import require_binary
from exporter.schema import create_reference_schema


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds}s")


def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def exporter_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("http")
    url = f"sqlite:///{directory / 'store.db'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_pending(engine, 25)
    add_history(engine, 400)
    add_errors(engine, 30)
    engine.dispose()
    config = directory / "config.yml"
    config.write_text(
        f"stores:\n  - name: main\n    url: '{url}'\n    interval: 1s\n    new_counter_hold: 0s\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/-/healthy")
        deadline = time.monotonic() + 20
        while b'crmsync_up{store="main"} 1.0' not in request(base + "/metrics")[2]:
            assert time.monotonic() < deadline, "the first collection did not succeed"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        # Logs are JSON, one object a line, and the exporter shuts down cleanly on SIGTERM.
        lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
        assert any(line["msg"] == "shutting down" for line in lines)
        assert process.returncode == 0


def test_metrics_are_served_in_the_text_format(exporter_url: str) -> None:
    status, headers, body = request(exporter_url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'crmsync_up{store="main"} 1.0' in text
    assert "crmsync_records_synced_total{" in text
    assert "process_resident_memory_bytes" in text


def test_promtool_check_metrics_passes(exporter_url: str) -> None:
    promtool = require_binary("promtool")
    _, _, body = request(exporter_url + "/metrics")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/nope", 404),
        ("GET", "/metrics/extra", 404),
        ("POST", "/metrics", 405),
        ("DELETE", "/metrics", 405),
        ("PUT", "/", 405),
    ],
)
def test_http_paths_and_methods(exporter_url: str, method: str, path: str, status: int) -> None:
    code, headers, _ = request(exporter_url + path, method)
    assert code == status
    if status == 405:
        assert headers["Allow"] == "GET, HEAD"


def test_head_has_headers_but_no_body(exporter_url: str) -> None:
    status, headers, body = request(exporter_url + "/metrics", "HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""


def test_a_real_prometheus_scrapes_the_exporter(exporter_url: str, tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    port = free_port()
    target = exporter_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: crmsync\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query?query="
        deadline = time.monotonic() + 30
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(query + "sum(crmsync_records_synced_total)") as r:
                    result = json.load(r)["data"]["result"]
            except (urllib.error.URLError, ConnectionError):
                continue
        assert result, "Prometheus did not ingest crmsync_records_synced_total"
        value = result[0]["value"]
        assert isinstance(value, list)
        # The 400 history rows were there before the exporter started: not counted.
        assert float(value[1]) == 0.0
        with urllib.request.urlopen(query + "sum(crmsync_pending_records)") as r:
            pending = json.load(r)["data"]["result"]
        assert float(pending[0]["value"][1]) == 25.0
        with urllib.request.urlopen(query + "up{job='crmsync'}") as r:
            up = json.load(r)["data"]["result"]
        assert up[0]["value"][1] == "1"
    finally:
        process.terminate()
        process.wait(timeout=10)
