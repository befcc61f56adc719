"""Reading what the workers wrote: outputs by type, dead letters, and saga state from the changelog."""

from __future__ import annotations

import html
import random
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sagastream.core.state import SagaState, decode_state
from sagastream.examples.events import LoanApplied
from sagastream.local.proc import free_ports
from sagastream.ops.client import Received
from sagastream.ops.demo import order_fields

OUTCOMES = ("SagaCompleted", "SagaCompensated", "SagaFailed")

# a caller of the signals API (sagastream.ops.signals.ApiAuth), as the tests send it
API_TOKEN = "bob-token-0123456789abcdef"
API_HEADERS = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}


def good_order(order_id: str) -> dict[str, Any]:
    """The fields of an order built to complete."""
    fields, _ = order_fields(order_id, random.Random(order_id))
    fields.update(card_token="tok_visa", shipping_address="1 Main Street")
    fields["items"] = [i for i in fields["items"] if not i["sku"].startswith("OOS-")]
    return fields


def loan_applied(loan_id: str) -> LoanApplied:
    """A loan application that passes credit and documents, then waits for its human review."""
    return LoanApplied(
        loan_id=loan_id,
        customer_id="cust-1",
        email="applicant@example.com",
        amount_cents=2_500_000,
        term_months=36,
        iban="DE89370400440532013000",
    )


def place_order(ns: Any, order_id: str, mixed: bool = False, **overrides: Any) -> dict[str, Any]:
    """Publish an OrderPlaced: a good order, or with `mixed` the demo's seeded mix of failures."""
    fields = order_fields(order_id, random.Random(order_id))[0] if mixed else good_order(order_id)
    fields.update(overrides)
    ns.client.publish("OrderPlaced", order_id, fields)
    ns.client.flush()
    return fields


def wait_outcomes(
    ns: Any, keys: set[str], timeout: float = 60.0, topic: str = "sagas.outcomes"
) -> dict[str, Received]:
    """The outcome event of each saga key, waiting until all have ended."""
    found: dict[str, Received] = {}

    def done(msgs: list[Received]) -> bool:
        for m in msgs:
            if m.event_type in OUTCOMES and m.key and m.key.decode() in keys:
                found.setdefault(m.key.decode(), m)
        return set(found) == keys

    ns.client.read([ns.topic(topic)], done, timeout)
    assert set(found) == keys, (
        f"sagas without an outcome after {timeout}s: {sorted(keys - set(found))}"
    )
    return found


def events_for(
    ns: Any, topics: list[str], key: str, until: Any = None, timeout: float = 20.0
) -> list[Received]:
    """Every decodable event of one saga key on the given logical topics, in offset order per topic."""
    physical = [ns.topic(t) for t in topics]
    msgs = ns.client.read(physical, until or (lambda m: False), timeout)
    return [m for m in msgs if m.key == key.encode() and m.event_type]


def saga_state(ns: Any, key: str, timeout: float = 10.0) -> SagaState:
    """The last state the orchestrator wrote for a saga, read back from its changelog topic."""
    changelog = f"{ns.settings.group('orchestrator')}-sagas-changelog"
    msgs = ns.client.read([changelog], lambda m: False, timeout)
    values = [m.value for m in msgs if m.key == key.encode() and m.value]
    assert values, f"no state for {key} in {changelog}"
    return decode_state(values[-1])


def lifecycle(
    ns: Any, key: str, until: str, timeout: float = 30.0, step: str | None = None
) -> list[tuple[str, str | None]]:
    """A saga's audit trail as (what, step) pairs, read until an entry `until` (of `step`, if
    given) appears."""

    def changes(msgs: list[Received]) -> list[tuple[str, str | None]]:
        return [
            (c["what"], c["step"])
            for m in msgs
            if m.key == key.encode() and m.record
            for c in m.record["changes"]
        ]

    def seen(trail: list[tuple[str, str | None]]) -> bool:
        return any(w == until and step in (None, s) for w, s in trail)

    msgs = ns.client.read([ns.topic("sagas.lifecycle")], lambda ms: seen(changes(ms)), timeout)
    trail = changes(msgs)
    assert seen(trail), f"no {until} {step or ''} in the trail of {key}: {trail}"
    return trail


