"""Redrive from the console, in process over planted dead letters: the dry run shows what would
go where and what is refused (by `dlq redrive`'s rules), sends nothing, and offers a one-time
plan; only a signed-in POST from the console's page with its session's CSRF token sends, and
exactly the dry run's dead letters, once; a read-only console takes no POST."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from sagastream.console.actions import SESSION_COOKIE, Actions, Csrf
from sagastream.console.app import build_app
from sagastream.core.topology import load_topology
from sagastream.errors import UsageError
from sagastream.ops import dlq
from sagastream.ops.signals import ApiAuth
from sagastream.runtime.kafka_io import Delivery
from sagastream.runtime.settings import Settings
from sagastream.wire.dlq import REDRIVE_COUNT, Origin, dead_letter_headers
from tests.unit.test_console_actions import BASE, TOKEN, basic

PLAN = re.compile(r'name="plan" value="([^"]+)"')
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
SETTINGS = Settings(topic_prefix="p-", schema_registry_url="")


def letter(offset: int, source: str = "p-orders.events", redrives: int = 0) -> dlq.DeadLetter:
    headers = dead_letter_headers(Origin(source, 0, offset), "unknown_schema_id", "x", "w")
    headers.append((REDRIVE_COUNT, str(redrives).encode()))
    key = f"order-{offset}".encode()
    return dlq.DeadLetter("orders.events.dlq", 0, offset, key, b"v", headers, "OrderPlaced")


# 1 and 4 go back; 2 is spent (3 redrives); 3 names a topic its DLQ does not serve
LETTERS = [letter(1), letter(2, redrives=3), letter(3, source="p-sagas.signals"), letter(4)]


class Reader:
    """Stands for ConsoleReader: the planted dead letters, the real topology."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.topology = load_topology(SETTINGS.topology_file, SETTINGS.schemas_path)

    def dead_letters(self) -> list[dlq.DeadLetter]:
        return list(LETTERS)


