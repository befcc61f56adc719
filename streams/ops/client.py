"""Clients of a running sagastream: `Client` (and `AsyncClient`) starts, signals and describes
sagas; `EventClient` under it publishes events and reads topics (also for the demo and tests)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from sagastream.core.state import SagaState, decode_head, decode_state
from sagastream.core.topology import (
    LIFECYCLE_EVENT,
    OUTCOME_EVENTS,
    SagaSpec,
    Topology,
    load_topology,
)
from sagastream.errors import UsageError
from sagastream.events import Event, model_named
from sagastream.ops.inspect import (
    Change,
    SagaFilter,
    SagaList,
    SagaSummary,
    SagaView,
    build_view,
    oldest_first,
    summarize,
)
from sagastream.runtime.kafka_io import (
    Delivery,
    Partition,
    Pending,
    Publisher,
    read_ranges,
    reader,
    watermarks,
    whole,
)
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import (
    AvroCodec,
    DecodeError,
    RegistryRefused,
    RegistryUnavailable,
    new_meta,
)
from sagastream.wire.partitioner import partition_for
from sagastream.wire.registry import build_codec

PRODUCER_NAME = "sagastream-client"
# how long a read waits for a schema registry that does not answer (a slow start, a hiccup)
# before it gives up with RegistryUnavailable, as the workers wait rather than fail
REGISTRY_WAIT_S = 20.0
DESCRIBE_TIMEOUT_S = 30.0
# describe reads the changelog backwards in windows growing by WINDOW_GROWTH from this size
FIRST_WINDOW = 256
WINDOW_GROWTH = 4
# lifecycle records read at most per describe; past it the history is marked incomplete
HISTORY_SCAN_LIMIT = 200_000
# the longest `list_sagas` reads the state changelog
LIST_TIMEOUT_S = 600.0
# record times come from the orchestrators' clocks; this much skew is tolerated
CLOCK_MARGIN_MS = 2_000
# how long `result` waits in one poll before it looks at its deadline and stop flag again
OUTCOME_POLL_S = 0.2


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
    """Publishes events to their topology topic and reads topics from the beginning.

    Every record published gets the broker's answer: `deliver` waits for one event's, `flush`
    for those of everything queued since the last flush; both raise `DeliveryFailed` naming
    each record the broker refused.
    """

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
        # built on the first write: a read-only command (saga show, dlq list, a read-only
        # principal's) opens no idempotent producer, which would need IDEMPOTENT_WRITE rights
        self._writer: Publisher | None = None

    @property
    def _publisher(self) -> Publisher:
        if self._writer is None:
            self._writer = Publisher(self.settings.producer_config())
        return self._writer

    def publish(
        self, event_type: str, key: str, fields: dict[str, Any], **meta: Any
    ) -> dict[str, Any]:
        """Encode and queue one event keyed by `key`; returns its EventMeta (`flush` confirms)."""
        return self._queue(event_type, key, fields, **meta)[0]

    def deliver(
        self, event_type: str, key: str, fields: dict[str, Any], timeout: float = 30.0, **meta: Any
    ) -> dict[str, Any]:
        """Publish one event and wait for the broker's answer; returns its EventMeta once written."""
        record_meta, pending = self._queue(event_type, key, fields, **meta)
        self._publisher.confirm([pending], timeout)
        return record_meta

    def _queue(
        self, event_type: str, key: str, fields: dict[str, Any], **meta: Any
    ) -> tuple[dict[str, Any], Pending]:
        record = dict(fields)
        record["meta"] = new_meta(event_type, key, self.producer_name, **meta)
        topic = self.settings.topic(self.topology.event_topic(event_type))
        pending = self.publish_raw(
            topic,
            key.encode(),
            self.codec.encode(event_type, record),
            [("event_type", event_type.encode())],
        )
        return record["meta"], pending

    def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> Pending:
        """Queue one record as given; its answer comes with `answers` or `flush`."""
        return self._publisher.send(topic, key, value, headers)

    def answers(self, records: list[Pending], timeout: float = 30.0) -> list[Delivery]:
        """The broker's answer for each of `records`, in order, written or not."""
        return self._publisher.answers(records, timeout)

    def flush(self, timeout: float = 30.0) -> list[Delivery]:
        """Wait for the answers of everything queued and not confirmed yet; DeliveryFailed if the
        broker refused any (or did not answer within `timeout`)."""
        return [] if self._writer is None else self._writer.confirm(timeout=timeout)

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

    def read_since(
        self, topics: list[str], since_ms: int, timeout: float = 120.0
    ) -> list[Received]:
        """The committed messages of the physical topics written at `since_ms` or later (by
        their timestamps, less the clock margin), up to their end now."""
        return list(self.stream(topics, timeout, to_end=True, since_ms=since_ms))

    def stream(
        self, topics: list[str], timeout: float, to_end: bool = False, since_ms: int | None = None
    ) -> Iterator[Received]:
        """Yield every message of the physical topics from the beginning (`to_end` only: from
        `since_ms`), for up to `timeout` s (or, `to_end`, until every partition has been read
        to its end as of now)."""
        consumer = reader(self.settings, "reader")
        try:
            deadline = time.monotonic() + timeout
            known = _known_partitions(consumer, topics, min(10.0, timeout), timeout)
            if to_end:
                ranges = {}
                for tp in known:
                    low, high = watermarks(consumer, *tp)
                    if since_ms is not None:
                        low = _offset_at(consumer, *tp, since_ms, high)
                    ranges[tp] = (low, high)
                messages: Iterable[Message] = read_ranges(consumer, ranges, deadline)
            else:
                consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in known])
                messages = _until(consumer, deadline)
            for msg in messages:
                yield self._received(msg)
        finally:
            consumer.close()

    def _received(self, msg: Message) -> Received:
        event_type, record = self.decoded(msg.value() or b"")
        return Received(
            msg.topic() or "",
            msg.partition() or 0,
            msg.offset() or 0,
            msg.key(),
            msg.value(),
            headers_of(msg),
            event_type,
            record,
        )

    def decoded(self, value: bytes) -> tuple[str | None, dict[str, Any] | None]:
        """A record's event type and fields; (None, None) for bytes that are no event (still
        yielded raw). A registry that does not answer is asked again for REGISTRY_WAIT_S."""
        deadline, pause = time.monotonic() + REGISTRY_WAIT_S, 0.5
        while True:
            try:
                return self.codec.decode(value)
            except DecodeError:
                return None, None
            except RegistryRefused:
                raise  # wrong credentials: waiting will not help
            except RegistryUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def close(self) -> None:
        """Confirm what is queued and let go of the broker connections; DeliveryFailed if the
        broker refused any of it."""
        if self._writer is not None:
            self._writer.close()


