"""The console's live index: what its sagas page and overview show, kept in memory by one
background thread per console process instead of re-reading Kafka per request.

`SagaIndex` (pure, thread-safe) holds the head of the newest state of every saga key (a
tombstone removes the key), the outcomes of the last hour and the dead letters counted by topic
and reason, and says how fresh it is. `IndexFollower` feeds it: one read_committed consumer reads
the state changelog from the beginning and the outcome topics from an hour back, then tails
them with the dead-letter topics; it rebuilds everything when the changelog's partitions or topic
id change (a topic recreated) and takes up topics created after it started (a first dead letter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from sagastream.console.views import (
    MINUTE_MS,
    WINDOW_MINUTES,
    IndexedSaga,
    Outcome,
    SagaPage,
    SagaQuery,
    TypeOverview,
    overview,
    page_of,
)
from sagastream.core.state import StateFormatError, decode_head
from sagastream.core.topology import SagaSpec
from sagastream.errors import SagastreamError
from sagastream.ops import dlq
from sagastream.ops.admin import admin_client
from sagastream.ops.client import headers_of
from sagastream.ops.inspect import summarize
from sagastream.runtime.kafka_io import READ_BATCH, partitions, reader, watermarks
from sagastream.runtime.settings import Settings

log = logging.getLogger(__name__)

# how often the follower asks the broker which topics exist and the changelog's id and
# partitions (a topic created or recreated is noticed within this)
METADATA_EVERY_S = 10.0
# after a failure (no changelog yet, a broker away) the follower tries again after this
RETRY_S = 2.0
POLL_S = 0.5
# how long a changelog partition one record short of its end must stay so to be at its end
SETTLE_S = 1.0
WINDOW_MS = WINDOW_MINUTES * MINUTE_MS


@dataclass(frozen=True)
class Freshness:
    """How far the index has read. `loaded`: every changelog partition has been read to its
    end once since the (re)build, so its counts are whole; `as_of_ms`: the last time every
    partition was at its end; `behind`: records written and not read yet, as the last
    fetches told; `error`: why it cannot read now (None: it can)."""

    loaded: bool
    as_of_ms: int | None
    behind: int
    records: int
    sagas: int
    error: str | None = None
    catch_up_s: float | None = None


@dataclass
class _Letters:
    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, at_ms: int | None) -> None:
        self.count += 1
        if at_ms is not None:
            self.first_ms = at_ms if self.first_ms is None else min(self.first_ms, at_ms)
            self.last_ms = at_ms if self.last_ms is None else max(self.last_ms, at_ms)


class SagaIndex:
    """Saga heads by key, the last hour's outcomes and dead-letter counts, behind one lock.

    `human` names each saga type's human steps (of every version): a saga running one of them
    waits for a person.
    """

    def __init__(self, human: Mapping[str, frozenset[str]]) -> None:
        self.human = dict(human)
        self._lock = threading.Lock()
        self._sagas: dict[bytes, IndexedSaga] = {}
        self._outcomes: deque[Outcome] = deque()
        self._letters: dict[tuple[str, str], _Letters] = {}
        self._records = 0
        self._loaded = False
        self._as_of: int | None = None
        self._behind = 0
        self._error: str | None = None
        # set while the index is whole (read to the changelog's end once) or cannot be read
        self._settled = threading.Event()
        self._catch_up_s: float | None = None

    # ------------------------------------------------------------------ fed by the follower

    def put(self, key: bytes, partition: int, value: bytes | None, written_ms: int) -> None:
        """One changelog record, in offset order: the key's newest state, or its removal."""
        entry = None if value is None else self._entry(key, partition, value, written_ms)
        with self._lock:
            self._records += 1
            if entry is None:
                self._sagas.pop(key, None)
            else:
                self._sagas[key] = entry

    def _entry(
        self, key: bytes, partition: int, value: bytes, written_ms: int
    ) -> IndexedSaga | None:
        try:
            head = decode_head(value)
        except StateFormatError as exc:
            log.error("changelog key %r: %s; not shown", key, exc)
            return None
        human = self.human.get(head.saga, frozenset())
        return summarize(
            key.decode(errors="replace"),
            partition,
            head,
            IndexedSaga,
            updated_ms=written_ms,
            waiting=tuple(step for step in head.running if step in human),
        )

    def outcome(self, outcome: Outcome, now_ms: int) -> None:
        with self._lock:
            self._outcomes.append(outcome)
            self._trim(now_ms)

    def dead_letter(self, topic: str, reason: str, failed_at_ms: int | None) -> None:
        with self._lock:
            self._letters.setdefault((topic, reason), _Letters()).add(failed_at_ms)

    def progress(self, at_end: bool, behind: int, now_ms: int, catch_up_s: float) -> None:
        """Where the follower is: every changelog partition at its end (as of now) or not."""
        with self._lock:
            self._behind = behind
            if at_end:
                self._as_of = now_ms
                if not self._loaded:
                    self._loaded, self._catch_up_s = True, catch_up_s
                    self._settled.set()

    def failed(self, error: str | None) -> None:
        """Why the follower cannot read now (None: it can again)."""
        if error is not None:
            self._settled.set()
        with self._lock:
            self._error = error

    def clear(self) -> None:
        """Forget everything read (a rebuild follows)."""
        with self._lock:
            self._sagas.clear()
            self._outcomes.clear()
            self._letters.clear()
            self._records, self._loaded, self._as_of, self._behind = 0, False, None, 0
            self._catch_up_s = None
            self._settled.clear()

    # ------------------------------------------------------------------ asked by the pages

    def freshness(self, wait_s: float = 0.0) -> Freshness:
        """How far it has read; waiting up to `wait_s` until it is whole or cannot read, so
        that a page shows whole counts once the index can have them (a console just started,
        a rebuild), and says why it cannot read rather than that it is loading."""
        self._settled.wait(wait_s)
        with self._lock:
            return Freshness(
                self._loaded,
                self._as_of,
                self._behind,
                self._records,
                len(self._sagas),
                self._error,
                self._catch_up_s,
            )

    def sagas(self, query: SagaQuery, versions: Mapping[str, int], now_ms: int) -> SagaPage:
        return page_of(self._snapshot(), query, versions, now_ms)

    def overview(self, saga_types: Iterable[str], now_ms: int) -> list[TypeOverview]:
        """Each saga type's numbers over the window (views.overview) from what is held."""
        with self._lock:
            self._trim(now_ms)
            outcomes = list(self._outcomes)
        return overview(saga_types, self._snapshot(), outcomes, now_ms)

    def dead_letters(self) -> list[dlq.Group]:
        """The dead letters read, by topic and reason (as `dlq.group` sorts them)."""
        with self._lock:
            held = sorted(self._letters.items())
        return [dlq.Group(t, r, g.count, g.first_ms, g.last_ms) for (t, r), g in held]

    def _snapshot(self) -> list[IndexedSaga]:
        # a copy: the follower changes the dict while a page reads it
        with self._lock:
            return list(self._sagas.values())

    def _trim(self, now_ms: int) -> None:
        """Drop outcomes older than the window (the lock held)."""
        start = (now_ms // MINUTE_MS - WINDOW_MINUTES + 1) * MINUTE_MS
        while self._outcomes and self._outcomes[0].at_ms < start:
            self._outcomes.popleft()


def human_steps(specs: Iterable[tuple[str, SagaSpec]]) -> dict[str, frozenset[str]]:
    """Each saga type's human steps, over the (saga, definition) pairs given (every version)."""
    found: dict[str, set[str]] = {}
    for saga, spec in specs:
        found.setdefault(saga, set()).update(n for n, step in spec.steps.items() if step.human)
    return {saga: frozenset(steps) for saga, steps in found.items()}


# ---------------------------------------------------------------------------- the follower


@dataclass(frozen=True)
class Topics:
    """The physical topics the follower reads, and how it names them."""

    changelog: str
    outcomes: list[str]
    # physical dead-letter topic -> its logical name
    dead_letters: dict[str, str]


class IndexFollower:
    """The thread that keeps a SagaIndex up to date (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        index: SagaIndex,
        topics: Topics,
        decode: Callable[[bytes], tuple[str | None, dict[str, object] | None]],
        clock: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.index = index
        self.topics = topics
        self.decode = decode
        self.now_ms = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-index", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except (SagastreamError, KafkaException, OSError) as exc:
                log.warning("console index: %s; reading again in %gs", _said(exc), RETRY_S)
                self.index.failed(_said(exc))
                self._stop.wait(RETRY_S)

    def _follow(self) -> None:
        """Build the index from the beginning and tail the topics until a rebuild is due (the
        changelog recreated) or the follower stops."""
        consumer = reader(self.settings, "console-index")
        try:
            partitions(consumer, self.topics.changelog)  # ClusterError naming it if it is missing
            identity = self._identity(admin_client(self.settings))
            self.index.clear()
            self.index.failed(None)
            reading = Reading(self.topics.changelog, identity[1])
            consumer.assign(reading.changelog_partitions())
            started, checked = time.monotonic(), -METADATA_EVERY_S
            while not self._stop.is_set():
                if time.monotonic() - checked >= METADATA_EVERY_S:
                    checked = time.monotonic()
                    if not self._still(identity, consumer, reading):
                        return
                for msg in consumer.consume(READ_BATCH, POLL_S):
                    self._handle(msg, reading)
                behind = reading.settle(consumer)
                self.index.progress(
                    reading.at_end(),
                    behind,
                    self.now_ms(),
                    time.monotonic() - started,
                )
        finally:
            consumer.close()

    def _still(self, identity: tuple[str, int], consumer: Consumer, reading: Reading) -> bool:
        """Whether the changelog is still the one being read (False: rebuild), taking up the
        topics created since. A failure to ask (a broker away, the changelog deleted a moment
        before it is made again) is shown on the pages while the reading goes on.

        Asked through a new admin client each time: a client that was told a topic is unknown
        (deleted, not made again yet) goes on saying so after it is made again."""
        admin = admin_client(self.settings)
        try:
            if self._identity(admin) != identity:
                log.info("console index: %s was recreated or resized; rebuilding", identity)
                return False
            self._take_up(consumer, admin, reading)
        except (SagastreamError, KafkaException) as exc:
            self.index.failed(_said(exc))
            return True
        self.index.failed(None)
        return True

    def _identity(self, admin: AdminClient) -> tuple[str, int]:
        """The changelog's topic id and partition count, asked of the broker now (`admin` is
        kept while its answer is awaited: a client let go cancels it)."""
        topic = self.topics.changelog
        found = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=10)
        return str(found.topic_id), len(found.partitions)

    def _take_up(self, consumer: Consumer, admin: AdminClient, reading: Reading) -> None:
        """Assign the outcome and dead-letter topics that exist and are not read yet: the
        outcomes from the window's start, the dead letters from the beginning."""
        metadata = admin.list_topics(timeout=10).topics
        fresh = [
            t
            for t in (*self.topics.outcomes, *self.topics.dead_letters)
            if t in metadata and t not in reading.taken and metadata[t].partitions
        ]
        if not fresh:
            return
        outcomes = [
            TopicPartition(t, p, self.now_ms() - WINDOW_MS)
            for t in fresh
            if t in self.topics.outcomes
            for p in metadata[t].partitions
        ]
        wanted = window_starts(consumer, outcomes) if outcomes else []
        wanted += [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in fresh
            if t in self.topics.dead_letters
            for p in metadata[t].partitions
        ]
        consumer.incremental_assign(wanted)
        reading.taken.update(fresh)

    def _handle(self, msg: Message, reading: Reading) -> None:
        topic, partition = msg.topic() or "", msg.partition() or 0
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                reading.reached_end(topic, partition, msg.offset() or 0)
            elif err.fatal():
                raise KafkaException(err)
            return
        offset = msg.offset() or 0
        if topic == self.topics.changelog:
            reading.read(partition, offset)
            key = msg.key()
            if key is not None:
                self.index.put(key, partition, msg.value(), msg.timestamp()[1])
        elif topic in self.topics.dead_letters:
            letter = dlq.DeadLetter(
                self.topics.dead_letters[topic],
                partition,
                offset,
                msg.key(),
                msg.value(),
                headers_of(msg),
            )
            self.index.dead_letter(letter.topic, letter.reason, letter.failed_at_ms)
        else:
            self._outcome(msg)

    def _outcome(self, msg: Message) -> None:
        event_type, record = self.decode(msg.value() or b"")
        if event_type is None or record is None:
            return
        at = occurred_ms(record)
        self.index.outcome(Outcome(str(record.get("saga_type", "")), event_type, at), self.now_ms())