class Events:
    """Stands for the client's publishing: records what it is given, answers written."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []

    def publish_raw(self, topic: str, key: bytes | None, value: bytes, headers: Any) -> int:
        self.sent.append((topic, key, headers))
        return len(self.sent) - 1

    def answers(self, pending: list[int]) -> list[Delivery]:
        return [Delivery(self.sent[i][0], self.sent[i][1], 0, 100 + i) for i in pending]


def console(events: Events | None) -> httpx.AsyncClient:
    actions = None
    if events is not None:
        actions = Actions(ApiAuth({"alice": TOKEN}), Csrf(), events)  # type: ignore[arg-type]
    app = build_app(Reader(), "127.0.0.1", actions)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def run(events: Events | None, *steps: Any) -> list[httpx.Response]:
    """Requests in order on one client (its cookies kept): each step is (method, path, data,
    headers), or a callable building one from the answers so far."""

    async def go() -> list[httpx.Response]:
        answers: list[httpx.Response] = []
        async with console(events) as http:
            for step in steps:
                method, path, data, headers = step(answers) if callable(step) else step
                answers.append(await http.request(method, path, data=data, headers=headers))
        return answers

    return asyncio.run(go())


def confirm(auth: str | None = basic("alice", TOKEN), origin: str = BASE, which: int = 0) -> Any:
    """The POST of the dry run `which` answers back, as the browser sends it."""

    def build(answers: list[httpx.Response]) -> tuple[str, str, dict[str, str], dict[str, str]]:
        page = answers[which].text
        form = {"csrf": CSRF.findall(page)[0], "plan": PLAN.findall(page)[0]}
        headers = {"Origin": origin} | ({} if auth is None else {"Authorization": auth})
        return "POST", "/dlq/redrive", form, headers

    return build


DRY_RUN = (
    "GET",
    "/dlq/redrive?letter=orders.events.dlq/0/1&letter=orders.events.dlq/0/2"
    "&letter=orders.events.dlq/0/3",
    None,
    {},
)


def test_ticked_rows_and_groups_select_what_dlq_redrive_would() -> None:
    at = dlq.Selection(at=frozenset({("orders.events.dlq", 0, 1), ("orders.events.dlq", 0, 4)}))
    assert [x.offset for x in dlq.select(LETTERS, at)] == [1, 4]
    assert dlq.parse_at("orders.events.dlq/0/12") == ("orders.events.dlq", 0, 12)
    for bad in ("orders.events.dlq/0", "orders.events.dlq/x/1", "/0/1"):
        with pytest.raises(UsageError, match="names no dead letter: give topic/partition/offset"):
            dlq.parse_at(bad)
    reader = Reader()
    plans = dlq.plan_selected(LETTERS, dlq.Selection(), reader.topology, SETTINGS)
    assert [p.refused is None for p in plans] == [True, False, False, True]
    assert "redriven 3 times already" in str(plans[1].refused)
    assert "takes dead letters from p-orders.events only" in str(plans[2].refused)


def test_the_dry_run_shows_each_line_and_sends_nothing() -> None:
    events = Events()
    [page] = run(events, DRY_RUN)
    assert page.status_code == 200 and events.sent == []
    assert "would redrive 1 dead letters, refuse 2; nothing is sent before you confirm" in page.text
    assert 'class="redrive-would"' in page.text and page.text.count('class="redrive-refused"') == 2
    assert "orders.events.dlq[0]@1 reason=unknown_schema_id redrives=0 -&gt; p-orders.events" in (
        page.text
    )
    assert "redriven 3 times already (--max-redrives 3)" in page.text
    assert "takes dead letters from p-orders.events only" in page.text
    assert '<button type="submit">redrive 1 dead letters</button>' in page.text
    assert SESSION_COOKIE in page.headers["set-cookie"]


def test_a_group_is_chosen_by_topic_and_reason_and_nothing_chosen_is_a_bad_request() -> None:
    query = "/dlq/redrive?topic=orders.events&reason=unknown_schema_id"
    group, nothing = run(Events(), ("GET", query, None, {}), ("GET", "/dlq/redrive", None, {}))
    assert "would redrive 2 dead letters, refuse 2" in group.text
    assert nothing.status_code == 400 and "no dead letters chosen" in nothing.text


def test_a_confirmed_dry_run_sends_its_dead_letters_once(caplog: pytest.LogCaptureFixture) -> None:
    events = Events()
    _, done, again = run(events, DRY_RUN, confirm(), confirm())
    # the console's log says who redrove what
    logged = [r.getMessage() for r in caplog.records if r.name == "sagastream.console"]
    assert len(logged) == 3 and all(m.startswith("console redrive by alice: ") for m in logged)
    assert done.status_code == 200, done.text
    assert [(t, k) for t, k, _ in events.sent] == [("p-orders.events", b"order-1")]
    assert (REDRIVE_COUNT, b"1") in events.sent[0][2]
    assert "redriven 1 (written, acknowledged by the broker), NOT written 0, refused 2" in done.text
    assert "-&gt; p-orders.events[0]@100 (key &#39;order-1&#39;) as redrive 1" in done.text
    # a reload or a second click: the plan was used, nothing more is sent
    assert again.status_code == 409 and "confirmed already" in again.text
    assert len(events.sent) == 1


def test_a_confirmation_without_user_token_or_own_origin_sends_nothing() -> None:
    events = Events()
    answers = run(
        events,
        DRY_RUN,
        confirm(auth=None),
        confirm(auth=basic("alice", "wrong-token-0000000")),
        confirm(origin="http://evil.example"),
        lambda a: (
            "POST",
            "/dlq/redrive",
            {"plan": PLAN.findall(a[0].text)[0]},
            {"Origin": BASE, "Authorization": basic("alice", TOKEN)},
        ),
    )
    assert [a.status_code for a in answers[1:]] == [401, 401, 403, 403]
    assert events.sent == []


def test_a_read_only_console_shows_the_dry_run_but_takes_no_post() -> None:
    page, post = run(None, DRY_RUN, ("POST", "/dlq/redrive", {"plan": "x"}, {"Origin": BASE}))
    assert "would redrive 1 dead letters" in page.text and 'name="plan"' not in page.text
    assert "redrive with <code>sagastream dlq redrive --execute</code>" in page.text
    assert post.status_code == 405
