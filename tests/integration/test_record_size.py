"""Records over the size limit: the input is dead-lettered alone, everything else goes on.

Each test reads every dead-letter topic of its topology and expects exactly the dead letters it caused.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from sagastream.ops.admin import admin_client
from sagastream.ops.client import Received
from sagastream.runtime.limits import record_size
from sagastream.runtime.worker import record_limits
from sagastream.wire.codec import new_meta
from sagastream.wire.dlq import read_dead_letter_headers
from tests.integration.helpers import every_dead_letter, good_order, place_order, wait_outcomes

pytestmark = pytest.mark.integration

ORDER_HANDLERS = "inventory,shipping,notification"
DEFAULT_LIMIT = 990_000


def dead_letters_once(ns: Any, topic: str) -> list[Received]:
    """Every dead letter of the test, once the DLQ of `topic` holds one."""
    ns.client.read([ns.topic(ns.topology.dlq(topic))], lambda letters: bool(letters), timeout=60)
    return every_dead_letter(ns)


def assert_cut_copy(ns: Any, letter: Received, limit: int) -> dict[str, str]:
    """The dead letter of an input too large to copy whole: cut to fit, with the original's
    size and coordinates in headers."""
    headers = read_dead_letter_headers(letter.headers)
    assert headers["original.topic"] == ns.topic("orders.events")
    where = (int(headers["original.partition"]), int(headers["original.offset"]))
    [original] = [
        m
        for m in ns.client.read_to_end([ns.topic("orders.events")])
        if (m.partition, m.offset) == where
    ]
    assert original.key == letter.key
    assert record_size(letter.key, letter.value, letter.headers) <= limit
    assert original.value is not None and letter.value is not None
    assert original.value.startswith(letter.value) and len(letter.value) < len(original.value)
    assert headers["truncated"] == "value"
    assert headers["original.size"] == str(len(original.value))
    return headers


def set_max_message_bytes(ns: Any, topic: str, value: int) -> None:
    admin = admin_client(ns.settings)
    entry = ConfigEntry(
        "max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def publish_large(ns: Any, topic: str, key: bytes, value: bytes) -> None:
    """Produce a record of up to 2 MB, once the topic's new max.message.bytes is in force."""
    producer = Producer({**ns.settings.producer_config(), "message.max.bytes": 2_000_000})
    errors: list[Any] = []
    deadline = time.monotonic() + 30
    while True:
        errors.clear()
        producer.produce(topic, key=key, value=value, on_delivery=lambda e, _m: errors.append(e))
        producer.flush(30)
        if errors == [None]:
            return
        # the broker applies a topic's changed configuration a moment after it was accepted
        assert time.monotonic() < deadline, f"{topic} refused {len(value)} bytes: {errors}"
        time.sleep(0.5)


def ended(ns: Any) -> set[str]:
    """The saga keys with an outcome on sagas.outcomes now."""
    outcomes = ns.client.read_to_end([ns.topic("sagas.outcomes")])
    return {m.key.decode() for m in outcomes if m.key}


