"""A faust app starts an order saga through sagastream.wire.faust and sees its outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
import pytest

from sagastream.wire.faust import saga_topics, start_saga
from tests.integration.conftest import HANDLERS, Namespace

pytestmark = pytest.mark.integration

ORDER = {
    "customer_id": "cust-1",
    "email": "buyer@example.com",
    "amount_cents": 1299,
    "currency": "EUR",
    "card_token": "tok_visa",
    "items": [{"sku": "SKU-1", "quantity": 2}],
    "shipping_address": "1 Main Street",
    "priority": "normal",
    "has_app": False,
}


async def place_and_await_outcome(
    ns: Namespace, datadir: Path, order_id: str, timeout: float
) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(the start event sent, the outcome's key, the outcome) as a faust agent consumed them."""
    app = faust.App(
        f"{ns.settings.topic_prefix}faust",  # prefixed: the namespace's clean-up deletes its topics
        broker=f"kafka://{ns.settings.bootstrap_servers}",
        web_enabled=False,
        datadir=str(datadir),
    )
    order = saga_topics(app, "order", settings=ns.settings, topology=ns.topology)
    consumed: asyncio.Queue[tuple[bytes, dict[str, Any]]] = asyncio.Queue()

    @app.agent(order.outcomes)
    async def outcomes(stream: Any) -> None:
        async for key, event in stream.items():
            await consumed.put((key, event))

    await app.start()
    try:
        sent = await start_saga(order, {"order_id": order_id, **ORDER}, producer="faust-shop")
        async with asyncio.timeout(timeout):
            while True:
                key, event = await consumed.get()
                if key == order_id.encode():
                    return sent, key, event
    finally:
        await app.stop()


def test_a_faust_agent_starts_a_saga_and_consumes_its_outcome(
    ns: Namespace, start_workers: Any, tmp_path: Path
) -> None:
    start_workers("orchestrator", HANDLERS)
    sent, key, outcome = asyncio.run(
        place_and_await_outcome(ns, tmp_path / "faust", "order-faust-1", timeout=90)
    )
    assert outcome["meta"]["event_type"] == "SagaCompleted"
    assert outcome["saga_type"] == "order"
    assert sorted(outcome["completed_steps"]) == ["inventory", "payment", "shipping"]
    assert outcome["meta"]["saga_key"] == "order-faust-1"
    assert outcome["meta"]["correlation_id"] == sent["meta"]["correlation_id"]
    # what faust wrote is what sagastream's own client reads
    (placed,) = [
        m
        for m in ns.client.read([ns.topic("orders.events")], lambda m: bool(m), 10)
        if m.key == key
    ]
    assert placed.event_type == "OrderPlaced"
    assert placed.record == sent
