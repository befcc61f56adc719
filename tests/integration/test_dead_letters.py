"""Bad input goes to the topic's dead-letter topic with the reason; the worker keeps going."""

from __future__ import annotations

import struct

import pytest

from sagastream.wire.dlq import read_dead_letter_headers
from tests.integration.helpers import place_order, wait_outcomes

pytestmark = pytest.mark.integration


def _dead_letters(ns, topic, count, timeout=30.0):
    msgs = ns.client.read([ns.topic(ns.topology.dlq(topic))], lambda m: len(m) >= count, timeout)
    assert len(msgs) >= count, f"expected {count} dead letters on {topic}.dlq, found {len(msgs)}"
    return msgs


def test_undecodable_input_is_dead_lettered_and_processing_continues(ns, workers):
    topic = ns.topic("orders.events")
    bad = [
        (b"bad-garbage", b"\x07not avro at all"),
        (b"bad-unknown-id", struct.pack(">BI", 0, 999_999) + b"\x02"),
        (b"bad-empty", b""),
    ]
    for key, value in bad:
        ns.client.publish_raw(topic, key, value)
    place_order(ns, "order-after-bad")
    assert wait_outcomes(ns, {"order-after-bad"})["order-after-bad"].event_type == "SagaCompleted"

    letters = {m.key: m for m in _dead_letters(ns, "orders.events", len(bad))}
    for key, value in bad:
        letter = letters[key]
        assert letter.value == value or (value == b"" and not letter.value)
        headers = read_dead_letter_headers(letter.headers)
        assert headers["original.topic"] == topic
        assert int(headers["original.partition"]) >= 0 and int(headers["original.offset"]) >= 0
        assert int(headers["original.timestamp"]) > 0 and int(headers["failed.at"]) > 0
        assert headers["worker"] == "sagastream-orchestrator"
        assert headers["error"]
    reasons = {k: read_dead_letter_headers(m.headers)["reason"] for k, m in letters.items()}
    assert reasons == {
        b"bad-garbage": "bad_magic",
        b"bad-unknown-id": "unknown_schema_id",
        b"bad-empty": "empty",
    }


def test_command_a_handler_does_not_handle_is_dead_lettered(ns, workers):
    # a valid event of a type not declared for the commands topic
    record = {"order_id": "x", "reason": "nope"}
    from sagastream.wire.codec import new_meta

    record["meta"] = new_meta("PaymentFailed", "order-wrong-topic", "test")
    ns.client.publish_raw(
        ns.topic("payments.commands"),
        b"order-wrong-topic",
        ns.client.codec.encode("PaymentFailed", record),
    )
    letter = _dead_letters(ns, "payments.commands", 1)[0]
    headers = read_dead_letter_headers(letter.headers)
    assert headers["reason"] == "undeclared_event_type"
    assert "PaymentFailed is not declared for topic payments.commands" in headers["error"]
