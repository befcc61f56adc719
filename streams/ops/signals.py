"""Human decisions for waiting steps of any saga: `sagastream signal` and its HTTP twin.

A signal is acknowledged only once the broker wrote it: the HTTP API answers 202 then, 400 for
a signal no step would take, 404 for a saga key that no saga of that type is stored under, and
502 when the broker refused it. The API is for authenticated callers only (`ApiAuth`): a signal
is approval authority.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any

from sagastream.core.topology import SIGNAL_EVENT, Topology
from sagastream.errors import SagastreamError, UsageError
from sagastream.ops.client import EventClient, stored_state
from sagastream.runtime.http import BoundedHandler, BoundedServer, Limits
from sagastream.runtime.kafka_io import DeliveryFailed
from sagastream.runtime.settings import Settings

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


class ApiAuth:
    """Who may call the signals API: principal -> token, from the settings' api_tokens. Tokens are compared in constant time and never printed."""

    MIN_TOKEN_CHARS = 16

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise UsageError(
                "the signals API needs callers: set SAGASTREAM_API_TOKENS to principal=token "
                "pairs separated by commas, or SAGASTREAM_API_TOKENS_FILE to a file of one pair "
                "a line (a Docker or Kubernetes secret)"
            )
        for principal, token in tokens.items():
            if not principal or not _PRINCIPAL.fullmatch(principal):
                raise UsageError(f"API principal {principal!r}: letters, digits and . _ @ - only")
            if len(token) < self.MIN_TOKEN_CHARS:
                raise UsageError(
                    f"the API token of {principal} is shorter than {self.MIN_TOKEN_CHARS} "
                    "characters (e.g. `openssl rand -hex 24`)"
                )
        self._tokens = {p: t.encode() for p, t in tokens.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiAuth:
        # SAGASTREAM_API_TOKENS, or the file SAGASTREAM_API_TOKENS_FILE names: one pair a line
        text = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
        tokens: dict[str, str] = {}
        for item in re.split(r"[,\n]", text):
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            principal, sep, token = item.partition("=")
            if not sep:
                raise UsageError(
                    "API tokens are principal=token pairs; one has no '=' (its value is not shown)"
                )
            tokens[principal.strip()] = token.strip()
        return cls(tokens)

    def principal(self, authorization: str | None) -> str | None:
        """The caller a `Authorization: Bearer <token>` (or Basic principal:token) proves."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            given = credentials.encode()
            found = None
            for principal, token in self._tokens.items():  # every one compared: no early exit
                if hmac.compare_digest(given, token):
                    found = principal
            return found
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials, validate=True).partition(b":")
            except (ValueError, binascii.Error):
                return None
            name = user.decode("utf-8", "replace")
            token = self._tokens.get(name, b"\x00" * self.MIN_TOKEN_CHARS)
            return name if hmac.compare_digest(password, token) and name in self._tokens else None
        return None


_PRINCIPAL = re.compile(r"[\w.@-]+")


def serve(
    client: EventClient, host: str, port: int, auth: ApiAuth, limits: Limits | None = None
) -> ThreadingHTTPServer:
    """An HTTP server: POST /sagas/<saga>/<key>/steps/<step>/signal {"outcome", "note"}, with
    `Authorization: Bearer <token>` and `Content-Type: application/json`. The caller's principal
    is the signal's decided_by. Refused: 401 (no or a wrong token), 403 (a browser page of
    another origin), 415 (not JSON: a cross-site form cannot send it), 411/413 (no length, too
    long); the settings bound connections and time (sagastream.runtime.http)."""
    settings = client.settings
    origins = {o.strip() for o in settings.api_allowed_origins.split(",") if o.strip()}

    class Handler(BoundedHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            match = _PATH.match(self.path)
            if match is None:
                self.reply(
                    HTTPStatus.NOT_FOUND, {"error": "POST /sagas/<saga>/<key>/steps/<step>/signal"}
                )
                return
            principal = auth.principal(self.headers.get("Authorization"))
            if principal is None:
                self.reply(
                    HTTPStatus.UNAUTHORIZED,
                    {"error": "send Authorization: Bearer <token> (settings: api_tokens)"},
                    headers={"WWW-Authenticate": 'Bearer realm="sagastream"'},
                )
                return
            origin = self.headers.get("Origin")
            if origin is not None and origin not in origins:
                self.reply(
                    HTTPStatus.FORBIDDEN,
                    {
                        "error": f"requests from origin {origin!r} are not allowed "
                        "(settings: api_allowed_origins)"
                    },
                )
                return
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                self.reply(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    {"error": f"Content-Type must be application/json, not {kind or 'none'!r}"},
                )
                return
            raw = self.read_body()
            if raw is None:
                return
            self._signal(match, principal, raw)

        def _signal(self, match: re.Match[str], principal: str, raw: bytes) -> None:
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise SignalError('the body must be a JSON object: {"outcome": ...}')
                named = body.get("decided_by")
                if named not in (None, "", principal):
                    raise SignalError(
                        f"decided_by is the authenticated caller ({principal}); the body "
                        f"names {named!r}"
                    )
                note = body.get("note")
                meta = send_signal(
                    client,
                    match["saga"],
                    match["key"],
                    match["step"],
                    str(body.get("outcome")),
                    None if note is None else str(note),
                    principal,
                )
            except UnknownSaga as exc:
                self.reply(HTTPStatus.NOT_FOUND, {"error": str(exc)})
                return
            except (SignalError, ValueError) as exc:  # JSON errors are ValueErrors
                self.reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            except DeliveryFailed as exc:  # the request was fine; the broker did not take it
                self.reply(HTTPStatus.BAD_GATEWAY, {"error": str(exc)})
                return
            self.reply(HTTPStatus.ACCEPTED, {"event_id": meta["event_id"], "decided_by": principal})

    return BoundedServer((host, port), Handler, limits or settings.http_limits())
