"""The console's writes and what guards them: a decision (approve or reject, with a note) for a
saga's waiting human step, and the redrive of dead letters (its handler is redrive.py; the
guard, `Actions.checked`, is here).

Actions are off unless `console_actions` is set. A decision is sent by `send_signal`, the code
path of `sagastream signal` and the signals API, with the caller's principal as decided_by. A
caller proves who they are with the signals API's tokens (`ApiAuth`: HTTP basic from a browser,
principal:token). A browser cannot be made to send a decision by another site's page: the form
carries a token bound to the browser's session cookie (SameSite=Strict, HttpOnly), which the
POST must bring back, and the POST's Origin (or Referer) must be the console's own (or one of
`api_allowed_origins`, for a console behind a TLS proxy).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import urllib.parse
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from sagastream.ops.client import EventClient
from sagastream.ops.signals import ApiAuth, SignalError, UnknownSaga, send_signal
from sagastream.runtime.kafka_io import DeliveryFailed
from sagastream.runtime.settings import Settings

SESSION_COOKIE = "sagastream_session"
# the paths that take a POST when actions are on: a signal form, a redrive's confirmation
SIGNAL_PATH = re.compile(r"^/sagas/[\w.-]+/.+/steps/[\w.-]+/signal$")
REDRIVE_PATH = re.compile(r"^/dlq/redrive$")
POST_PATHS = (SIGNAL_PATH, REDRIVE_PATH)
REALM = 'Basic realm="sagastream console", charset="UTF-8"'


class Csrf:
    """Per-session form tokens: a session is a random cookie, its token an HMAC of it under a
    key of this process, so nothing is stored and a token fits one session only."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def token(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def valid(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.token(session).encode(), token.encode())


def session_cookie(response: Response, session: str, secure: bool) -> None:
    """Set the session cookie: never sent along by another site's request, never read by script."""
    response.set_cookie(
        SESSION_COOKIE, session, httponly=True, samesite="strict", secure=secure, path="/"
    )


def same_origin(request: Request, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether the request comes from one of the console's own pages: its Origin (or, without
    one, its Referer) names the scheme, host and port the request was sent to, or one of
    `allowed` (the console's address behind a TLS proxy, which it cannot see itself)."""
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}", *allowed}
    origin = request.headers.get("origin")
    if origin is not None:
        return origin in own
    referer = urllib.parse.urlsplit(request.headers.get("referer", ""))
    return f"{referer.scheme}://{referer.netloc}" in own


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None if it is longer than `limit` (left unread past it): a
    chunked body has no Content-Length for the middleware to refuse early."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@dataclass(frozen=True)
class Decision:
    """A signal form's fields."""

    outcome: str
    note: str | None
    token: str | None


@dataclass(frozen=True)
class Form:
    """A urlencoded form's fields, each with every value it was given."""

    fields: dict[str, list[str]]

    @classmethod
    def parse(cls, body: bytes) -> Form:
        """ValueError if the body is not UTF-8."""
        text = body.decode("utf-8", "strict")
        return cls(urllib.parse.parse_qs(text, keep_blank_values=True))

    def one(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


def decision_of(form: Form) -> Decision:
    """A signal form's outcome, note and CSRF token."""
    note = (form.one("note") or "").strip()
    return Decision(form.one("outcome") or "", note or None, form.one("csrf"))


def parse_form(body: bytes) -> Decision:
    """A signal form's fields (ValueError if not UTF-8)."""
    return decision_of(Form.parse(body))


class Actions:
    """What every POST must pass (`checked`), the forms' sessions, and the POST handler of a
    signal form (`SIGNAL_PATH`)."""

    def __init__(
        self,
        auth: ApiAuth,
        csrf: Csrf,
        events: EventClient,
        origins: frozenset[str] = frozenset(),
        max_body_bytes: int = 64 * 1024,
    ) -> None:
        self.auth = auth
        self.csrf = csrf
        self.events = events
        self.origins = origins
        self.max_body_bytes = max_body_bytes

    @classmethod
    def from_settings(cls, settings: Settings, auth: ApiAuth, events: EventClient) -> Actions:
        """The settings' browser origins (api_allowed_origins) and body limit, a new CSRF key."""
        origins = frozenset(o.strip() for o in settings.api_allowed_origins.split(",") if o.strip())
        return cls(auth, Csrf(), events, origins, settings.api_max_body_bytes)

    def form_token(self, request: Request) -> tuple[str, str]:
        """The browser's session (a new one if it has none) and its forms' CSRF token."""
        session = request.cookies.get(SESSION_COOKIE) or Csrf.new_session()
        return session, self.csrf.token(session)

    @staticmethod
    def keep_session(request: Request, page: Response, session: str) -> None:
        """Give the browser its session cookie if the page's form was made for a new one."""
        if session != request.cookies.get(SESSION_COOKIE):
            session_cookie(page, session, request.url.scheme == "https")

    async def checked(self, request: Request) -> tuple[str, Form] | Response:
        """A POSTed form and its sender's principal, or the refusal to answer with: no
        user (401), not from a page of this console or a token that does not fit the session
        (403), too long (413), not a form (400)."""
        principal = self.auth.principal(request.headers.get("authorization"))
        if principal is None:
            return PlainTextResponse(
                "actions need a user: sign in with a principal and token of SAGASTREAM_API_TOKENS",
                401,
                {"WWW-Authenticate": REALM},
            )
        if not same_origin(request, self.origins):
            return PlainTextResponse(
                "refused: this form was not sent from a page of this console (Origin/Referer)", 403
            )
        body = await bounded_body(request, self.max_body_bytes)
        if body is None:
            return PlainTextResponse(f"a form of at most {self.max_body_bytes} bytes", 413)
        try:
            form = Form.parse(body)
        except ValueError:
            return PlainTextResponse("the form is not UTF-8 urlencoded", 400)
        if not self.csrf.valid(request.cookies.get(SESSION_COOKIE), form.one("csrf")):
            return PlainTextResponse(
                "refused: the form's CSRF token does not fit this session; reload the page "
                "and send the form again",
                403,
            )
        return principal, form

    async def signal(self, request: Request) -> Response:
        checked = await self.checked(request)
        if isinstance(checked, Response):
            return checked
        principal, form = checked
        decision = decision_of(form)
        p = request.path_params
        try:
            await run_in_threadpool(
                send_signal,
                self.events,
                p["saga"],
                p["key"],
                p["step"],
                decision.outcome,
                decision.note,
                principal,
            )
        except UnknownSaga as exc:
            return PlainTextResponse(str(exc), 404)
        except SignalError as exc:
            return PlainTextResponse(str(exc), 400)
        except DeliveryFailed as exc:
            return PlainTextResponse(f"the broker did not take the signal: {exc}", 502)
        saga_page = "/sagas/" + urllib.parse.quote(p["saga"]) + "/" + urllib.parse.quote(p["key"])
        return RedirectResponse(saga_page + "?signalled=" + decision.outcome, 303)
