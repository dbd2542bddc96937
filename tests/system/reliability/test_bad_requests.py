"""HTTP requests that are wrong, huge or never finished: refused quickly, serving goes on."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from exporter.http import ExporterHTTPServer
from exporter.runner import StoreState
from exporter.snapshot import LatestSnapshot
from exporter.web_config import WebConfig


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    metrics = LatestSnapshot(lambda: [StoreState(store="main")], extras=CollectorRegistry())
    server = ExporterHTTPServer(("127.0.0.1", 0), metrics, "/metrics", WebConfig())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "127.0.0.1", int(server.server_address[1])
    server.shutdown()
    server.server_close()


def exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; return the answer (headers and body, as far as Content-Length says)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may refuse before reading everything
            sock.sendall(request)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
    return received


def status(response: bytes) -> int:
    """The status code; malformed request lines get the standard library's HTTP/0.9 reply."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response) or re.search(
        rb"Error code: (\d{3})", response
    )
    assert match, response[:200]
    return int(match.group(1))


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/metricsx", "/../etc/passwd", "/%00"])
def test_unknown_paths_are_404(address: tuple[str, int], path: str) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert status(exchange(address, request)) == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_methods_other_than_get_and_head_are_refused(address: tuple[str, int], method: str) -> None:
    request = f"{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    response = exchange(address, request)
    assert status(response) == 405
    assert b"Allow: GET, HEAD" in response


def test_an_unknown_method_is_refused(address: tuple[str, int]) -> None:
    request = b"BREW /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert status(exchange(address, request)) in (405, 501)


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        # A body announced as 10 MB is refused before a byte of it is read.
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n", 413),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 413),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", 413),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 200 + b"\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"y" * 100_000 + b"\r\n\r\n", 431),
        (b"\x16\x03\x01\x02\x00garbage that is no HTTP\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 505),
    ],
    ids=[
        "body-10MB",
        "length-negative",
        "length-text",
        "uri-100KB",
        "headers-200",
        "header-100KB",
        "tls-to-plain",
        "version",
    ],
)
def test_oversized_or_malformed_requests_are_refused_quickly(
    address: tuple[str, int], request_bytes: bytes, expected: int
) -> None:
    started = time.monotonic()
    response = exchange(address, request_bytes)
    assert status(response) == expected
    assert time.monotonic() - started < 2.0


def test_idle_and_half_sent_requests_do_not_block_others(address: tuple[str, int]) -> None:
    idle = [socket.create_connection(address) for _ in range(20)]
    half = [socket.create_connection(address) for _ in range(20)]
    for sock in half:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
    try:
        started = time.monotonic()
        response = exchange(
            address, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status(response) == 200
        assert b'crmsync_up{store="main"} 0.0' in response
        assert time.monotonic() - started < 1.0
    finally:
        for sock in idle + half:
            sock.close()