def headers_of(msg: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers, each value as bytes (a header without one: empty)."""
    return [
        (str(k), v if isinstance(v, bytes) else (v or "").encode())
        for k, v in list(msg.headers() or [])
    ]


def _known_partitions(
    consumer: Consumer, topics: list[str], wait_s: float, none_wait_s: float = 0.0
) -> list[Partition]:
    """The partitions of the topics that exist; a topic created a moment ago may not show its
    partitions at once, so this waits up to `wait_s` for every one to. While not one topic has
    any (a broker just back, its metadata not yet served; it may not even answer), it waits up
    to `none_wait_s`: a read that then knew no partition read nothing for its whole timeout."""
    started = time.monotonic()
    while True:
        try:
            metadata = consumer.list_topics(timeout=min(10.0, max(1.0, wait_s)))
            known = {t: metadata.topics[t].partitions for t in topics if t in metadata.topics}
            error = None
        except KafkaException as exc:
            known, error = {}, exc
        waited = time.monotonic() - started
        if all(known.get(t) for t in topics) or waited > max(
            wait_s, 0.0 if any(known.values()) else none_wait_s
        ):
            if error is not None:
                raise error
            return [(t, p) for t, parts in known.items() for p in parts]
        time.sleep(0.2)


def _until(consumer: Consumer, deadline: float) -> Iterator[Message]:
    """The assigned partitions' records as they come, until the monotonic `deadline`."""
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            yield msg


class Client:
    """Start, signal and describe sagas of a running sagastream; flushes and closes on exit.

    `describe` reads only the saga key's partition (murmur2, as producers partition keys), so it
    answers whichever orchestrator process owns the key. Its cost: the compacted state changelog
    read backwards from its end until the key's last record (cheap for recently changed sagas,
    at most that partition's live states), then the lifecycle partition from the saga's start to
    its last change, at most HISTORY_SCAN_LIMIT records; all within DESCRIBE_TIMEOUT_S.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.topology = load_topology(self.settings.topology_file, self.settings.schemas_path)
        self.events = EventClient(
            self.settings, self.topology, build_codec(self.settings), PRODUCER_NAME
        )

    def start(self, event: Event, wait: bool = True) -> str:
        """Publish a saga's typed start event; returns the saga key.

        `wait`: until the broker wrote it (DeliveryFailed if it refused); otherwise the answer
        comes with `close` (or `events.flush()`).
        """
        event_type = type(event).__name__
        spec = next((s for s in self.topology.sagas.values() if s.start_event == event_type), None)
        if spec is None:
            starts = ", ".join(f"{n} ({s.start_event})" for n, s in self.topology.sagas.items())
            raise UsageError(
                f"{event_type} starts no saga; the sagas and their start events: {starts}"
            )
        fields = event.fields()
        key = fields.get(spec.key_field)
        if key in (None, ""):
            raise UsageError(f"{event_type}.{spec.key_field} (the saga key) is empty")
        if wait:
            self.events.deliver(event_type, str(key), fields)
        else:
            self.events.publish(event_type, str(key), fields)
        return str(key)

    def signal(
        self, saga: str, key: str, step: str, outcome: str, note: str = "", decided_by: str = ""
    ) -> str:
        """Deliver a human decision (approved or rejected) to a waiting step; returns its event id."""
        # signals builds on EventClient, so it imports this module
        from sagastream.ops.signals import send_signal

        meta = send_signal(
            self.events, saga, key, step, outcome, note or None, decided_by or PRODUCER_NAME
        )
        return str(meta["event_id"])

    def describe(self, saga: str, key: str) -> SagaView | None:
        """A saga's status, steps, pending timers and history; None if no such saga is stored."""
        spec = self._spec(saga)
        raw_key = key.encode()
        deadline = time.monotonic() + DESCRIBE_TIMEOUT_S
        consumer = _describer(self.settings)
        try:
            partition = self._partition(spec.start_event, raw_key)
            last = stored(consumer, self.settings, partition, raw_key, saga, deadline)
            if last is None:
                return None
            message, state = last
            history: list[Change] = []
            complete = True
            if spec.audit != "off" and LIFECYCLE_EVENT in self.topology.events:
                history, complete = self._history(
                    consumer, raw_key, state.started, message.timestamp()[1], deadline
                )
        finally:
            consumer.close()
        return build_view(saga, key, partition, state, history, complete)

    def result(
        self, saga: str, key: str, timeout: float | None = None, stop: threading.Event | None = None
    ) -> Event:
        """Wait for the saga's outcome (SagaCompleted, SagaCompensated or SagaFailed) and return it.

        It reads only the key's partition of the saga's outcome topic, committed records only:
        from the saga's start if it is stored (so an outcome written before the call is found),
        else from the end as of the call (the saga has not started yet: its outcome is to come).
        `TimeoutError` after `timeout` seconds (None: no limit; `stop` set: gives up the same way).
        """
        spec = self._spec(saga)
        raw_key = key.encode()
        topic = self.settings.topic(spec.outcome_topic)
        partition = partition_for(raw_key, self.topology.partitions(spec.outcome_topic))
        consumer = _describer(self.settings)
        try:
            # taken before the state is read: an outcome written after that is at or past it
            _, first = watermarks(consumer, topic, partition)
            last = stored(
                consumer,
                self.settings,
                self._partition(spec.start_event, raw_key),
                raw_key,
                saga,
                time.monotonic() + DESCRIBE_TIMEOUT_S,
            )
            if last is not None:
                first = _offset_at(consumer, topic, partition, last[1].started, first)
            record = _outcome_of(
                consumer,
                (topic, partition, first),
                raw_key,
                self.events.codec.decode,
                timeout,
                stop,
            )
        finally:
            consumer.close()
        if record is None:
            raise TimeoutError(
                f"saga {saga} {key!r} reached no outcome within {timeout}s (read {topic}, "
                f"partition {partition}); `sagastream saga show {saga} {key}` says where it is"
            )
        event_type, fields = record
        model = model_named(event_type)
        assert issubclass(model, Event)
        return model.model_validate(fields)

    def _spec(self, saga: str) -> SagaSpec:
        spec = self.topology.sagas.get(saga)
        if spec is None:
            raise UsageError(
                f"unknown saga {saga!r}; topology.yaml has {', '.join(self.topology.sagas)}"
            )
        return spec

    def _partition(self, start_event: str, key: bytes) -> int:
        """The key's partition of the saga's topics (the state changelog's too)."""
        return partition_for(key, self.topology.partitions(self.topology.event_topic(start_event)))

    def _history(
        self, consumer: Consumer, key: bytes, started_ms: int, changed_ms: int, deadline: float
    ) -> tuple[list[Change], bool]:
        """The key's lifecycle changes, from the saga's start to its last state change.

        Each lifecycle record commits in the transaction of a state change, so none comes after
        the changelog record read last (give or take the clock margin).
        """
        topic = self.settings.topic(self.topology.event_topic(LIFECYCLE_EVENT))
        partition = partition_for(
            key, self.topology.partitions(self.topology.event_topic(LIFECYCLE_EVENT))
        )
        _, high = watermarks(consumer, topic, partition)
        first = consumer.offsets_for_times(
            [TopicPartition(topic, partition, started_ms - CLOCK_MARGIN_MS)], timeout=10
        )[0]
        if first.offset < 0:
            return [], True
        changes: list[Change] = []
        for scanned, msg in enumerate(
            read_ranges(consumer, {(topic, partition): (first.offset, high)}, deadline)
        ):
            at = msg.timestamp()[1]
            if at > changed_ms + CLOCK_MARGIN_MS:
                break
            if scanned >= HISTORY_SCAN_LIMIT:
                return changes, False
            if msg.key() != key:
                continue
            _, record = self.events.codec.decode(msg.value() or b"")
            changes += [Change(at, c["what"], c["step"]) for c in record["changes"]]
        return changes, True

    def list_sagas(
        self,
        statuses: Iterable[str] = (),
        saga: str | None = None,
        older_than_ms: int | None = None,
        limit: int | None = None,
    ) -> SagaList:
        """Sagas of every partition with one of `statuses` (any if none), of type `saga`,
        started at least `older_than_ms` ago; oldest first, at most `limit`.

        It reads every partition of the state changelog to its end once: as many records as
        there are live sagas (ended ones leave after their `retention_ms`) plus the updates
        compaction has not cleaned up yet, within LIST_TIMEOUT_S; it keeps only the matches.
        """
        if saga is not None:
            self._spec(saga)
        if limit is not None and limit < 1:
            raise UsageError(f"the limit must be at least 1, not {limit}")
        wanted = SagaFilter(frozenset(statuses), saga, older_than_ms)
        now = time.time_ns() // 1_000_000
        deadline = time.monotonic() + LIST_TIMEOUT_S
        topic = self.settings.changelog_topic()
        consumer = _describer(self.settings)
        found: dict[bytes, SagaSummary] = {}
        scanned = 0
        try:
            for msg in read_ranges(consumer, whole(consumer, [topic]), deadline):
                scanned += 1
                key, value = msg.key(), msg.value()
                if key is None:
                    continue
                name = key.decode(errors="replace")
                summary = (
                    None
                    if value is None
                    else summarize(name, msg.partition() or 0, decode_head(value))
                )
                if summary is not None and wanted.keeps(summary, now):
                    found[key] = summary
                else:  # removed, or changed so that it no longer matches
                    found.pop(key, None)
        finally:
            consumer.close()
        return oldest_first(found.values(), limit, scanned)

    def close(self) -> None:
        self.events.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """`Client` for asyncio: the same calls as coroutines, each run in a worker thread."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.client = Client(settings)

    async def start(self, event: Event, wait: bool = True) -> str:
        return await asyncio.to_thread(self.client.start, event, wait)

    async def signal(
        self, saga: str, key: str, step: str, outcome: str, note: str = "", decided_by: str = ""
    ) -> str:
        return await asyncio.to_thread(
            self.client.signal, saga, key, step, outcome, note, decided_by
        )

    async def describe(self, saga: str, key: str) -> SagaView | None:
        return await asyncio.to_thread(self.client.describe, saga, key)

    async def result(self, saga: str, key: str, timeout: float | None = None) -> Event:
        """`Client.result`; cancelling the wait stops its reader thread too."""
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self.client.result, saga, key, timeout, stop)
        finally:
            stop.set()  # cancelled or done: the thread must not read on

    async def list_sagas(
        self,
        statuses: Iterable[str] = (),
        saga: str | None = None,
        older_than_ms: int | None = None,
        limit: int | None = None,
    ) -> SagaList:
        return await asyncio.to_thread(
            self.client.list_sagas, tuple(statuses), saga, older_than_ms, limit
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _describer(settings: Settings) -> Consumer:
    """A reader for windows of a backwards read: each is a few fetches, so it does not wait for
    more data."""
    return reader(settings, "describe", **{"fetch.wait.max.ms": 10})


def _last_record(
    consumer: Consumer, topic: str, partition: int, key: bytes, deadline: float
) -> Message | None:
    """The key's newest committed record, read backwards from the end in growing windows."""
    low, high = watermarks(consumer, topic, partition)
    window, stop = FIRST_WINDOW, high
    while stop > low:
        start = max(low, stop - window)
        found = None
        for msg in read_ranges(consumer, {(topic, partition): (start, stop)}, deadline):
            if msg.key() == key:
                found = msg
        if found is not None:
            return found
        stop, window = start, window * WINDOW_GROWTH
    return None


def stored(
    consumer: Consumer, settings: Settings, partition: int, key: bytes, saga: str, deadline: float
) -> tuple[Message, SagaState] | None:
    """The saga's newest changelog record and its state; None if no saga of `key` is stored.
    UsageError if the key belongs to a saga of another type."""
    last = _last_record(consumer, settings.changelog_topic(), partition, key, deadline)
    value = None if last is None else last.value()
    if last is None or value is None:
        return None
    state = decode_state(value)
    if state.saga != saga:
        raise UsageError(
            f"{key.decode(errors='replace')} is the key of a {state.saga} saga, "
            f"not of a {saga} saga"
        )
    return last, state


def stored_state(settings: Settings, topology: Topology, saga: str, key: str) -> SagaState | None:
    """The stored state of the saga `saga` with `key`; None if none is stored (never started,
    not started yet, or removed after its retention)."""
    spec = topology.sagas[saga]
    raw_key = key.encode()
    partition = partition_for(raw_key, topology.partitions(topology.event_topic(spec.start_event)))
    consumer = _describer(settings)
    try:
        found = stored(
            consumer, settings, partition, raw_key, saga, time.monotonic() + DESCRIBE_TIMEOUT_S
        )
    finally:
        consumer.close()
    return None if found is None else found[1]


def _offset_at(consumer: Consumer, topic: str, partition: int, at_ms: int, default: int) -> int:
    """The partition's first offset written at `at_ms` or later (less the clock margin)."""
    found = consumer.offsets_for_times(
        [TopicPartition(topic, partition, at_ms - CLOCK_MARGIN_MS)], timeout=10
    )[0]
    return default if found.offset < 0 else found.offset


def _outcome_of(
    consumer: Consumer,
    where: tuple[str, int, int],
    key: bytes,
    decode: Callable[[bytes], tuple[str, dict[str, Any]]],
    timeout: float | None,
    stop: threading.Event | None,
) -> tuple[str, dict[str, Any]] | None:
    """The key's outcome record (its type, its fields without meta) in `where` (topic, partition,
    first offset), waiting for it to come; None once `timeout` s passed or `stop` is set."""
    topic, partition, first = where
    deadline = None if timeout is None else time.monotonic() + timeout
    consumer.assign([TopicPartition(topic, partition, first)])
    while deadline is None or time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return None
        msg = consumer.poll(OUTCOME_POLL_S)
        if msg is None or msg.error() is not None or msg.key() != key:
            continue
        event_type, record = decode(msg.value() or b"")
        if event_type in OUTCOME_EVENTS:
            record.pop("meta", None)
            return event_type, record
    return None
