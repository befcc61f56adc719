"""`sagastream console` against the real broker and real workers: every page answers, and what
it shows matches what `Client` (`saga show`, `saga list`) and the topics read_committed say;
a key carrying HTML is shown escaped; the console refuses to write and foreign Host names."""

from __future__ import annotations

import contextlib
import html
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastream.examples.events import OrderPlaced
from sagastream.ops.client import Client
from sagastream.ops.demo import settings_env
from sagastream.wire.dlq import read_dead_letter_headers
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import (
    CONSOLE_ROW,
    console_page,
    console_rows,
    every_dead_letter,
    good_order,
    http_get,
    loan_applied,
    wait_outcomes,
)

pytestmark = pytest.mark.integration

LOAN_HANDLERS = "credit,documents,disbursement"
EVIL = "<script>alert('x')</script>"
POISON_KEY = b"<b>poison</b>"


@contextlib.contextmanager
def running_console(env: dict[str, str], log_path: Path) -> Iterator[int]:
    """A console process on a free port with the settings of `env`; its port."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagastream.ops.cli", "console", "--port", "0"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"on http://127\.0\.0\.1:(\d+)/", log_path.read_text())):
            assert proc.poll() is None, f"the console exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, (
                f"the console never listened: {log_path.read_text()}"
            )
            time.sleep(0.2)
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def console(ns: Any, tmp_path: Path) -> Iterator[int]:
    """A console with the test's settings; its port."""
    with running_console(settings_env(ns.settings), tmp_path / "console.log") as port:
        yield port


def page(port: int, path: str) -> str:
    status, body = http_get(port, path, timeout=60)
    text = body.decode()
    assert status == 200, f"GET {path}: {status}\n{text[-2000:]}"
    return text


def wait_for_review(client: Client, key: str) -> None:
    deadline = time.monotonic() + 60
    while (view := client.describe("loan", key)) is None or not any(
        s.name == "review" and s.state == "running" for s in view.steps
    ):
        assert time.monotonic() < deadline, f"the loan never waited for its review: {view}"
        time.sleep(0.5)


def run_sagas(ns: Any) -> dict[str, str]:
    """Orders that complete and one declined (one keyed with HTML), a loan waiting for its
    review, and a poison record dead-lettered; the expected status of each saga key."""
    expected = {"con-ok-1": "completed", "con-ok-2": "completed", EVIL: "completed"}
    expected["con-declined"] = "compensated"
    with Client(ns.settings) as client:
        for key, status in expected.items():
            card = "tok_decline" if status == "compensated" else "tok_visa"
            client.start(OrderPlaced(**{**good_order(key), "card_token": card}), wait=False)
        client.start(loan_applied("con-loan"))
        ns.client.publish_raw(ns.topic("orders.events"), POISON_KEY, b"\x07garbage")
        ns.client.flush()
        wait_outcomes(ns, set(expected))
        wait_for_review(client, "con-loan")
    expected["con-loan"] = "running"
    dlq = ns.topic("orders.events.dlq")
    ns.client.read([dlq], lambda ms: any(m.key == POISON_KEY for m in ms), 60.0)
    return expected


def test_every_page_shows_what_the_topics_hold(ns: Any, start_workers: Any, console: int) -> None:
    start_workers("orchestrator")
    start_workers(f"{HANDLERS},{LOAN_HANDLERS}")
    expected = run_sagas(ns)

    with Client(ns.settings) as client:
        stored = {s.key: s.status for s in client.list_sagas().sagas}

    def all_shown(text: str) -> bool:
        return {key: status for _, key, status in console_rows(text)} == stored

    listed = console_page(console, "/sagas", all_shown)
    rows = {
        html.unescape(key): (saga, status, href)
        for status, saga, href, key in CONSOLE_ROW.findall(listed)
    }
    with Client(ns.settings) as client:
        assert {k: v[1] for k, v in rows.items()} == stored == expected
        for key, (saga, status, href) in rows.items():
            shown = page(console, html.unescape(href))
            view = client.describe(saga, key)
            assert view is not None and view.status == status
            assert f'<dd class="status status-{view.status}">{view.status}</dd>' in shown
            assert shown.count("<tr><td>+") == len(view.history)  # one row per change
            for step in view.steps:
                assert f'class="step state-{step.state}"><title>{step.name}: ' in shown
            assert '<svg class="timeline"' in shown and '<svg class="dag"' in shown
            assert f"<dt>version</dt><dd>v1 {view.shape}</dd>" in shown
    assert "<script>" not in listed and "&lt;script&gt;alert(" in listed
    # every saga runs on the first published version of its definition
    assert listed.count("<td>v1</td>") == len(expected)

    running = page(console, "/sagas?status=running&saga=loan")
    assert [(s, k) for s, _, _, k in CONSOLE_ROW.findall(running)] == [("running", "con-loan")]
    loan = page(console, "/sagas/loan/con-loan")
    assert '<rect class="bar wait open"' in loan  # the review waits, drawn up to now
    assert "step_timeout" in loan  # its escalation timer is pending

    check_overview(ns, console)
    check_dead_letters(ns, console)
    topology = page(console, "/topology")
    for saga, spec in ns.topology.sagas.items():
        assert f'id="saga-{saga}"' in topology
        assert all(f"<title>{step}: none</title>" in topology for step in spec.steps)


