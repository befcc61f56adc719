"""The console's decisions against the real broker and real workers: loans wait for their
review; a POST without credentials is asked to sign in (401), one without or with a wrong CSRF
token is refused (403) and changes nothing; the form sent as a signed-in user with its session's
token approves one loan and rejects another, recorded as that user."""

from __future__ import annotations

import base64
import http.client
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastream.ops.client import Client
from sagastream.ops.demo import settings_env
from tests.integration.helpers import every_dead_letter, lifecycle, loan_applied, wait_outcomes
from tests.integration.test_console import LOAN_HANDLERS, running_console, wait_for_review

pytestmark = pytest.mark.integration

TOKEN = "console-test-token-0123456789"
AUTH = "Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode()
CSRF = re.compile(r'<input type="hidden" name="csrf" value="([0-9a-f]+)">')


@pytest.fixture
def console(ns: Any, tmp_path: Path) -> Iterator[int]:
    """A console with actions on and one user, alice."""
    env = {
        **settings_env(ns.settings),
        "SAGASTREAM_CONSOLE_ACTIONS": "true",
        "SAGASTREAM_API_TOKENS": f"alice={TOKEN}",
    }
    with running_console(env, tmp_path / "console.log") as port:
        yield port


def request(
    port: int, method: str, path: str, body: dict[str, str] | None = None, **headers: str
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = None if body is None else urllib.parse.urlencode(body)
    if data is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(method, path, data, headers)
    answer = connection.getresponse()
    answer.read()
    return answer


def form_of(port: int, key: str) -> tuple[str, str]:
    """The saga page's session cookie and its form's CSRF token."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", f"/sagas/loan/{key}")
    answer = connection.getresponse()
    page = answer.read().decode()
    assert answer.status == 200, page[-2000:]
    assert f'action="/sagas/loan/{key}/steps/review/signal"' in page
    cookie = answer.getheader("Set-Cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    found = CSRF.search(page)
    assert found is not None, page[-2000:]
    return cookie.split(";")[0], found.group(1)


def test_a_signed_in_user_decides_a_waiting_review_through_the_form(
    ns: Any, start_workers: Any, console: int
) -> None:
    start_workers("orchestrator")
    start_workers(LOAN_HANDLERS)
    with Client(ns.settings) as client:
        for key in ("act-yes", "act-no"):
            client.start(loan_applied(key))
        for key in ("act-yes", "act-no"):
            wait_for_review(client, key)

    cookie, token = form_of(console, "act-yes")
    path = "/sagas/loan/act-yes/steps/review/signal"
    origin = f"http://127.0.0.1:{console}"
    ok = {"outcome": "approved", "note": "fine", "csrf": token}
    assert request(console, "POST", path, ok, Origin=origin, Cookie=cookie).status == 401
    forged = [
        {"outcome": "approved", "note": "fine"},
        {**ok, "csrf": "0" * len(token)},
    ]
    for body in forged:
        answer = request(
            console, "POST", path, body, Origin=origin, Cookie=cookie, Authorization=AUTH
        )
        assert answer.status == 403
    foreign = request(
        console, "POST", path, ok, Origin="http://evil.example", Cookie=cookie, Authorization=AUTH
    )
    assert foreign.status == 403
    with Client(ns.settings) as client:
        view = client.describe("loan", "act-yes")
        assert view is not None and view.status == "running"  # nothing was sent

    sent = request(console, "POST", path, ok, Origin=origin, Cookie=cookie, Authorization=AUTH)
    assert (
        sent.status == 303
        and sent.getheader("Location") == "/sagas/loan/act-yes?signalled=approved"
    )
    cookie, token = form_of(console, "act-no")
    no = {"outcome": "rejected", "note": "income unclear", "csrf": token}
    rejected = request(
        console,
        "POST",
        "/sagas/loan/act-no/steps/review/signal",
        no,
        Origin=origin,
        Cookie=cookie,
        Authorization=AUTH,
    )
    assert rejected.status == 303

    outcomes = wait_outcomes(ns, {"act-yes", "act-no"})
    assert outcomes["act-yes"].event_type == "SagaCompleted"
    assert outcomes["act-no"].event_type == "SagaCompensated"
    assert "rejected by alice: income unclear" in outcomes["act-no"].record["reason"]
    trail = lifecycle(ns, "act-yes", until="completed")
    assert trail.index(("step_succeeded", "review")) < trail.index(("step_started", "disbursement"))
    signals = ns.client.read_to_end([ns.topic("sagas.signals")])
    decided = {(m.key, m.record["outcome"], m.record["decided_by"]) for m in signals if m.record}
    assert decided == {(b"act-yes", "approved", "alice"), (b"act-no", "rejected", "alice")}
    assert every_dead_letter(ns) == []
