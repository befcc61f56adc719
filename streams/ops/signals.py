"""Human decisions for waiting steps of any saga: `sagastream signal` and its HTTP twin.

A signal is acknowledged only once the broker wrote it: the HTTP API answers 202 then, 400 for
a signal no step would take, 404 for a saga key that no saga of that type is stored under, and
502 when the broker refused it.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sagastream.core.topology import SIGNAL_EVENT, Topology
from sagastream.errors import SagastreamError, UsageError
from sagastream.ops.client import EventClient, stored_state
from sagastream.runtime.kafka_io import DeliveryFailed

OUTCOMES = ("approved", "rejected")
_PATH = re.compile(r"^/sagas/(?P<saga>[\w.-]+)/(?P<key>[^/]+)/steps/(?P<step>[\w.-]+)/signal$")


class SignalError(SagastreamError, ValueError):
    """A signal that cannot be delivered as asked."""


class UnknownSaga(SignalError):
    """A signal for a saga key under which no saga of that type is stored."""


def check_signal(topology: Topology, saga: str, step: str, outcome: str) -> None:
    """Reject what the orchestrator would dead-letter, before it is sent."""
    if SIGNAL_EVENT not in topology.events:
        raise SignalError(
            f"topology.yaml declares no {SIGNAL_EVENT} event, so no step takes signals"
        )
    spec = topology.sagas.get(saga)
    if spec is None:
        raise SignalError(f"unknown saga {saga!r}; topology.yaml has {', '.join(topology.sagas)}")
    human = [name for name, s in spec.steps.items() if s.human]
    if step not in human:
        raise SignalError(
            f"saga {saga} has no human step {step!r}; steps taking signals: {', '.join(human) or 'none'}"
        )
    if outcome not in OUTCOMES:
        raise SignalError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")


def send_signal(
    client: EventClient,
    saga: str,
    key: str,
    step: str,
    outcome: str,
    note: str | None = None,
    by: str = "cli",
) -> dict[str, Any]:
    """Publish a StepSignal keyed by the saga key; returns its EventMeta once the broker wrote it
    (DeliveryFailed if it refused)."""
    check_signal(client.topology, saga, step, outcome)
    try:
        state = stored_state(client.settings, client.topology, saga, key)
    except UsageError as exc:  # the key is another saga type's
        raise UnknownSaga(f"cannot signal {saga}/{key}: {exc}") from exc
    if state is None:
        # the orchestrator would dead-letter it: say so now, while someone is waiting for it
        raise UnknownSaga(
            f"no {saga} saga with key {key!r} is stored (never started, not started yet, or "
            f"removed after its retention_ms); `sagastream saga list --saga {saga}` lists them"
        )
    fields = {"saga_type": saga, "step": step, "outcome": outcome, "note": note, "decided_by": by}
    return client.deliver(SIGNAL_EVENT, key, fields)


def serve(client: EventClient, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server: POST /sagas/<saga>/<key>/steps/<step>/signal {"outcome", "note", "decided_by"}."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            match = _PATH.match(self.path)
            if match is None:
                self._reply(
                    HTTPStatus.NOT_FOUND, {"error": "POST /sagas/<saga>/<key>/steps/<step>/signal"}
                )
                return
            try:
                body = json.loads(
                    self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"
                )
                meta = send_signal(
                    client,
                    match["saga"],
                    match["key"],
                    match["step"],
                    str(body.get("outcome")),
                    body.get("note"),
                    str(body.get("decided_by") or "http"),
                )
            except UnknownSaga as exc:
                self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc)})
                return
            except (SignalError, json.JSONDecodeError, AttributeError) as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            except DeliveryFailed as exc:  # the request was fine; the broker did not take it
                self._reply(HTTPStatus.BAD_GATEWAY, {"error": str(exc)})
                return
            self._reply(HTTPStatus.ACCEPTED, {"event_id": meta["event_id"]})

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return ThreadingHTTPServer((host, port), Handler)
