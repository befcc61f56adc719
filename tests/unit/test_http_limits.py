"""The HTTP servers' limits and the signals API's authentication, on real sockets.

The signals server is given a client whose only use here is its settings; `send_signal` (which
reads the changelog and writes to Kafka: tests/integration/test_loan_saga.py) is replaced by a
recorder, so these tests see exactly what the HTTP layer lets through and as whom.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sagastream.errors import UsageError
from sagastream.ops import signals
from sagastream.runtime import health
from sagastream.runtime.health import Check
from sagastream.runtime.http import Limits
from sagastream.runtime.settings import Settings

TOKEN = "alice-token-0123456789abcdef"
PATH = "/sagas/loan/loan-1/steps/review/signal"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def record(client: Any, *args: Any) -> dict[str, Any]:
        calls.append(args)
        return {"event_id": f"e-{len(calls)}"}

    monkeypatch.setattr(signals, "send_signal", record)
    return calls


def _api(limits: Limits, **settings: Any) -> Iterator[int]:
    values = Settings(api_tokens=f"alice={TOKEN},bob=bob-token-0123456789abcdef", **settings)
    client = SimpleNamespace(settings=values)
    server = signals.serve(
        client,  # type: ignore[arg-type]
        "127.0.0.1",
        0,
        signals.ApiAuth.from_settings(values),
        limits,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(sent: list[tuple[Any, ...]]) -> Iterator[int]:
    yield from _api(Limits(max_connections=8, timeout_s=1.0, max_body_bytes=4096))


def post(
    port: int, body: bytes | str = b'{"outcome": "approved"}', **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent_headers = {"Content-Type": "application/json", **headers}
    conn.request("POST", PATH, body, {k.replace("_", "-"): v for k, v in sent_headers.items()})
    response = conn.getresponse()
    answer = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, answer, dict(response.getheaders())


def bearer(token: str = TOKEN) -> str:
    return f"Bearer {token}"


def test_an_unauthenticated_signal_is_refused_401(api: int, sent: list[Any]) -> None:
    status, answer, headers = post(api)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="sagastream"'
    assert "Authorization: Bearer" in answer["error"]
    assert post(api, Authorization=bearer("alice-token-0123456789abcdeX"))[0] == 401
    assert post(api, Authorization="Basic " + base64.b64encode(b"alice:nope").decode())[0] == 401
    assert post(api, Authorization="Basic !!!")[0] == 401
    assert sent == []


def test_the_caller_is_decided_by_whatever_the_body_says(api: int, sent: list[Any]) -> None:
    status, answer = post(api, Authorization=bearer())[:2]
    assert (status, answer) == (202, {"event_id": "e-1", "decided_by": "alice"})
    basic = "Basic " + base64.b64encode(b"bob:bob-token-0123456789abcdef").decode()
    assert post(api, b'{"outcome": "rejected", "note": "n"}', Authorization=basic)[0] == 202
    assert sent == [
        ("loan", "loan-1", "review", "approved", None, "alice"),
        ("loan", "loan-1", "review", "rejected", "n", "bob"),
    ]
    status, answer = post(
        api, b'{"outcome": "approved", "decided_by": "the-ceo"}', Authorization=bearer()
    )[:2]
    assert status == 400 and "decided_by is the authenticated caller (alice)" in answer["error"]
    assert len(sent) == 2


def test_a_cross_site_form_post_is_refused(api: int, sent: list[Any]) -> None:
    """A page on another site can make a browser send a text/plain POST with cookies or basic
    credentials it holds, but not application/json without a CORS preflight, which the API
    never answers."""
    form = b"outcome=approved"
    status, answer = post(
        api, form, Authorization=bearer(), Content_Type="text/plain", Origin="https://evil.example"
    )[:2]
    assert status == 403 and "origin 'https://evil.example'" in answer["error"]
    status, answer = post(api, form, Authorization=bearer(), Content_Type="text/plain")[:2]
    assert status == 415 and "not 'text/plain'" in answer["error"]
    json_from_elsewhere = post(api, Authorization=bearer(), Origin="https://evil.example")
    assert json_from_elsewhere[0] == 403
    assert sent == []


def test_an_allowed_origin_may_call(sent: list[Any]) -> None:
    for port in _api(Limits(), api_allowed_origins="https://console.example, http://x:1"):
        assert post(port, Authorization=bearer(), Origin="https://console.example")[0] == 202
        assert post(port, Authorization=bearer(), Origin="http://x:2")[0] == 403


def test_an_oversized_body_is_refused_413_unread(api: int, sent: list[Any]) -> None:
    with socket.create_connection(("127.0.0.1", api), timeout=10) as sock:
        sock.sendall(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n".encode()
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.0 413 ") and b"at most 4096 are read" in answer
    status, body = post(api, b'{"note": "' + b"x" * 5000 + b'"}', Authorization=bearer())[:2]
    assert status == 413
    assert sent == []


def test_a_body_without_length_or_not_an_object_is_a_clear_error(api: int) -> None:
    with socket.create_connection(("127.0.0.1", api), timeout=10) as sock:
        sock.sendall(
            f"POST {PATH} HTTP/1.0\r\nAuthorization: {bearer()}\r\n"
            "Content-Type: application/json\r\n\r\n".encode()
        )
        assert _read_all(sock).startswith(b"HTTP/1.0 411 ")
    status, answer = post(api, b"[1, 2]", Authorization=bearer())[:2]
    assert status == 400 and "a JSON object" in answer["error"]
    status, answer = post(api, b'{"outcome": ', Authorization=bearer())[:2]
    assert status == 400 and answer["error"]


def test_malformed_requests_get_an_answer_and_print_nothing(
    api: int, capfd: pytest.CaptureFixture[str]
) -> None:
    for garbage, status in (
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"POST / HTTP/9.9\r\n\r\n", b"505"),
        (b"\x00\xff\xfe" * 100 + b"\r\n", b"400"),
        (b"PATCH " + PATH.encode() + b" HTTP/1.0\r\n\r\n", b"501"),
    ):
        with socket.create_connection(("127.0.0.1", api), timeout=10) as sock:
            sock.sendall(garbage)
            head, _, body = _read_all(sock).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 " + status + b" "), garbage
            assert json.loads(body)["error"]
    with socket.create_connection(("127.0.0.1", api), timeout=10) as sock:
        sock.sendall(b"POST " + PATH.encode() + b" HTTP/1.0\r\nContent-Le")  # then hangs up
    time.sleep(0.2)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Exception" not in out + err


def test_500_slow_connections_pin_a_bounded_number_of_threads(api: int, sent: list[Any]) -> None:
    """8 connections are served at once (the limit here); the others are answered 503 at once
    and closed. The slow ones are cut off after timeout_s (1 s), and the API answers again."""
    before = threading.active_count()
    slow = []
    for _ in range(500):
        sock = socket.create_connection(("127.0.0.1", api), timeout=10)
        sock.sendall(b"POST ")  # and nothing more
        slow.append(sock)
    try:
        time.sleep(0.3)
        assert threading.active_count() <= before + 8
        busy = [s for s in slow[100:120] if _read_all(s).startswith(b"HTTP/1.0 503 ")]
        assert len(busy) == 20
        deadline = time.monotonic() + 10
        while (status := _try_post(api)) != 202 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 202
    finally:
        for sock in slow:
            sock.close()


def test_the_health_server_has_the_same_limits(capfd: pytest.CaptureFixture[str]) -> None:
    from prometheus_client import CollectorRegistry

    probes = lambda: {"orchestrator": Check.of([])}  # noqa: E731
    server = health.serve(
        CollectorRegistry(), probes, probes, "127.0.0.1", 0, Limits(4, 1.0, 1024)
    )
    port = server.server_address[1]
    before = threading.active_count()
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    try:
        time.sleep(0.3)
        assert threading.active_count() <= before + 4
        deadline = time.monotonic() + 10
        status = 0
        while status != 200 and time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        assert status == 200
    finally:
        for sock in slow:
            sock.close()
        server.shutdown()
    assert "Traceback" not in "".join(capfd.readouterr())


def test_the_api_needs_callers_and_strong_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match="SAGASTREAM_API_TOKENS"):
        signals.ApiAuth.from_settings(Settings())
    with pytest.raises(UsageError, match="shorter than 16") as caught:
        signals.ApiAuth.from_settings(Settings(api_tokens="alice=short"))
    assert "short" not in str(caught.value).replace("shorter", "")
    with pytest.raises(UsageError, match="no '='"):
        signals.ApiAuth.from_settings(Settings(api_tokens="alice-0123456789abcdefgh"))
    secret = tmp_path / "tokens"
    secret.write_text(f"# callers\nalice={TOKEN}\n\ncarol = carol-token-0123456789\n")
    monkeypatch.setenv("SAGASTREAM_API_TOKENS_FILE", str(secret))
    auth = signals.ApiAuth.from_settings(Settings())
    assert auth.principal(bearer()) == "alice"
    assert auth.principal("Bearer carol-token-0123456789") == "carol"
    assert auth.principal(None) is None and auth.principal("Bearer ") is None
    assert TOKEN not in repr(Settings(api_tokens=f"alice={TOKEN}"))


def _try_post(port: int) -> int:
    try:
        return post(port, Authorization=bearer())[0]
    except (OSError, http.client.HTTPException, json.JSONDecodeError):
        return 0


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)
