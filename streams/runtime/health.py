"""A worker's one HTTP port: /metrics (Prometheus), /healthz (alive), /readyz (ready to work).

/healthz answers 200 while every role's thread runs. /readyz answers 200 once every role is
ready (the orchestrator's stores are restored and it consumes; each handler loop has its
partitions), else 503; both bodies say, per role, as JSON.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], dict[str, bool]]


def serve(
    registry: CollectorRegistry, alive: Probe, ready: Probe, host: str, port: int
) -> ThreadingHTTPServer:
    """Serve the three endpoints on a daemon thread; returns the server (port 0: any free one)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                roles = (alive if path == "/healthz" else ready)()
                status = (
                    HTTPStatus.OK
                    if roles and all(roles.values())
                    else HTTPStatus.SERVICE_UNAVAILABLE
                )
                body = json.dumps({"ok": status == HTTPStatus.OK, "roles": roles}).encode()
                self._send(status, body, "application/json")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"/metrics, /healthz or /readyz\n", "text/plain")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the worker's log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
