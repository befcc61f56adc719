"""The Kafka plumbing every part of sagastream shares: queueing a record while librdkafka's local
queue is full, publishing with the broker's answer per record (confirmed delivery), and reading
partitions to their end.

Producers here never report a record as sent before the broker acknowledged it: librdkafka's
`flush()` returns 0 once a refused record has been purged, so only the delivery report tells.
Readers are built from `Settings.consumer_config` (read_committed, no offset commits), so they
carry the same connection settings as the workers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from sagastream.errors import ClusterError, NotAuthorized, SagastreamError
from sagastream.runtime.settings import Settings

# how long a producer whose local queue is full waits for delivery reports before trying again
FULL_QUEUE_WAIT_S = 0.05
# messages a reader takes from librdkafka per call
READ_BATCH = 1000

Partition = tuple[str, int]
Header = tuple[str, str | bytes | None]
DeliveryReport = Callable[[KafkaError | None, Message], None]


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Sequence[Header] | None = None,
    partition: int | None = None,
    on_delivery: DeliveryReport | None = None,
) -> None:
    """Queue one record; while the local queue is full, serve delivery reports to empty it."""
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if headers:
        kwargs["headers"] = list(headers)
    if partition is not None:
        kwargs["partition"] = partition
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(FULL_QUEUE_WAIT_S)


# ------------------------------------------------------------------------- refusals

# librdkafka's codes of a refusal: what `refused` explains
AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


def principal_of(settings: Settings) -> str:
    """The principal these settings connect as, as far as the client can tell."""
    if settings.sasl_username:
        return f"User:{settings.sasl_username}"
    if settings.ssl_certfile:
        return _certificate_principal(settings.ssl_certfile)
    return "User:ANONYMOUS"


def _certificate_principal(path: Path) -> str:
    """User:<subject> as Kafka's default SSL principal builder names it (RFC 2253)."""
    try:
        from cryptography import x509

        subject = x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()
    except Exception:  # not installed, or not a PEM certificate: say where to look
        return f"the principal of the certificate {path}"
    return f"User:{subject}"


def refused(settings: Settings, operation: str, resource: str, role: str) -> str:
    """The message for a refusal: who lacks what on which resource, and where to look."""
    return (
        f"{principal_of(settings)} is not allowed {operation} on {resource} "
        f"(at {settings.bootstrap_servers}); `sagastream acls --role {role}` prints the ACLs "
        f"the {role} role needs"
    )


def read_refused(
    settings: Settings, err: KafkaError, topic: str | None, group: str, role: str
) -> NotAuthorized | None:
    """A consumer's error as the NotAuthorized naming what this principal may not read (a topic,
    or its group); None for any other error. Waiting does not mend a missing ACL: a reader
    that only warned would stall for good."""
    if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        what = f"topic {topic}" if topic else f"a topic it reads ({err.str()})"
        return NotAuthorized(refused(settings, "READ", what, role))
    if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return NotAuthorized(refused(settings, "READ", f"group {group}", role))
    return None


# ------------------------------------------------------------------------- confirmed delivery


@dataclass(frozen=True)
class Delivery:
    """The broker's answer for one record: where it was written, or why it was not."""

    topic: str
    key: bytes | None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        key = "no key" if self.key is None else f"key {self.key.decode(errors='replace')!r}"
        if self.error is None:
            return f"{self.topic}[{self.partition}]@{self.offset} ({key})"
        return f"{self.topic} ({key}): {self.error}"


class DeliveryFailed(SagastreamError, RuntimeError):
    """Records the broker refused or did not acknowledge in time; each is named with its error."""

    def __init__(self, failed: Sequence[Delivery], delivered: Sequence[Delivery] = ()) -> None:
        self.failed = list(failed)
        self.delivered = list(delivered)
        shown = "; ".join(str(d) for d in self.failed[:5])
        more = f" (and {len(self.failed) - 5} more)" if len(self.failed) > 5 else ""
        super().__init__(
            f"{len(self.failed)} of {len(self.failed) + len(self.delivered)} records were not "
            f"written: {shown}{more}; check the broker is reachable, the topic exists, its "
            "max.message.bytes, and that this principal may write to it"
        )