def window_starts(consumer: Consumer, outcomes: list[TopicPartition]) -> list[TopicPartition]:
    """Each outcome partition (its offset: the window's start time) from its first record of
    the window; one with none there from its end as it was before the broker was asked that,
    not from OFFSET_END: the consumer resolves OFFSET_END only when it starts fetching, past
    an outcome written in between, which would then never be counted."""
    ends = {
        (tp.topic, tp.partition): watermarks(consumer, tp.topic, tp.partition)[1] for tp in outcomes
    }
    found = consumer.offsets_for_times(outcomes, timeout=10)
    return [
        tp
        if tp.offset >= 0
        else TopicPartition(tp.topic, tp.partition, ends[tp.topic, tp.partition])
        for tp in found
    ]


class Reading:
    """Where the follower is in each changelog partition, and whether it is at its end: told
    by the consumer (a partition end), or, as librdkafka does not always tell it after a
    transaction's closing marker, by a position one short of the high watermark with no record
    for SETTLE_S (what is left is a marker, or a transaction not committed yet: nothing a
    read_committed reader can have)."""

    def __init__(self, changelog: str, count: int) -> None:
        self.changelog = changelog
        self.position = dict.fromkeys(range(count), 0)
        # when each partition's last record was read (none yet: only its end tells)
        self.last_read: dict[int, float] = {}
        self.ended: set[int] = set()
        self.taken: set[str] = set()

    def changelog_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.changelog, p, OFFSET_BEGINNING) for p in self.position]

    def read(self, partition: int, offset: int) -> None:
        self.position[partition] = offset + 1
        self.last_read[partition] = time.monotonic()
        self.ended.discard(partition)

    def reached_end(self, topic: str, partition: int, offset: int) -> None:
        if topic == self.changelog:
            self.position[partition] = max(self.position[partition], offset)
            self.ended.add(partition)

    def at_end(self) -> bool:
        return len(self.ended) == len(self.position)

    def settle(self, consumer: Consumer) -> int:
        """Mark the partitions at their end (see the class docstring); the records not read
        yet in the others, by the watermarks the last fetches brought (no broker request)."""
        left, now = 0, time.monotonic()
        for p in set(self.position) - self.ended:
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(self.changelog, p), cached=True
                )
            except KafkaException:
                continue
            idle = now - self.last_read.get(p, now)
            if high >= 0 and self.position[p] >= high - 1 and idle >= SETTLE_S:
                self.ended.add(p)
            else:
                left += max(0, high - self.position[p])
        return left


def _said(exc: Exception) -> str:
    """An error as a page shows it: librdkafka's own message, not its error object's repr."""
    if isinstance(exc, KafkaException) and isinstance(exc.args[0], KafkaError):
        return f"{exc.args[0].str()} ({exc.args[0].name()})"
    return str(exc)


def occurred_ms(record: Mapping[str, object]) -> int:
    """When an outcome happened: its meta's occurred_at."""
    meta = record.get("meta")
    occurred = meta.get("occurred_at") if isinstance(meta, dict) else None
    if isinstance(occurred, int):
        return occurred
    # fastavro decodes timestamp-millis as an aware datetime
    return int(occurred.timestamp() * 1000) if isinstance(occurred, datetime) else 0
