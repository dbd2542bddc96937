"""Helpers of the alert pack's tests: the rule generator, real servers and a webhook receiver."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "alerts"
RULE_FILES = (ALERTS / "recording_rules.yml", ALERTS / "alerting_rules.yml")
PROMTOOL_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
ALERTMANAGER_EXAMPLE = ALERTS / "alertmanager.yml"

T = TypeVar("T")
RequireBinary = Callable[[str], str]


def find_binary(name: str) -> str:
    """A program on PATH: without it the test is skipped, or fails when CI=true."""
    path = shutil.which(name)
    if path is None:
        reason = (
            f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


def run(argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "crmsync_tools.alerts", *args])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules(path: Path) -> list[dict[str, Any]]:
    """Every rule of a rule file, across its groups."""
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25
) -> T:
    """Poll ``check`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def post_json(url: str, payload: Any, timeout: float = 5) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


# --- processes --------------------------------------------------------------------------


class Process:
    """A program run for a test, its output kept in a log file for failure messages."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 4000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]

    def stop(self) -> None:
        if self.running():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


@contextmanager
def started(name: str, argv: Sequence[str], log_dir: Path) -> Iterator[Process]:
    process = Process(name, argv, log_dir)
    try:
        yield process
    finally:
        process.stop()


def wait_ready(url: str, process: Process, timeout: float = 30) -> None:
    """Wait until ``url`` answers 200, failing early with the log if the program exits."""

    def ready() -> bool:
        if not process.running():
            raise AssertionError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.output()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_until(ready, timeout, f"{process.name} at {url}")


# --- Alertmanager's webhook receiver ----------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One alert of a notification, with the receiver path it was posted to."""

    path: str
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    at: float
    """time.time() when it arrived."""
    notification: int
    """Which notification (POST) it came in, counting from 1."""
    group_key: str
    """Alertmanager's key of the group: one incident."""


class Webhook:
    """An HTTP server that records the notifications Alertmanager posts to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._notifications = 0
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = json.loads(body)
                with webhook._lock:
                    webhook._notifications += 1
                    for alert in payload.get("alerts", []):
                        webhook._received.append(
                            Received(
                                self.path,
                                alert["status"],
                                alert.get("labels", {}),
                                alert.get("annotations", {}),
                                time.time(),
                                webhook._notifications,
                                payload.get("groupKey", ""),
                            )
                        )
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    try:
        yield receiver
    finally:
        receiver.close()


# --- Alertmanager and Prometheus ----------------------------------------------------------------


def alertmanager_config(hook: Webhook, wait: str = "1s") -> dict[str, Any]:
    """The example configuration, its receivers posting to ``hook`` at /<receiver name>.

    Routes and inhibitions stay as shipped; only the waits shrink for the tests.
    """
    config: dict[str, Any] = load_yaml(ALERTMANAGER_EXAMPLE)
    config["route"].update(group_wait=wait, group_interval=wait)
    config["receivers"] = [
        {
            "name": receiver["name"],
            "webhook_configs": [{"url": hook.url(f"/{receiver['name']}"), "send_resolved": True}],
        }
        for receiver in config["receivers"]
    ]
    return config


@contextmanager
def alertmanager(binary: str, work: Path, config: Mapping[str, Any]) -> Iterator[str]:
    """A real Alertmanager with ``config``; yields its URL."""
    (work / "alertmanager-data").mkdir(parents=True, exist_ok=True)
    config_file = work / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={work / 'alertmanager-data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",
    ]
    with started("alertmanager", argv, work) as process:
        wait_ready(f"{url}/-/ready", process)
        yield url


@contextmanager
def prometheus(
    binary: str,
    work: Path,
    *,
    rule_files: Sequence[Path],
    targets: Sequence[str],
    alertmanager_url: str | None,
    interval: str = "1s",
) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` as job "crmsync"; yields its URL."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "crmsync",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    if alertmanager_url is not None:
        alertmanager = [alertmanager_url.removeprefix("http://")]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanager}]}]}
    config_file = work / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={work / 'prometheus-data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--rules.alert.resend-delay=1s",
    ]
    with started("prometheus", argv, work) as process:
        wait_ready(f"{url}/-/ready", process)
        yield url


def query(prometheus_url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query's result (a vector, or a matrix for a range selector), at ``at``."""
    url = f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(promql)}"
    if at is not None:
        url += f"&time={at:.3f}"
    answer = get_json(url)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


# --- failing scrapes -------------------------------------------------------------------------


class FlakyScrapes:
    """An HTTP proxy in front of the exporter that fails every ``fail_every``-th request.

    Prometheus records a failed scrape as ``up 0`` and marks every series of the target
    stale; while the exporter itself is down (a restart), every request fails the same way.
    """

    def __init__(self, upstream: str, fail_every: int) -> None:
        self.upstream = upstream
        self.fail_every = fail_every
        self._lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    fail = proxy.requests % proxy.fail_every == 0
                body, status = b"scrape failed on purpose", 503
                if not fail:
                    try:
                        url = f"http://{proxy.upstream}{self.path}"
                        with urllib.request.urlopen(url, timeout=5) as response:
                            body, status = response.read(), response.status
                    except (OSError, http.client.HTTPException):
                        body, status = b"exporter unreachable", 502
                if status != 200:
                    with proxy._lock:
                        proxy.failed += 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # Prometheus gave up on a slow scrape: it counts as failed

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
