"""The HTTP endpoint: /metrics for Prometheus, a landing page, health and readiness."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import bcrypt

from exporter.snapshot import LatestSnapshot
from exporter.web_config import WebConfig

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 1024
HANDSHAKE_TIMEOUT = 10.0
MAX_HANDLING = 4
_LANDING = """<!doctype html>
<html><head><title>crmsync-exporter</title></head>
<body><h1>crmsync-exporter</h1>
<p>Prometheus metrics of CRM sync stores: backlog, oldest pending change, throughput, errors.</p>
<p><a href="{path}">{path}</a></p></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops sending mid-request does not hold a thread for long
    server_version = "crmsync-exporter"
    sys_version = ""
    # Headers and body go out in two writes: with Nagle's algorithm the body's last segment
    # waits for the client's delayed ACK, 40 ms on every keep-alive scrape.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse_method(self) -> None:
        self._reply(405, b"Method Not Allowed\n", extra={"Allow": "GET, HEAD"})

    # Names fixed by BaseHTTPRequestHandler.
    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815
    do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method  # noqa: N815

    def _serve(self, head: bool) -> None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_REQUEST_BODY:
            self._reply(413, b"Request body too large\n")
            self.close_connection = True
            return
        if int(length):
            self.rfile.read(int(length))
        # With the whole request in, it is answered with at most MAX_HANDLING others at once
        # (the answer is sent after, so that a client slow to read holds nothing): a hundred
        # scrapers at once would otherwise keep the interpreter from the collections, whose
        # statements each wait their turn behind every scrape (a store read every second
        # fell to 34 cycles a minute).
        with self.server.handling:
            status, body, content_type, extra = self._answer()
        self._reply(status, body, content_type, head=head, extra=extra)

    def _answer(self) -> tuple[int, bytes, str, dict[str, str]]:
        """Status, body, content type and extra headers for the request."""
        text = "text/plain; charset=utf-8"
        if not self.server.authorized(self.headers.get("Authorization")):
            return 401, b"Unauthorized\n", text, {"WWW-Authenticate": 'Basic realm="crmsync"'}
        path = self.path.split("?", 1)[0]
        if path == self.server.telemetry_path:
            page = self.server.metrics.page(
                self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
            )
            extra = {"Content-Encoding": "gzip"} if page.compressed else {}
            return 200, page.body, page.content_type, extra
        if path == "/":
            body = _LANDING.format(path=self.server.telemetry_path).encode()
            return 200, body, "text/html; charset=utf-8", {}
        if path == "/-/healthy":
            return 200, b"OK\n", text, {}
        if path == "/-/ready":
            if self.server.ready():
                return 200, b"OK\n", text, {}
            return 503, b"Not ready: a store has not been collected yet\n", text, {}
        return 404, b"Not Found\n", text, {}

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        head: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.server.headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format % args, extra={"client": self.address_string()})


class ExporterHTTPServer(ThreadingHTTPServer):
    """Serves the latest snapshot; checks basic auth against bcrypt hashes, caching what passed."""

    daemon_threads = True
    request_queue_size: ClassVar[int] = 128  # type: ignore[misc]

    def __init__(
        self,
        address: tuple[str, int],
        metrics: LatestSnapshot,
        telemetry_path: str,
        web_config: WebConfig,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(address, _Handler)
        self.handling = threading.BoundedSemaphore(MAX_HANDLING)
        """Requests answered at once (see _Handler._serve)."""
        self.ready = ready
        """Whether /-/ready answers 200 (every store collected or failed once) or 503."""
        self.metrics = metrics
        self.telemetry_path = telemetry_path
        self.headers = dict(web_config.http_server_config.headers)
        self._users = {
            user: hashed.encode() for user, hashed in web_config.basic_auth_users.items()
        }
        # bcrypt is slow on purpose; remember digests of credentials that were accepted.
        self._accepted: set[bytes] = set()
        self._lock = threading.Lock()
        context = web_config.ssl_context()
        if context is not None:
            # The handshake happens in the request's thread (finish_request), not in the
            # accept loop, where one silent client would stall every other.
            self.socket = context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                request.do_handshake()
            except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
                log.debug(
                    "TLS handshake failed", extra={"client": client_address[0], "error": error}
                )
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is routine: a debug line, not a traceback.
        log.debug("request failed", extra={"client": client_address[0], "error": sys.exc_info()[1]})

    def authorized(self, header: str | None) -> bool:
        if not self._users:
            return True
        if header is None or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        hashed = self._users.get(user.decode("utf-8", "replace"))
        if not sep or hashed is None:
            return False
        digest = hashlib.sha256(hashed + b"\0" + decoded).digest()
        with self._lock:
            if digest in self._accepted:
                return True
        try:
            ok = bcrypt.checkpw(password, hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._accepted.add(digest)
        return ok
