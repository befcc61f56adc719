"""The console's consumer lag per role on the real broker: groups with known committed offsets
(records behind; a transaction's marker and an aborted transaction past the committed offset,
which are no lag), a group that never committed, and real workers that caught up show 0."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from sagastream.console.app import build_app
from sagastream.console.lag import RoleLag, read_role_lags
from sagastream.console.readers import ConsoleReader
from sagastream.runtime.kafka_io import partitions, reader, watermarks
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import place_order, wait_outcomes

pytestmark = pytest.mark.integration


def commit(ns: Any, role: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit offsets for a role's group as its workers would (no member stays behind)."""
    group = Consumer(ns.settings.consumer_config(ns.settings.group(role)))
    try:
        chosen = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        group.commit(offsets=chosen, asynchronous=False)
    finally:
        group.close()


def transaction(ns: Any, topic: str, partition: int, count: int, abort: bool = False) -> None:
    producer = Producer(
        {**ns.settings.producer_config(), "transactional.id": f"lag-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for n in range(count):
        producer.produce(topic, b"x", f"k{n}".encode(), partition=partition)
    assert producer.flush(30) == 0  # written (to be aborted or committed), not purged
    if abort:
        producer.abort_transaction(30)
    else:
        producer.commit_transaction(30)


def by_role(lags: list[RoleLag]) -> dict[str, RoleLag]:
    return {lag.role: lag for lag in lags}


def overview(ns: Any) -> str:
    """The overview page, rendered in process by the console's application."""
    reader = ConsoleReader(ns.settings)
    app = build_app(reader, "127.0.0.1")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get("/", timeout=60)

    try:
        answer = asyncio.run(get())
    finally:
        reader.close()
    assert answer.status_code == 200, answer.text[-2000:]
    return answer.text


def test_lag_is_what_each_group_has_left_past_its_committed_offsets(ns: Any) -> None:
    payments, inventory = ns.topic("payments.commands"), ns.topic("inventory.commands")
    plain = Producer(ns.settings.producer_config())
    for n in range(5):
        plain.produce(payments, b"x", f"p{n}".encode(), partition=0)
    assert plain.flush(30) == 0
    transaction(ns, inventory, 0, 3)  # offsets 0-2, its commit marker at 3
    transaction(ns, inventory, 0, 2, abort=True)  # offsets 4-5, the abort marker at 6
    probe = reader(ns.settings, "test-lag")
    try:
        # the coordinator writes the markers after the commit returns: wait for the last one
        deadline = time.monotonic() + 30
        while watermarks(probe, inventory, 0)[1] != 7:
            assert time.monotonic() < deadline, watermarks(probe, inventory, 0)
            time.sleep(0.2)
        assert watermarks(probe, payments, 0)[1] == 5
        every = {r: partitions(probe, ns.topic(f"{r}.commands")) for r in ("payments", "inventory")}
    finally:
        probe.close()
    # payment read 2 of its 5 records; inventory read its 3 committed ones, short of 4 markers
    commit(ns, "payment", {(payments, p): 2 if p == 0 else 0 for p in every["payments"]})
    commit(ns, "inventory", {(inventory, p): 3 if p == 0 else 0 for p in every["inventory"]})

    lags = by_role(read_role_lags(ns.settings, ns.topology))
    assert set(lags) == {"orchestrator", *ns.topology.handlers}
    assert (lags["payment"].lag, lags["payment"].uncommitted, lags["payment"].members) == (3, 0, 0)
    assert lags["inventory"].lag == 0 and lags["inventory"].shown() == "0"
    for role in ("orchestrator", "shipping", "credit"):
        assert lags[role].lag is None, lags[role]
        assert lags[role].shown() == "no members, never committed"

    page = overview(ns)
    shown = dict(re.findall(r'<tr data-role="(\w+)">.*?<td class="lag">([^<]*)</td>', page))
    assert shown["payment"] == "3" and shown["inventory"] == "0"
    assert shown["orchestrator"] == "no members, never committed"


def test_workers_that_finished_their_sagas_have_no_lag(ns: Any, start_workers: Any) -> None:
    """Their commands and results were written in transactions: each caught-up group sits one
    marker short of the end on every partition it read, and shows 0 all the same."""
    start_workers("orchestrator", HANDLERS)
    keys = {f"lag-order-{n}" for n in range(4)}
    for key in keys:
        place_order(ns, key)
    wait_outcomes(ns, keys)
    order_roles = {"orchestrator", *ns.topology.handlers_for("order")}
    deadline = time.monotonic() + 60
    while True:
        lags = by_role(read_role_lags(ns.settings, ns.topology))
        if all(lags[r].lag == 0 and lags[r].members > 0 for r in order_roles):
            break
        assert time.monotonic() < deadline, {r: lags[r].shown() for r in order_roles}
        time.sleep(1)
    # the loan's handlers run nowhere here
    assert lags["credit"].shown() == "no members, never committed"
