"""The exporter as a real process: started with a configuration, scraped, measured, stopped."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crmsync_testing.helpers import Samples, by_name, samples
from crmsync_testing.pg_instance import free_port


class Exporter:
    """``python -m exporter`` on a free port; logs (JSON) go to a file read back by the tests."""

    def __init__(
        self,
        config: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                "--log.format",
                "json",
                "--log.level",
                log_level,
                *extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output().splitlines():
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    lines.append({"msg": "unparsed", "text": line})
        return lines

    def get(
        self,
        path: str = "/metrics",
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        method: str = "GET",
    ) -> tuple[int, bytes]:
        if context is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "localhost", self.port, timeout=timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def scrape(self, timeout: float = 5.0) -> Samples:
        status, body = self.get(timeout=timeout)
        assert status == 200, body
        return samples(body.decode())

    def wait_until(
        self, condition: Callable[[Samples], bool], seconds: float = 30.0, every: float = 0.1
    ) -> tuple[float, Samples]:
        """Scrape until ``condition`` holds; return when it first did and that scrape."""
        deadline = time.monotonic() + seconds
        last: Samples = {}
        while time.monotonic() < deadline:
            try:
                last = self.scrape()
            except (OSError, http.client.HTTPException):
                time.sleep(every)
                continue
            if condition(last):
                return time.monotonic(), last
            time.sleep(every)
        raise AssertionError(f"not reached within {seconds}s; last scrape: {sorted(last)[:20]}")

    def wait_serving(self, seconds: float = 20.0) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                self.get("/-/healthy", timeout=1)
                return time.monotonic()
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"the exporter did not serve within {seconds}s: {self.output()}")

    def rss_bytes(self) -> int:
        return _status_field(self.pid, "VmRSS") * 1024

    def threads(self) -> int:
        return _status_field(self.pid, "Threads")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {name}")


def up(result: Samples, store: str = "main") -> float | None:
    return by_name(result, "crmsync_up").get(frozenset({("store", store)}))


def metric(result: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``, summed if several match."""
    values = [
        value
        for sample_labels, value in by_name(result, name).items()
        if set(labels.items()) <= set(sample_labels)
    ]
    return sum(values) if values else None


def write_config(path: Path, stores: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text(json.dumps({"stores": list(stores)}))  # JSON is YAML
    return path
