"""The console's decisions against the real broker and real workers: loans wait for their
review; a POST without credentials is asked to sign in (401), one without or with a wrong CSRF
token is refused (403) and changes nothing; the form sent as a signed-in user with its session's
token approves one loan and rejects another, recorded as that user. A redrive from the
dead-letter page: dry run, then confirmation."""

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
from tests.integration.helpers import (
    every_dead_letter,
    lifecycle,
    loan_applied,
    planted_dead_letter,
    wait_outcomes,
)
from tests.integration.test_console import LOAN_HANDLERS, running_console, wait_for_review

pytestmark = pytest.mark.integration

TOKEN = "console-test-token-0123456789"
AUTH = "Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode()
CSRF = re.compile(r'<input type="hidden" name="csrf" value="([0-9a-f]+)">')
PLAN = re.compile(r'<input type="hidden" name="plan" value="([^"]+)">')


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


def test_a_signed_in_user_redrives_a_fixed_dead_letter_from_the_dry_run(
    ns: Any, workers: Any, console: int
) -> None:
    """The dead-letter page's redrive on the real broker: the dry run of a group sends nothing;
    its confirmation sends the fixable one (refusing the spent one), the broker's answer is
    shown, and its saga completes; the same confirmation again sends nothing."""
    planted_dead_letter(ns, "con-fixed")
    planted_dead_letter(ns, "con-spent", redrives=3)
    ns.client.flush()
    query = urllib.parse.urlencode({"topic": "orders.events.dlq", "reason": "unknown_schema_id"})
    connection = http.client.HTTPConnection("127.0.0.1", console, timeout=60)
    connection.request("GET", f"/dlq/redrive?{query}")
    answer = connection.getresponse()
    page = answer.read().decode()
    assert answer.status == 200, page[-2000:]
    assert "would redrive 1 dead letters, refuse 1" in page
    assert "redriven 3 times already" in page
    cookie = (answer.getheader("Set-Cookie") or "").split(";")[0]
    token, plan = CSRF.search(page), PLAN.search(page)
    assert token is not None and plan is not None, page[-2000:]
    assert not [m for m in ns.client.read_to_end([ns.topic("orders.events")])], "a dry run sent"

    origin = f"http://127.0.0.1:{console}"
    form = {"csrf": token.group(1), "plan": plan.group(1)}
    headers = {"Origin": origin, "Cookie": cookie, "Authorization": AUTH}
    done = post_page(console, "/dlq/redrive", form, headers)
    assert done[0] == 200, done[1][-2000:]
    assert "redriven 1 (written, acknowledged by the broker), NOT written 0, refused 1" in done[1]
    assert f"-&gt; {ns.topic('orders.events')}[" in done[1]
    assert wait_outcomes(ns, {"con-fixed"})["con-fixed"].event_type == "SagaCompleted"
    again = post_page(console, "/dlq/redrive", form, headers)
    assert again[0] == 409 and "confirmed already" in again[1]
    redriven = [m.key for m in ns.client.read_to_end([ns.topic("orders.events")])]
    assert redriven == [b"con-fixed"]
    assert sorted(m.key for m in every_dead_letter(ns)) == [b"con-fixed", b"con-spent"]


def post_page(
    port: int, path: str, form: dict[str, str], headers: dict[str, str]
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    connection.request("POST", path, urllib.parse.urlencode(form), headers)
    answer = connection.getresponse()
    return answer.status, answer.read().decode()
