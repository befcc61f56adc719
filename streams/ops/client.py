"""A plain confluent-kafka client for publishing start events and reading outputs (demo, tests)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from sagastream.core.topology import Topology
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, DecodeError, new_meta


@dataclass(frozen=True)
class Received:
    """One consumed message: decoded when it could be, raw bytes and headers always."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    event_type: str | None
    record: dict[str, Any] | None


class EventClient:
    """Publishes events to their topology topic and reads topics from the beginning."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        codec: AvroCodec,
        producer_name: str = "client",
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.codec = codec
        self.producer_name = producer_name
        self._producer = Producer(settings.producer_config())

    def publish(
        self, event_type: str, key: str, fields: dict[str, Any], **meta: Any
    ) -> dict[str, Any]:
        """Encode and queue one event keyed by `key`; returns its EventMeta."""
        record = dict(fields)
        record["meta"] = new_meta(event_type, key, self.producer_name, **meta)
        topic = self.settings.topic(self.topology.event_topic(event_type))
        self.publish_raw(
            topic,
            key.encode(),
            self.codec.encode(event_type, record),
            [("event_type", event_type.encode())],
        )
        return record["meta"]

    def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers or [])
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        if self._producer.flush(timeout):
            raise KafkaException(f"{len(self._producer)} messages not delivered within {timeout}s")

    def read(
        self, topics: list[str], until: Callable[[list[Received]], bool], timeout: float = 60.0
    ) -> list[Received]:
        """Read physical topics from the beginning until `until(messages)` holds or time runs out."""
        out: list[Received] = []
        for message in self.stream(topics, timeout):
            out.append(message)
            if until(out):
                break
        return out

    def read_to_end(self, topics: list[str], timeout: float = 120.0) -> list[Received]:
        """Every committed message of the physical topics, from the beginning to their end now."""
        return list(self.stream(topics, timeout, to_end=True))

    def stream(self, topics: list[str], timeout: float, to_end: bool = False) -> Iterator[Received]:
        """Yield every message of the physical topics from the beginning, for up to `timeout` s
        (or, `to_end`, until every partition has been read to its end)."""
        consumer = Consumer(
            {
                **self.settings.librdkafka(),
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": to_end,
            }
        )
        try:
            deadline = time.monotonic() + timeout
            # a topic created a moment ago may not show its partitions yet: wait a little for them
            give_up = time.monotonic() + min(10.0, timeout)
            while True:
                metadata = consumer.list_topics(timeout=10)
                known = {t: metadata.topics[t].partitions for t in topics if t in metadata.topics}
                if all(known.get(t) for t in topics) or time.monotonic() > give_up:
                    break
                time.sleep(0.2)
            consumer.assign(
                [
                    TopicPartition(t, p, OFFSET_BEGINNING)
                    for t, parts in known.items()
                    for p in parts
                ]
            )
            unread = {(t, p) for t, parts in known.items() for p in parts}
            while time.monotonic() < deadline and (unread or not to_end):
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if (err := msg.error()) is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        unread.discard((msg.topic(), msg.partition()))
                    continue
                event_type, record = None, None
                with contextlib.suppress(DecodeError):  # raw bytes are still yielded
                    event_type, record = self.codec.decode(msg.value() or b"")
                yield Received(
                    msg.topic() or "",
                    msg.partition() or 0,
                    msg.offset() or 0,
                    msg.key(),
                    msg.value(),
                    [
                        (str(k), v if isinstance(v, bytes) else (v or "").encode())
                        for k, v in list(msg.headers() or [])
                    ],
                    event_type,
                    record,
                )
        finally:
            consumer.close()

    def close(self) -> None:
        """Deliver what is queued and let go of the broker connections."""
        self._producer.flush(10)
        self._producer.close()
