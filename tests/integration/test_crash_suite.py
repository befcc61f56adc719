"""The crash suite: orders flow while workers are SIGKILLed and the broker restarts.

Everything is checked from the topics (read_committed) and the services' own ledgers:
exactly one outcome per saga and the one it was built for, no command twice on a commands
topic, every commanded idempotency key applied once in its service's ledger, and no worker
that died of anything but a kill. CI runs it small; any size on demand:

    pytest tests/integration/test_crash_suite.py --crash-orders 5000 --crash-kills 20
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.ops.demo import order_fields
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import OUTCOMES

COMMAND_TOPICS = ("payments.commands", "inventory.commands", "shipping.commands")
LEDGER_ROLES = {
    "payments.commands": "payment",
    "inventory.commands": "inventory",
    "shipping.commands": "shipping",
}
# each fault gets this long before the next, so that its effect (rebalance, restore) shows
SECONDS_PER_FAULT = 7.0


@dataclass
class Chaos:
    """What was done to the system, in order, with when."""

    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f}s {what}")


def plan_faults(kills: int, broker: bool, rng: random.Random) -> list[str]:
    """Two thirds orchestrator kills, a third handler kills, plus broker restarts (1 per 10 kills)."""
    orchestrator = max(1, round(kills * 2 / 3)) if kills else 0
    faults = ["orchestrator"] * orchestrator + ["handlers"] * (kills - orchestrator)
    if broker:
        faults += ["broker"] * max(1, kills // 10)
    rng.shuffle(faults)
    return faults


def restart_local_broker() -> None:
    from streams.local import kafka as localkafka

    localkafka.stop(log=lambda m: None)
    localkafka.start(log=lambda m: None)


def test_every_saga_ends_once_through_kills_and_a_broker_restart(
    ns: Any, start_workers: Any, broker: Any, request: pytest.FixtureRequest
) -> None:
    orders = int(request.config.getoption("--crash-orders"))
    kills = int(request.config.getoption("--crash-kills"))
    can_restart_broker = broker.backend.startswith("local")
    rng = random.Random(7)
    faults = plan_faults(kills, can_restart_broker, rng)
    workers = start_workers("orchestrator", HANDLERS)

    expected: dict[str, str] = {}
    to_send: list[tuple[str, dict[str, Any]]] = []
    for i in range(orders):
        order_id = f"crash-{i:05d}"
        fields, outcome = order_fields(order_id, rng)
        expected[order_id] = outcome
        to_send.append((order_id, fields))
    keys = list(expected)

    window = max(10.0, SECONDS_PER_FAULT * len(faults))
    published = threading.Event()

    def publish() -> None:
        start = time.monotonic()
        for i, (key, fields) in enumerate(to_send):
            time.sleep(max(0.0, start + window * i / len(to_send) - time.monotonic()))
            ns.client.publish("OrderPlaced", key, fields)
        ns.client.flush(120)
        published.set()

    chaos = Chaos()
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    for n, fault in enumerate(faults):
        time.sleep(max(0.0, chaos.started + window * (n + 0.5) / len(faults) - time.monotonic()))
        if fault == "orchestrator":
            workers.kill("orchestrator")
            chaos.note("SIGKILL orchestrator")
            time.sleep(rng.uniform(0.2, 2.0))
            workers.start(["orchestrator"])
        elif fault == "handlers":
            workers.kill(HANDLERS)
            chaos.note("SIGKILL handlers")
            time.sleep(rng.uniform(0.2, 2.0))
            workers.start([HANDLERS])
        else:
            chaos.note("broker stopping")
            restart_local_broker()
            chaos.note("broker restarted")
    assert published.wait(window + 180), "publishing did not finish"
    chaos.note("all orders published")

    outcomes_topic = ns.topic("sagas.outcomes")
    deadline = time.monotonic() + 240
    while True:
        workers.check_alive()
        outcomes = [m for m in ns.client.read_to_end([outcomes_topic]) if m.event_type in OUTCOMES]
        ended = {m.key.decode() for m in outcomes if m.key}
        if ended >= set(keys) or time.monotonic() > deadline:
            break
        time.sleep(2)
    chaos.note(f"{len(ended)} of {len(keys)} sagas ended")
    print("\n".join(chaos.log))

    # exactly one outcome per saga, and the one it was built for
    per_saga = Counter(m.key.decode() for m in outcomes if m.key)
    assert sorted(set(keys) - set(per_saga)) == [], "sagas without an outcome"
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

    # every commanded side effect was applied exactly once in its service's ledger
    for topic, role in LEDGER_ROLES.items():
        path = ns.settings.data_dir / "external" / f"{ns.settings.topic_prefix}{role}.sqlite"
        with sqlite3.connect(path) as db:
            applied = {k for (k,) in db.execute("SELECT key FROM effects")}
        assert applied == commanded[topic], f"{role}: ledger and commands differ"

    # nothing dead-lettered: every input was good
    dlqs = [ns.topic(ns.topology.dlq(t)) for t in ("orders.events", *COMMAND_TOPICS)]
    assert [m.topic for m in ns.client.read_to_end(dlqs)] == []
    workers.check_alive()