def every_dead_letter(ns: Any) -> list[Received]:
    """Every committed record of every dead-letter topic of the test's prefix (those of its
    topology, and of any other version of it that a test deployed)."""
    from sagastream.ops.admin import admin_client

    prefix = ns.settings.topic_prefix
    topics = admin_client(ns.settings).list_topics(timeout=30).topics
    dlqs = {ns.topic(ns.topology.dlq(t.name)) for t in ns.topology.topics}
    dlqs |= {t for t in topics if t.startswith(prefix) and t.endswith(".dlq")}
    return ns.client.read_to_end(sorted(dlqs))


def planted_dead_letter(ns: Any, key: str, redrives: int | None = None) -> None:
    """A dead letter as the runtime writes it, whose value is a valid (the "fixed") OrderPlaced."""
    from sagastream.wire.codec import new_meta
    from sagastream.wire.dlq import REDRIVE_COUNT, Origin, dead_letter_headers

    record = good_order(key)
    record["meta"] = new_meta("OrderPlaced", key, "test")
    origin = Origin(ns.topic("orders.events"), 0, 0)
    headers = dead_letter_headers(
        origin, "unknown_schema_id", "schema id 999999 is unknown", "sagastream-orchestrator"
    )
    if redrives is not None:
        headers.append((REDRIVE_COUNT, str(redrives).encode()))
    value = ns.client.codec.encode("OrderPlaced", record)
    ns.client.publish_raw(ns.topic("orders.events.dlq"), key.encode(), value, headers)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts (a
    registry, a proxy, a worker's metrics), below the ephemeral range (sagastream.local.proc)."""
    return free_ports("127.0.0.1")


def free_broker_port() -> int:
    """A port for a broker of a test's own whose controller port (+1) is free too, below the
    ephemeral range: a broker whose controller port a client connection took dies at start
    ("Unable to start acceptor for CONTROLLER")."""
    return free_ports("127.0.0.1", (0, 1))


def wait_in_log(path: Path, text: str, count: int = 1, timeout: float = 60.0) -> None:
    """Wait until a process's log holds `text` `count` times (a step it logs as done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.5)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise AssertionError(f"{text!r} not {count} times in {path} after {timeout}s:\n{tail}")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a worker's endpoint: (status, body), 503s included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of a worker's /metrics (0 if it has none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http_get(port, "/metrics")[1].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def store_saga(ns: Any, saga: str, key: str, start: Any) -> None:
    """Write the state the orchestrator stores when `start` (a start event model) begins a saga
    to the changelog, as if one had: for tests of clients that need a saga to exist, no more."""
    from confluent_kafka import Producer

    from sagastream.core.saga import Event, decide
    from sagastream.core.state import encode_state

    now = time.time_ns() // 1_000_000
    event = Event(type(start).__name__, uuid.uuid4().hex, start.fields())
    decision = decide((saga, ns.topology.sagas[saga]), None, event, now)
    assert decision.state is not None, decision.dead_letter
    producer = Producer(ns.settings.producer_config())
    producer.produce(ns.settings.changelog_topic(), encode_state(decision.state), key.encode())
    assert producer.flush(30) == 0


# a row of the console's sagas page: its status, type, link and key
CONSOLE_ROW = re.compile(
    r'<tr class="status-(\w+)">\s*<td>(\w+)</td>\s*<td class="key"><a href="([^"]+)">([^<]*)</a>'
)
# what a console page says of its index's freshness
CONSOLE_FRESH = re.compile(r'<p class="fresh[^"]*">([^<]*)</p>')
CONSOLE_BOUND_S = 60.0  # a hang guard for the console's index to show what was written


def console_rows(text: str) -> list[tuple[str, str, str]]:
    """(saga, key, status) of each row of a console sagas page, in its order."""
    return [
        (saga, html.unescape(key), status) for status, saga, _, key in CONSOLE_ROW.findall(text)
    ]


def console_page(port: int, path: str, ready: Callable[[str], bool]) -> str:
    """A console page once its index has read the whole changelog and `ready(page)` holds,
    within CONSOLE_BOUND_S (the index follows the topics a moment behind)."""
    deadline = time.monotonic() + CONSOLE_BOUND_S
    while True:
        status, body = http_get(port, path, timeout=30)
        text = body.decode()
        fresh = CONSOLE_FRESH.search(text)
        loaded = fresh is not None and fresh.group(1).startswith("Index as of")
        if status == 200 and loaded and ready(text):
            return text
        assert time.monotonic() < deadline, (
            f"GET {path} ({status}) never showed what was expected as loaded; rows "
            f"{console_rows(text)}, {fresh.group(1) if fresh else 'no freshness'}\n{text[-1500:]}"
        )
        time.sleep(0.3)
