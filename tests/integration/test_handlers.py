"""Handlers honour idempotency keys through Kafka: a repeated command has no second effect."""

from __future__ import annotations

import pytest

from sagastream.examples.ledger import IdempotencyLedger
from sagastream.wire.codec import new_meta

pytestmark = pytest.mark.integration


def test_repeated_charge_with_same_key_charges_once(ns, workers, tmp_path):
    command = {
        "idempotency_key": "order:dup-1:payment",
        "order_id": "dup-1",
        "customer_id": "c-1",
        "amount_cents": 1999,
        "currency": "EUR",
        "card_token": "tok_visa",
    }
    for attempt in (1, 2):
        record = dict(command, meta=new_meta("ChargePayment", "dup-1", "test", attempt=attempt))
        ns.client.publish_raw(
            ns.topic("payments.commands"), b"dup-1", ns.client.codec.encode("ChargePayment", record)
        )
    ns.client.flush()
    msgs = ns.client.read([ns.topic("payments.events")], lambda m: len(m) >= 2, 30)
    charged = [m.record for m in msgs if m.event_type == "PaymentCharged"]
    assert len(charged) == 2
    assert charged[0]["payment_id"] == charged[1]["payment_id"]
    assert [c["meta"]["attempt"] for c in charged] == [1, 2]
    ledger = IdempotencyLedger(
        ns.settings.data_dir / "external" / f"{ns.settings.topic_prefix}payment.sqlite"
    )
    assert ledger.effects("order:dup-1:") == {"order:dup-1:payment": 2}