def check_overview(ns: Any, port: int) -> None:
    """The overview's totals are the outcome records of the hour and the dead letters,
    read_committed (the console's index reads them a moment behind: polled)."""
    outcomes = ns.client.read_to_end([ns.topic("sagas.outcomes")])
    with Client(ns.settings) as client:
        orders = client.list_sagas(saga="order").matched  # all started within the hour
    cells = [f'<td class="started">{orders}</td>']
    for event, series in (("SagaCompleted", "completed"), ("SagaCompensated", "compensated")):
        count = sum(1 for m in outcomes if m.event_type == event)
        cells.append(f'<td class="{series}">{count}</td>')
    letters = f"<h2>Dead letters ({len(every_dead_letter(ns))})</h2>"

    def counted(text: str) -> bool:
        row = re.search(r'<tr data-saga="order">(.*?)</tr>', text, re.S)
        return row is not None and all(c in row.group(1) for c in cells) and letters in text

    overview = console_page(port, "/", counted)
    loan = re.search(r'<tr data-saga="loan">(.*?)</tr>', overview, re.S)
    assert loan is not None and ">1</a></td>" in loan.group(1)  # one loan running


def check_dead_letters(ns: Any, port: int) -> None:
    """Every dead letter of the prefix is listed, and one shows decoded with its headers."""
    letters = every_dead_letter(ns)
    listed = page(port, "/dlq")
    assert f"<h2>Messages ({len(letters)})</h2>" in listed
    assert "<b>poison" not in listed and "&lt;b&gt;poison&lt;/b&gt;" in listed
    poison = next(m for m in letters if m.key == POISON_KEY)
    reason = read_dead_letter_headers(poison.headers)["reason"]
    chosen = [
        m
        for m in letters
        if m.topic == poison.topic and read_dead_letter_headers(m.headers)["reason"] == reason
    ]
    query = urllib.parse.urlencode({"topic": "orders.events.dlq", "reason": reason})
    one = page(port, f"/dlq?{query}")
    assert f"<h2>Messages ({len(chosen)}): orders.events.dlq, {html.escape(reason)}" in one
    assert one.count('<tr><td><a href="/dlq/') == len(chosen)
    path = f"/dlq/{urllib.parse.quote('orders.events.dlq')}/{poison.partition}/{poison.offset}"
    assert f'href="{path}"' in listed
    shown = page(port, path)
    for name, value in poison.headers:
        assert f"<td>{html.escape(name)}</td><td>{html.escape(value.decode())}</td>" in shown


def test_the_console_is_read_only_and_answers_only_to_loopback_names(console: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{console}/sagas", b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    foreign = urllib.request.Request(
        f"http://127.0.0.1:{console}/topology", headers={"Host": "evil.example:80"}
    )
    with pytest.raises(urllib.error.HTTPError) as rebound:
        urllib.request.urlopen(foreign, timeout=10)
    assert rebound.value.code == 400
    status, body = http_get(console, "/sagas?status=nonsense")
    assert status == 400 and b"unknown status &#39;nonsense&#39;" in body
    status, body = http_get(console, "/sagas/order/never-started", timeout=60)
    assert status == 404 and b"no order saga with key &#39;never-started&#39;" in body
    status, body = http_get(console, "/sagas/nosuch/key")
    assert status == 400 and b"unknown saga &#39;nosuch&#39;; topology.yaml has order, loan" in body
    with urllib.request.urlopen(f"http://127.0.0.1:{console}/topology", timeout=30) as answer:
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "unsafe" not in policy
        assert answer.headers["X-Frame-Options"] == "DENY"


def test_a_console_before_the_topics_exist_says_so_and_lists_no_dead_letters(
    ns: Any, tmp_path: Path
) -> None:
    """Under a prefix with no topic: the pages that need the changelog name it and the command
    that makes it (503); the dead-letter page lists none at once rather than waiting the whole
    read's timeout (120 s) for topics that do not exist. The answers must come within the
    HTTP client's 30 s: a hang guard, not a speed bound."""
    settings = ns.settings.model_copy(update={"topic_prefix": f"{ns.settings.topic_prefix}none-"})
    with running_console(settings_env(settings), tmp_path / "console.log") as port:
        status, body = http_get(port, "/sagas", timeout=30)
        assert status == 503 and b"`sagastream topics create` makes the topics" in body
        assert settings.changelog_topic().encode() in body
        status, body = http_get(port, "/dlq", timeout=30)
        assert status == 200 and b"<h2>Messages (0)</h2>" in body
