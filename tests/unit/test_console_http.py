"""The console's HTTP rules, on a one-route application: read-only, bodies refused unread past
the limit, security headers on every answer, loopback Host names only when bound to loopback."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sagastream.console.app import SECURITY_HEADERS, Limited
from sagastream.runtime.http import Limits


def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def call(method: str, body: bytes | None = None) -> httpx.Response:
    """One request to the application, in process."""
    app = Starlette(
        routes=[Route("/", hello, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])],
        middleware=[Middleware(Limited, limits=Limits(max_body_bytes=1024))],
    )

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.request(method, "/", content=body)

    return asyncio.run(send())


def test_only_get_and_head_are_answered_even_where_a_route_takes_more() -> None:
    assert call("GET").text == "hello" and call("HEAD").status_code == 200
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        refused = call(method, b"x")
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"


def test_a_body_past_the_limit_is_refused_and_every_answer_has_the_security_headers() -> None:
    assert call("GET", b"x" * 1025).status_code == 413
    assert call("GET", b"x" * 1024).status_code == 200
    answer = call("GET")
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name] == value
    # scripts: the console's own file only, never one inline (nor one a key could smuggle in)
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy


def test_console_refuses_a_port_that_is_no_tcp_port(capsys: pytest.CaptureFixture[str]) -> None:
    from sagastream.ops.cli import main

    assert main(["console", "--port", "99999"]) == 2
    assert "--port 99999 is no TCP port" in capsys.readouterr().err


def test_the_style_sheet_is_served_from_an_editable_install_too() -> None:
    """`make install` links each package file into build/__editable__* (a symlink out of the
    package's folder): the sheet must be served through it, or every page shows unstyled."""
    from sagastream.console.app import build_app
    from tests.unit.test_console_redrive import Reader

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=build_app(Reader(), "127.0.0.1"))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get("/static/console.css")

    sheet = asyncio.run(get())
    assert sheet.status_code == 200, sheet.text
    assert sheet.headers["content-type"].startswith("text/css")
    assert "the console's one style sheet" in sheet.text