class Pending:
    """One queued record, answered by its delivery report."""

    __slots__ = ("_answer", "key", "topic")

    def __init__(self, topic: str, key: bytes | None) -> None:
        self.topic, self.key = topic, key
        self._answer: Delivery | None = None

    @property
    def done(self) -> bool:
        return self._answer is not None

    def report(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery report for this record."""
        if err is None:
            self.settle(Delivery(self.topic, self.key, msg.partition(), msg.offset()))
        else:
            self.settle(Delivery(self.topic, self.key, error=f"{err.name()}: {err.str()}"))

    def settle(self, answer: Delivery) -> None:
        self._answer = answer

    def answer(self, timeout: float) -> Delivery:
        """The broker's answer; not acknowledged yet is a failure (it may still be written)."""
        if self._answer is not None:
            return self._answer
        return Delivery(
            self.topic,
            self.key,
            error=f"not acknowledged within {timeout:g}s (the broker may still write it)",
        )


class Publisher:
    """A producer whose every record gets the broker's answer.

    `send` queues a record and returns its `Pending`; `confirm` waits for the answers of the
    given records (or of every record not confirmed yet) and raises `DeliveryFailed` naming
    each one refused. Safe to share between threads: each caller confirms its own records.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._producer = Producer(dict(config))
        self._lock = threading.Lock()
        self._unconfirmed: dict[Pending, None] = {}

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] | None = None,
    ) -> Pending:
        """Queue one record; its answer comes with `confirm`."""
        pending = Pending(topic, key)
        with self._lock:
            self._unconfirmed[pending] = None
        try:
            produce(self._producer, topic, value, key, headers, on_delivery=pending.report)
        except KafkaException as exc:  # refused before it left: too large, unknown partition
            err: KafkaError = exc.args[0]
            pending.settle(Delivery(topic, key, error=f"{err.name()}: {err.str()}"))
        self._producer.poll(0)
        return pending

    def confirm(
        self, records: Iterable[Pending] | None = None, timeout: float = 30.0
    ) -> list[Delivery]:
        """The answers of `records` (default: every record not confirmed yet), in send order;
        DeliveryFailed if any record was not written."""
        answers = self.answers(records, timeout)
        failed = [a for a in answers if not a.ok]
        if failed:
            raise DeliveryFailed(failed, [a for a in answers if a.ok])
        return answers

    def answers(
        self, records: Iterable[Pending] | None = None, timeout: float = 30.0
    ) -> list[Delivery]:
        """`confirm` without raising: each record's answer, written or not."""
        with self._lock:
            if records is None:
                chosen = list(self._unconfirmed)
                self._unconfirmed.clear()
            else:
                chosen = list(records)
                for pending in chosen:
                    self._unconfirmed.pop(pending, None)
        deadline = time.monotonic() + timeout
        for pending in chosen:
            while not pending.done and (left := deadline - time.monotonic()) > 0:
                try:
                    self._producer.poll(min(0.1, left))
                except KafkaException as exc:  # fatal: say so for each record, as its answer
                    self._fail_all(chosen, exc.args[0])
        return [p.answer(timeout) for p in chosen]

    @staticmethod
    def _fail_all(records: Iterable[Pending], err: KafkaError) -> None:
        """A fatal producer error (an idempotent producer refused its id, when this principal
        may write no topic at all) is the answer of every record still waiting."""
        for pending in records:
            if not pending.done:
                pending.settle(
                    Delivery(pending.topic, pending.key, error=f"{err.name()}: {err.str()}")
                )

    def close(self, timeout: float = 10.0) -> None:
        """Confirm what is still queued, then let go of the broker connections."""
        try:
            self.confirm(timeout=timeout)
        finally:
            # what is still unanswered was reported above; closing would wait for it until
            # message.timeout.ms (5 minutes by default)
            self._producer.purge()
            self._producer.poll(0)
            self._producer.close()


# ------------------------------------------------------------------------- reading to the end


def reader(settings: Settings, purpose: str, **extra: Any) -> Consumer:
    """A consumer of committed records for assigned partitions, told at once of their end.

    Its group (`<prefix><app_id>-ops-<purpose>-<random>`) is never joined or committed to: it
    only names the client, under one prefix an operator's ACL can grant (`sagastream acls`).
    """
    group = f"{settings.group('ops')}-{purpose}-{uuid.uuid4().hex[:8]}"
    return Consumer(settings.consumer_config(group, **{"enable.partition.eof": True, **extra}))


def partitions(consumer: Consumer, topic: str) -> list[int]:
    """The topic's partition numbers; an error naming it if it does not exist."""
    found = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ClusterError(
            f"cannot read {topic}: it does not exist (check SAGASTREAM_TOPIC_PREFIX and "
            "SAGASTREAM_APP_ID; `sagastream topics create` makes the topics)"
        )
    return sorted(found.partitions)


WATERMARK_WAIT_S = 30.0  # how long a passing refusal (a leader being elected) is asked again
# refusals that pass (librdkafka does not mark them retriable in what it raises here)
PASSING_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def watermarks(
    consumer: Consumer, topic: str, partition: int, wait_s: float = WATERMARK_WAIT_S
) -> tuple[int, int]:
    """The partition's first offset and its high watermark, asked of the broker now. A
    retriable refusal (no leader yet for a topic just made, a leader moving) is asked again for
    up to `wait_s`; any other (a topic that does not exist) is an error at once."""
    give_up, pause = time.monotonic() + wait_s, 0.2
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() not in PASSING_ERRORS or time.monotonic() + pause > give_up:
                raise ClusterError(
                    f"cannot read {topic}[{partition}]: {error.str()} (check "
                    "SAGASTREAM_TOPIC_PREFIX and the broker; `sagastream topics create` makes "
                    "the topics)"
                ) from exc
        time.sleep(pause)
        pause = min(2.0, pause * 2)


def whole(consumer: Consumer, topics: Iterable[str]) -> dict[Partition, tuple[int, int]]:
    """Every non-empty partition of the topics, from its first offset to its end now."""
    ranges = {}
    for topic in topics:
        for p in partitions(consumer, topic):
            low, high = watermarks(consumer, topic, p)
            if high > low:
                ranges[(topic, p)] = (low, high)
    return ranges


def read_ranges(
    consumer: Consumer,
    ranges: Mapping[Partition, tuple[int, int]],
    deadline: float | None = None,
) -> Iterator[Message]:
    """Committed records of each partition from its start offset up to its stop offset or its
    end, whichever comes first; TimeoutError past the monotonic `deadline`.

    `consumer` must report partition ends (`reader` makes one). Assigning replaces its previous
    read, so one consumer serves read after read.
    """
    stops = {tp: stop for tp, (start, stop) in ranges.items() if start < stop}
    consumer.assign([TopicPartition(t, p, ranges[(t, p)][0]) for t, p in stops])
    while stops:
        if deadline is not None and time.monotonic() > deadline:
            unread = ", ".join(f"{t}[{p}]" for t, p in sorted(stops))
            raise TimeoutError(f"reading to the end ran out of time; unread: {unread}")
        for msg in consumer.consume(READ_BATCH, 0.5):
            tp = (msg.topic() or "", msg.partition() or 0)
            if tp not in stops:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    del stops[tp]
                elif err.fatal():
                    raise KafkaException(err)
                continue
            if (msg.offset() or 0) >= stops[tp]:
                del stops[tp]
                continue
            yield msg


def read_to_end(
    settings: Settings, topics: Iterable[str], purpose: str, timeout: float | None = None
) -> Iterator[Message]:
    """Every committed record of the topics, from the beginning to their end as of now."""
    consumer = reader(settings, purpose)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        yield from read_ranges(consumer, whole(consumer, topics), deadline)
    finally:
        consumer.close()
