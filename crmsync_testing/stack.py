"""The monitoring side of a store, for the dashboard tests and pictures: the real exporter
reading it and a real Prometheus scraping the exporter, optionally with live traffic from the
simulator."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SIMULATOR_TRAFFIC = [
    "--scenario",
    "steady",
    "--rate",
    "10",
    "--speed",
    "5",
    "--error-share",
    "0.25",
    "--sync-interval",
    "0.5",
    "--seed",
    "5",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass(frozen=True)
class Stack:
    prometheus: str
    logs: Path

    def has_series(self, expr: str) -> bool:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/query?{query}", timeout=5) as r:
            return bool(json.loads(r.read())["data"]["result"])

    def wait_for_series(self, expr: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.has_series(expr):
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus has no {expr} after {timeout} s; see {self.logs}")
            time.sleep(0.5)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_stack(
    store_url: str,
    work: Path,
    prometheus_binary: str,
    *,
    traffic: bool,
    scrape_interval: str = "1s",
    store_name: str = "main",
) -> Iterator[Stack]:
    """The exporter (collecting every second) and Prometheus on the store, while in the block."""
    exporter_port, prometheus_port = free_port(), free_port()
    config = work / "exporter.yml"
    # New counter series read 0 for one scrape interval, so Prometheus sees them start at 0.
    config.write_text(
        f"stores:\n  - name: '{store_name}'\n    url: '{store_url}'\n    interval: 1s\n"
        f"    new_counter_hold: {scrape_interval}\n"
    )
    prometheus_config = work / "prometheus.yml"
    prometheus_config.write_text(
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: crmsync\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n"
    )
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str]) -> None:
        log = (logs / f"{name}.log").open("wb")
        processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))

    try:
        if traffic:
            start(
                "simulator",
                [
                    sys.executable,
                    "-m",
                    "crmsync_tools.simulator",
                    "--store.url",
                    store_url,
                    *SIMULATOR_TRAFFIC,
                ],
            )
        start(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{exporter_port}",
            ],
        )
        start(
            "prometheus",
            [
                prometheus_binary,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
        )
        deadline = time.monotonic() + 30
        wait_for(f"http://127.0.0.1:{exporter_port}/metrics", deadline)
        base = f"http://127.0.0.1:{prometheus_port}"
        wait_for(f"{base}/-/ready", deadline)
        stack = Stack(base, logs)
        yield stack
        for process in processes:
            assert process.poll() is None, (logs / "exporter.log").read_text()
    finally:
        for process in processes:
            _stop(process)
