"""What the fault tests share: orders sent at a pace, and the exactly-once checks on the topics.

Everything is checked from the topics (read_committed) and the services' own ledgers, never
from the workers' memory.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

from sagastream.ops.demo import WorkerSet, order_fields
from sagastream.wire.codec import new_meta
from tests.integration.helpers import OUTCOMES, every_dead_letter

COMMAND_TOPICS = ("payments.commands", "inventory.commands", "shipping.commands")
LEDGER_ROLES = {
    "payments.commands": "payment",
    "inventory.commands": "inventory",
    "shipping.commands": "shipping",
}


def mixed_orders(n: int, name: str, rng: random.Random) -> list[tuple[str, dict[str, Any], str]]:
    """(order id, fields, the outcome it is built for) of n orders of the demo's mix."""
    out = []
    for i in range(n):
        order_id = f"{name}-{i:05d}"
        fields, outcome = order_fields(order_id, rng)
        out.append((order_id, fields, outcome))
    return out


def publish_paced(
    ns: Any, orders: list[tuple[str, dict[str, Any], str]], window: float, topic: str | None = None
) -> threading.Event:
    """Publish the orders evenly over `window` seconds in the background (to `topic`, else
    OrderPlaced's own); set when flushed."""
    done = threading.Event()

    def send(key: str, fields: dict[str, Any]) -> None:
        if topic is None:
            ns.client.publish("OrderPlaced", key, fields)
            return
        record = {**fields, "meta": new_meta("OrderPlaced", key, "test")}
        value = ns.client.codec.encode("OrderPlaced", record)
        ns.client.publish_raw(topic, key.encode(), value, [("event_type", b"OrderPlaced")])

    def publish() -> None:
        start = time.monotonic()
        for i, (key, fields, _) in enumerate(orders):
            time.sleep(max(0.0, start + window * i / len(orders) - time.monotonic()))
            send(key, fields)
        ns.client.flush(120)
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    return done


def wait_all_ended(ns: Any, keys: set[str], workers: WorkerSet, timeout: float) -> list[Any]:
    """The outcome events once every saga has one (or the timeout passed); workers must live."""
    topic = ns.topic("sagas.outcomes")
    deadline = time.monotonic() + timeout
    while True:
        workers.check_alive()
        outcomes = [m for m in ns.client.read_to_end([topic]) if m.event_type in OUTCOMES]
        if {m.key.decode() for m in outcomes if m.key} >= keys or time.monotonic() > deadline:
            return outcomes
        time.sleep(2)


def check_exactly_once(ns: Any, expected: dict[str, str], outcomes: list[Any]) -> None:
    """One outcome per saga and the one it was built for; no command twice; every commanded
    side effect applied once in its service's ledger; nothing dead-lettered."""
    per_saga = Counter(m.key.decode() for m in outcomes if m.key)
    assert sorted(set(expected) - set(per_saga)) == [], "sagas without an outcome"
    assert {k: n for k, n in per_saga.items() if n != 1} == {}, "sagas with several outcomes"
    wrong = {
        m.key.decode(): m.event_type
        for m in outcomes
        if m.key and m.event_type != expected[m.key.decode()]
    }
    assert wrong == {}, "sagas that ended otherwise than built for"

    # no command twice on a commands topic (same idempotency key and attempt)
    commanded: dict[str, set[str]] = {}
    for topic in COMMAND_TOPICS:
        msgs = [m for m in ns.client.read_to_end([ns.topic(topic)]) if m.record]
        seen = Counter((m.record["idempotency_key"], m.record["meta"]["attempt"]) for m in msgs)
        assert {k: n for k, n in seen.items() if n > 1} == {}, f"duplicate commands on {topic}"
        commanded[topic] = {m.record["idempotency_key"] for m in msgs}

    for topic, role in LEDGER_ROLES.items():
        path = ns.settings.data_dir / "external" / f"{ns.settings.topic_prefix}{role}.sqlite"
        with sqlite3.connect(path) as db:
            applied = {k for (k,) in db.execute("SELECT key FROM effects")}
        assert applied == commanded[topic], f"{role}: ledger and commands differ"

    assert [m.topic for m in every_dead_letter(ns)] == [], "dead letters"
