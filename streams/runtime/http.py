"""The HTTP servers' shared limits: the worker's metrics and health endpoints and the signals API.

A `BoundedServer` serves at most `max_connections` connections at once, each on its own daemon
thread; one more is answered 503 at once on the accepting thread and closed, so a flood of slow
connections pins a bounded number of threads. Each connection's socket times out after
`timeout_s`, so a client that sends its request (or reads its answer) slowly is cut off. A body
longer than `max_body_bytes` is refused 413 before it is read. A request that cannot be parsed
is answered by http.server (400) or closed; either way nothing is printed but a debug log line.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\ntoo many connections: retry"
)


@dataclass(frozen=True)
class Limits:
    """Defaults: Settings' http_max_connections, http_timeout_s and api_max_body_bytes."""

    max_connections: int = 64
    timeout_s: float = 10.0
    max_body_bytes: int = 64 * 1024


class BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server with a bound on its connections (the module says how)."""

    daemon_threads = True
    # connections the kernel queues until they are accepted (5 by default): a burst past it
    # would wait for SYN retries of a second or more before even a 503
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type[BoundedHandler], limits: Limits
    ) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (reset, timed out, garbage): one debug line, no traceback."""
        log.debug("HTTP connection from %s ended in error", client_address, exc_info=True)


def _refuse_busy(request: socket.socket) -> None:
    try:
        request.settimeout(1.0)
        request.sendall(_BUSY)
    except OSError:
        pass


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler that honours its server's Limits; subclasses answer with `reply`."""

    server: BoundedServer

    def setup(self) -> None:
        super().setup()
        # reading the request and writing the answer both wait on this socket
        self.connection.settimeout(self.server.limits.timeout_s)

    def read_body(self) -> bytes | None:
        """The request's body, or None once an error was answered (411, 413 or 400)."""
        length = self.headers.get("Content-Length")
        if length is None:
            self.reply(HTTPStatus.LENGTH_REQUIRED, {"error": "a body needs a Content-Length"})
            return None
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            self.reply(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length {length!r}"})
            return None
        limit = self.server.limits.max_body_bytes
        if size > limit:
            self.close_connection = True  # the body is left unread
            self.reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"a body of {size} bytes; at most {limit} are read"},
            )
            return None
        return self.rfile.read(size)

    def reply(
        self,
        status: HTTPStatus,
        body: dict[str, Any] | bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a request it cannot parse, a method no one serves) as
        JSON like every other answer, with a status line even to what looked like HTTP/0.9."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        status = HTTPStatus(code)
        self.reply(status, {"error": message or status.phrase})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("%s %s", self.address_string(), format % args)