def test_an_oversized_start_event_is_dead_lettered_alone(
    ns: Any, start_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An 85 KB start event under a 60,000-byte limit: its shipping command and its state would
    not fit. (On main the limit did not exist; the same event with the producer's 1 MB limit
    is the next test.)"""
    monkeypatch.setenv("SAGASTREAM_MAX_RECORD_BYTES", "60000")
    workers = start_workers("orchestrator", f"payment,{ORDER_HANDLERS}")
    # first: on main, a poison record stopped every partition's orders placed after it
    place_order(ns, "order-85kb", shipping_address="A" * 85_000)
    normal = [f"order-small-{n}" for n in range(8)]
    for key in normal:
        place_order(ns, key)

    outcomes = wait_outcomes(ns, set(normal))
    assert {k: m.event_type for k, m in outcomes.items()} == dict.fromkeys(normal, "SagaCompleted")
    workers.check_alive()
    [letter] = dead_letters_once(ns, "orders.events")
    assert (letter.topic, letter.key) == (ns.topic("orders.events.dlq"), b"order-85kb")
    headers = read_dead_letter_headers(letter.headers)
    assert headers["reason"] == "record_too_large", headers
    assert "over the limit of 60000" in headers["error"]
    # the start event itself is over the limit as well: its copy is cut
    assert_cut_copy(ns, letter, 60_000)
    assert "order-85kb" not in ended(ns)


def test_a_start_event_of_1_1_mb_is_dead_lettered_alone_at_the_default_limit(
    ns: Any, start_workers: Any
) -> None:
    """The input topic takes 2 MB records; everything the orchestrator writes has the default
    limit. On main the transaction aborted on every re-read of it, so no other order ended."""
    topic = ns.topic("orders.events")
    set_max_message_bytes(ns, topic, 2_000_000)
    workers = start_workers("orchestrator", f"payment,{ORDER_HANDLERS}")
    big = {**good_order("order-1mb"), "shipping_address": "B" * 1_100_000}
    big["meta"] = new_meta("OrderPlaced", "order-1mb", "test")
    publish_large(ns, topic, b"order-1mb", ns.client.codec.encode("OrderPlaced", big))
    normal = [f"order-{n}" for n in range(8)]  # order-0 shares its partition
    for key in normal:
        place_order(ns, key)

    outcomes = wait_outcomes(ns, set(normal))
    assert {k: m.event_type for k, m in outcomes.items()} == dict.fromkeys(normal, "SagaCompleted")
    workers.check_alive()
    [letter] = dead_letters_once(ns, "orders.events")
    assert (letter.topic, letter.key) == (ns.topic("orders.events.dlq"), b"order-1mb")
    headers = read_dead_letter_headers(letter.headers)
    assert headers["reason"] == "record_too_large", headers
    assert f"over the limit of {DEFAULT_LIMIT}" in headers["error"]
    assert_cut_copy(ns, letter, DEFAULT_LIMIT)
    assert "order-1mb" not in ended(ns)


def test_an_undecodable_input_of_almost_1_mb_is_dead_lettered_cut_and_its_partition_goes_on(
    ns: Any, workers: Any
) -> None:
    """On main its dead letter was over the producer's 1 MB: the session was rebuilt forever."""
    # as large as the producer takes: its dead letter, with the dlq.* headers, is not
    junk = b"\x07" + b"\xee" * 999_799
    topic = ns.topic("orders.events")
    # the same key as the order after it: the same partition, read after it
    ns.client.publish_raw(topic, b"order-after-junk", junk)
    place_order(ns, "order-after-junk")

    outcome = wait_outcomes(ns, {"order-after-junk"})["order-after-junk"]
    assert outcome.event_type == "SagaCompleted"
    workers.check_alive()
    [letter] = dead_letters_once(ns, "orders.events")
    assert (letter.topic, letter.key) == (ns.topic("orders.events.dlq"), b"order-after-junk")
    headers = assert_cut_copy(ns, letter, DEFAULT_LIMIT)
    assert headers["reason"] == "bad_magic"


def test_a_handler_result_of_1_1_mb_fails_its_attempt_and_the_worker_goes_on(
    ns: Any, start_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On main the result's produce raised in the handler: the worker exited, on every restart.
    Then its command was dead-lettered and the saga waited for its step timeout; now each
    attempt is reported failed (too_large) at once and retried, and the saga compensates."""
    start_workers("orchestrator", ORDER_HANDLERS)
    monkeypatch.setenv("SAGASTREAM_APP", "tests.integration.big_results")
    payment = start_workers("payment")
    place_order(ns, "huge-1")
    normal = [f"order-{n}" for n in range(6)]  # order-1, -4 and -5 share its partition
    for key in normal:
        place_order(ns, key)

    outcomes = wait_outcomes(ns, {*normal, "huge-1"})
    assert {k: m.event_type for k, m in outcomes.items()} == {
        **dict.fromkeys(normal, "SagaCompleted"),
        "huge-1": "SagaCompensated",
    }
    assert outcomes["huge-1"].record["failed_step"] == "payment"
    # and the worker goes on
    place_order(ns, "order-after-huge")
    assert wait_outcomes(ns, {"order-after-huge"})["order-after-huge"].event_type == (
        "SagaCompleted"
    )
    payment.check_alive()
    reports = [
        m
        for m in ns.client.read_to_end([ns.topic("payments.events")])
        if m.event_type == "StepAttemptFailed"
    ]
    assert reports, "no StepAttemptFailed for huge-1"
    for report in reports:  # attempt 1, and each retry the step sent
        assert report.key == b"huge-1"
        assert (report.record["kind"], report.record["step"]) == ("too_large", "payment")
        assert f"PaymentCharged for {ns.topic('payments.events')}" in report.record["message"]
        assert f"over the limit of {DEFAULT_LIMIT}" in report.record["message"]
    assert every_dead_letter(ns) == []


def test_a_topic_that_accepts_less_than_the_setting_lowers_its_limit_at_start(
    ns: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """What a worker reads from the broker before it starts its roles."""
    shipping = ns.topic("shipping.commands")
    set_max_message_bytes(ns, shipping, 50_000)
    deadline = time.monotonic() + 30
    while (limits := record_limits(ns.settings, ns.topology)).of(shipping) != 50_000:
        assert time.monotonic() < deadline, "the broker never answered the new limit"
        time.sleep(0.5)
    # the broker's default (1,048,588) is above the setting: the setting holds
    assert limits.of(ns.topic("payments.commands")) == DEFAULT_LIMIT
    assert limits.of(ns.settings.changelog_topic()) == DEFAULT_LIMIT
    assert f"topic {shipping} accepts records of at most 50000 bytes" in caplog.text
