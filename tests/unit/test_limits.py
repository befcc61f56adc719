"""Record size limits: measuring, refusing what does not fit, cutting dead letters to fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagastream.runtime.checkpoint import Checkpoint
from sagastream.runtime.inputs import Rejected, dead_letter
from sagastream.runtime.limits import (
    ORIGINAL_KEY_SIZE,
    ORIGINAL_SIZE,
    RECORD_OVERHEAD,
    TRUNCATED,
    RecordLimits,
    RecordTooLarge,
    check_fits,
    clamp,
    fit_dead_letter,
    record_size,
)
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import Orchestrator
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore
from sagastream.wire.codec import new_meta
from sagastream.wire.dlq import read_dead_letter_headers
from tests.unit.test_checkpoint import FakeProducer
from tests.unit.test_event_time import CODEC, ORDER, STORE, Record
from tests.unit.test_handler_loop import TOPOLOGY, FakeMessage

HEADERS = [("event_type", b"OrderPlaced"), ("dlq.reason", b"corrupt")]


def test_a_record_counts_its_key_value_headers_and_framing():
    bare = record_size(None, None, None)
    assert bare == RECORD_OVERHEAD
    assert record_size(b"k" * 3, b"v" * 100, None) == bare + 103
    with_headers = record_size(b"kkk", b"v" * 100, HEADERS)
    assert with_headers > bare + 103 + len("event_typeOrderPlaceddlq.reasoncorrupt")


def test_the_first_record_over_its_topics_limit_is_named_with_its_size_and_the_limit():
    limits = RecordLimits(2_000, {"small": 500})
    fits = ("the saga state", "big", b"k", b"x" * 1_000, None)
    check_fits(limits, [fits])
    too_big = ("ChargePayment", "small", b"k", b"x" * 1_000, None)
    with pytest.raises(RecordTooLarge) as raised:
        check_fits(limits, [fits, too_big])
    size = record_size(b"k", b"x" * 1_000, None)
    assert (raised.value.what, raised.value.size, raised.value.limit) == (
        "ChargePayment",
        size,
        500,
    )
    assert raised.value.reason == "record_too_large"
    assert f"ChargePayment for small would be {size} bytes" in str(raised.value)
    assert "over the limit of 500" in str(raised.value)


def test_a_dead_letter_that_fits_is_left_as_it_is():
    assert fit_dead_letter(b"k", b"v" * 10, HEADERS, 10_000) == (b"k", b"v" * 10, HEADERS)


def test_a_dead_letter_too_large_has_its_value_cut_to_fit_and_says_so():
    value = bytes(range(256)) * 400  # 102,400 bytes
    key, cut, headers = fit_dead_letter(b"order-1", value, HEADERS, 50_000)
    assert record_size(key, cut, headers) == 50_000  # as much as fits, no more
    assert key == b"order-1" and value.startswith(cut) and len(cut) < len(value)
    extra = dict(headers[len(HEADERS) :])
    assert extra == {ORIGINAL_SIZE: b"102400", TRUNCATED: b"value"}
    assert headers[: len(HEADERS)] == HEADERS


def test_a_key_too_large_on_its_own_is_dropped_with_the_value():
    key, cut, headers = fit_dead_letter(b"k" * 20_000, b"v" * 100, HEADERS, 10_000)
    assert (key, cut) == (None, None)
    assert record_size(key, cut, headers) <= 10_000
    extra = dict(headers[len(HEADERS) :])
    assert extra == {ORIGINAL_SIZE: b"100", ORIGINAL_KEY_SIZE: b"20000", TRUNCATED: b"key,value"}


def test_an_error_message_quoting_a_whole_record_keeps_the_dead_letter_small():
    msg = FakeMessage("orders.events", 0, 3, b"k", b"v" * 100)
    quoting = Rejected("processing_error", "ValueError: " + "x" * 2_000_000)
    rec = dead_letter(msg, TOPOLOGY, Settings(), quoting, "w")  # type: ignore[arg-type]
    assert (rec.key, rec.value) == (b"k", b"v" * 100)
    error = read_dead_letter_headers(rec.headers)["error"]
    assert error.startswith("ValueError: xxx") and error.endswith("(1998012 more characters)")
    assert record_size(rec.key, rec.value, rec.headers) < 3_000


def test_a_topic_that_accepts_less_lowers_its_limit_with_a_warning():
    limits, warnings = clamp(990_000, {"a": 1_048_588, "b": 500_000})
    assert (limits.of("a"), limits.of("b"), limits.of("unknown")) == (990_000, 500_000, 990_000)
    [warning] = warnings
    assert "topic b" in warning and "500000" in warning and "max_record_bytes=990000" in warning


def test_a_broker_that_accepts_less_lowers_the_limit_of_topics_without_a_larger_one():
    limits, warnings = clamp(2_000_000, {"default": 1_048_588, "big": 5_000_000}, 1_048_588)
    assert (limits.of("default"), limits.of("big"), limits.of("new")) == (
        1_048_588,
        2_000_000,
        1_048_588,
    )
    assert "the broker accepts records of at most 1048588 bytes" in warnings[0]
    assert "topic default accepts records of at most 1048588" in warnings[1]
    assert len(warnings) == 2


def test_producers_allow_every_record_the_setting_allows():
    assert Settings().producer_config()["message.max.bytes"] == 1_000_000
    assert Settings(max_record_bytes=5_000_000).producer_config()["message.max.bytes"] == 5_000_000


def test_the_dead_letter_of_an_almost_1_mb_input_is_cut_to_the_dlq_topics_limit():
    settings = Settings(topic_prefix="p-")
    value = b"\x00" + b"\xff" * 999_000
    msg = FakeMessage("p-orders.events", 2, 41, b"order-9", value)
    rejected = Rejected("bad_magic", "not a schema registry frame")
    limits = RecordLimits(settings.max_record_bytes, {"p-orders.events.dlq": 600_000})
    rec = dead_letter(msg, TOPOLOGY, settings, rejected, "w", limits=limits)  # type: ignore[arg-type]
    assert rec.topic == "p-orders.events.dlq" and rec.key == b"order-9"
    assert record_size(rec.key, rec.value, rec.headers) == 600_000
    assert rec.value is not None and value.startswith(rec.value)
    dlq = read_dead_letter_headers(rec.headers)
    assert dlq["original.size"] == "999001" and dlq["truncated"] == "value"
    assert (dlq["original.topic"], dlq["original.partition"], dlq["original.offset"]) == (
        "p-orders.events",
        "2",
        "41",
    )
    assert dlq["reason"] == "bad_magic"
    # without limits read from the broker, the setting applies
    default = dead_letter(msg, TOPOLOGY, settings, rejected, "w")  # type: ignore[arg-type]
    assert record_size(default.key, default.value, default.headers) == 990_000


# ------------------------------------------------------------------ the orchestrator


def test_an_input_whose_saga_state_would_not_fit_is_dead_lettered_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The email is kept in the state (the notification uses it) and in no first command."""
    settings = Settings(data_dir=tmp_path, schema_registry_url=None, max_record_bytes=20_000)
    metrics = Metrics.create("orchestrator")
    orchestrator = Orchestrator(settings, TOPOLOGY, STORE, CODEC, metrics)
    producer = FakeProducer()
    orchestrator._ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    orchestrator.stores = {0: MemoryStore()}
    big = {**ORDER, "order_id": "o-big", "email": "e" * 30_000 + "@example.com"}
    for offset, fields in enumerate([big, {**ORDER, "order_id": "o-ok"}]):
        meta = new_meta("OrderPlaced", fields["order_id"], "test")
        value = CODEC.encode("OrderPlaced", {**fields, "meta": meta})
        key = fields["order_id"].encode()
        orchestrator._handle(Record("orders.events", 0, offset, 1, key, value))  # type: ignore[arg-type]

    sent = [(topic, key) for topic, key, _, _ in producer.pending]
    assert ("orders.events.dlq", b"o-big") in sent
    assert [t for t, k in sent if k == b"o-big"] == ["orders.events.dlq"]
    assert ("payments.commands", b"o-ok") in sent
    assert list(orchestrator._ckpt.pending_states(0)) == [b"o-ok"]
    assert list(orchestrator._ckpt.trail) == [b"o-ok"]
    labels = {"role": "orchestrator", "topic": "orders.events", "reason": "record_too_large"}
    assert metrics.registry.get_sample_value("sagastream_dead_letters_total", labels) == 1
    assert f"the saga state for {settings.changelog_topic()} would be" in caplog.text
    assert "over the limit of 20000" in caplog.text
