"""The console's signal form guards, in process: CSRF tokens fit one session only, the Origin
(or Referer) must be the console's own, an unauthenticated POST is asked to sign in (401) and a
forged one is refused (403) before anything is sent; only the signal path takes a POST."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from sagastream.console.actions import SESSION_COOKIE, Actions, Csrf, parse_form
from sagastream.console.app import Limited
from sagastream.ops.signals import ApiAuth
from sagastream.runtime.http import Limits

TOKEN = "a-token-of-at-least-16-chars"
PATH = "/sagas/loan/l-1/steps/review/signal"
BASE = "http://127.0.0.1:8089"


class NoEvents:
    """Stands for the client: a refused POST must never reach it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused signal reached the client ({name})")


def app(csrf: Csrf) -> Starlette:
    actions = Actions(ApiAuth({"alice": TOKEN}), csrf, NoEvents())  # type: ignore[arg-type]
    route = Route("/sagas/{saga}/{key:path}/steps/{step}/signal", actions.signal, methods=["POST"])
    return Starlette(
        routes=[route], middleware=[Middleware(Limited, limits=Limits(), writable=True)]
    )


def post(
    csrf: Csrf, headers: dict[str, str], form: dict[str, str], path: str = PATH
) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app(csrf))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            return await http.post(path, data=form, headers=headers)

    return asyncio.run(send())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_token_fits_its_own_session_only() -> None:
    csrf = Csrf()
    one, two = Csrf.new_session(), Csrf.new_session()
    assert csrf.valid(one, csrf.token(one))
    assert not csrf.valid(two, csrf.token(one))
    assert not csrf.valid(one, Csrf().token(one))  # another process's key
    assert not csrf.valid(None, csrf.token(one)) and not csrf.valid(one, None)
    assert not csrf.valid(one, "")


def test_the_form_gives_outcome_note_and_token() -> None:
    found = parse_form(b"outcome=approved&note=+looks+fine+&csrf=abc")
    assert (found.outcome, found.note, found.token) == ("approved", "looks fine", "abc")
    assert parse_form(b"outcome=rejected&note=").note is None


def test_no_or_wrong_credentials_are_asked_to_sign_in() -> None:
    csrf = Csrf()
    session = Csrf.new_session()
    form = {"outcome": "approved", "csrf": csrf.token(session)}
    good = {"Origin": BASE, "Cookie": f"{SESSION_COOKIE}={session}"}
    for auth in ({}, {"Authorization": basic("alice", "wrong-token-0000000")}):
        answer = post(csrf, {**good, **auth}, form)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")


def test_a_forged_or_foreign_form_is_refused() -> None:
    csrf = Csrf()
    session = Csrf.new_session()
    auth = {"Authorization": basic("alice", TOKEN)}
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    token = csrf.token(session)
    cases = [
        ({**auth, **cookie, "Origin": BASE}, {"outcome": "approved"}),  # no token
        ({**auth, **cookie, "Origin": BASE}, {"outcome": "approved", "csrf": "0" * 64}),
        ({**auth, "Origin": BASE}, {"outcome": "approved", "csrf": token}),  # no session
        (
            {**auth, **cookie, "Origin": "http://evil.example"},
            {"outcome": "approved", "csrf": token},
        ),
        ({**auth, **cookie, "Referer": "http://evil.example/x"}, {"csrf": token}),
        ({**auth, **cookie}, {"outcome": "approved", "csrf": token}),  # neither Origin nor Referer
    ]
    for headers, form in cases:
        answer = post(csrf, headers, form)
        assert answer.status_code == 403, (headers, form, answer.text)


def test_only_the_signal_path_takes_a_post() -> None:
    csrf = Csrf()
    answer = post(csrf, {"Origin": BASE}, {}, path="/sagas/loan/l-1")
    assert answer.status_code == 405


def test_an_allowed_origin_is_taken_and_a_long_form_is_refused_unread() -> None:
    from starlette.requests import Request

    from sagastream.console.actions import same_origin

    def request(**headers: str) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {"type": "http", "scheme": "http", "headers": raw, "path": "/", "method": "POST"}
        return Request(scope)

    proxied = frozenset({"https://console.example"})
    seen = request(Host="console:8089", Origin="https://console.example")
    assert same_origin(seen, proxied) and not same_origin(seen)
    assert same_origin(request(Host="c:1", Referer="https://console.example/sagas/x"), proxied)
    assert not same_origin(request(Host="c:1", Origin="null"), proxied)

    csrf = Csrf()
    session = Csrf.new_session()
    headers = {
        "Authorization": basic("alice", TOKEN),
        "Origin": BASE,
        "Cookie": f"{SESSION_COOKIE}={session}",
    }
    long_note = {"outcome": "approved", "csrf": csrf.token(session), "note": "x" * 70_000}
    assert post(csrf, headers, long_note).status_code == 413  # its Content-Length says so

    async def chunked() -> httpx.Response:  # no Content-Length: refused once past the limit
        async def body() -> AsyncIterator[bytes]:
            yield f"outcome=approved&csrf={csrf.token(session)}&note=".encode()
            for _ in range(70):
                yield b"x" * 1024

        transport = httpx.ASGITransport(app=app(csrf))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            return await http.post(PATH, content=body(), headers=headers)

    assert asyncio.run(chunked()).status_code == 413
