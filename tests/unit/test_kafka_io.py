"""kafka_io without a broker: the full-queue retry, a record nobody answered is a failure, and
watermarks asked again while a leader is elected."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from sagastream.errors import ClusterError
from sagastream.runtime import kafka_io
from sagastream.runtime.kafka_io import Delivery, DeliveryFailed, Publisher, produce


class FullQueue:
    """A producer whose local queue is full for its first `full` calls to produce."""

    def __init__(self, full: int) -> None:
        self.full, self.polls = full, 0
        self.produced: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, kwargs))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_produce_serves_delivery_reports_until_the_queue_takes_the_record() -> None:
    producer = FullQueue(full=3)
    produce(producer, "t", b"v", b"k", [("h", b"1")], partition=2)  # type: ignore[arg-type]
    assert producer.polls == 3
    assert producer.produced == [
        ("t", {"key": b"k", "value": b"v", "headers": [("h", b"1")], "partition": 2})
    ]


def test_a_record_the_broker_never_answered_is_reported_not_written() -> None:
    # nothing listens on port 1: the record stays queued, unanswered
    publisher = Publisher({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 60_000})
    pending = publisher.send("orders", b"k1", b"v")
    [answer] = publisher.answers([pending], timeout=0.3)
    assert not answer.ok and "not acknowledged within 0.3s" in (answer.error or "")
    publisher.send("orders", b"k2", b"v")
    with pytest.raises(DeliveryFailed) as failed:
        publisher.close(timeout=0.3)
    # only what was not confirmed yet: k1's answer was already given
    assert [d.key for d in failed.value.failed] == [b"k2"]
    assert "1 of 1 records were not written: orders (key 'k2')" in str(failed.value)


def test_delivery_failed_names_every_refused_record_up_to_five() -> None:
    refused = [Delivery("t", f"k{i}".encode(), error="MSG_SIZE_TOO_LARGE: x") for i in range(7)]
    written = [Delivery("t", b"ok", 0, 41)]
    message = str(DeliveryFailed(refused, written))
    assert message.startswith("7 of 8 records were not written: t (key 'k0'): MSG_SIZE")
    assert "(key 'k4')" in message and "(key 'k5')" not in message and "(and 2 more)" in message


class _ElectingLeader:
    """A consumer whose partition has no leader yet for its first `refusals` asks."""

    def __init__(self, refusals: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.refusals, self.code, self.asked = refusals, code, 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple:
        self.asked += 1
        if self.asked <= self.refusals:
            raise KafkaException(KafkaError(self.code, "Broker: Not leader for partition"))
        return (0, 7)


def test_watermarks_ask_again_while_a_leader_is_elected(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlq redrive` on a DLQ topic made a moment before failed with "Not leader for partition"
    (seen in CI); a passing refusal is asked again, a missing topic is an error at once."""
    monkeypatch.setattr(kafka_io.time, "sleep", lambda s: None)
    electing = _ElectingLeader(2)
    assert kafka_io.watermarks(electing, "t", 0) == (0, 7)  # type: ignore[arg-type]
    assert electing.asked == 3
    missing = _ElectingLeader(1, KafkaError.UNKNOWN_TOPIC_OR_PART)
    with pytest.raises(ClusterError, match=r"cannot read t\[0\]"):
        kafka_io.watermarks(missing, "t", 0)  # type: ignore[arg-type]
    assert missing.asked == 1
    with pytest.raises(ClusterError, match="Not leader"):
        kafka_io.watermarks(_ElectingLeader(1000), "t", 0, wait_s=0)  # type: ignore[arg-type]
