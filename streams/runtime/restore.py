"""Bringing partition stores up to date from the state changelog before they serve events.

Each store restores from its checkpoint (the changelog offset its states reach) to the end of
the changelog partition, reading committed records only; so restart costs what changed since
the last checkpoint, and an empty data directory rebuilds from the changelog alone.

"The end" is the high watermark, not the last stable offset: while another producer's
transaction is open on the changelog, records committed after its start lie beyond the LSO, and
stopping there would miss them (KAFKA-10167). Restore waits, at most the transaction timeout,
until that transaction ends; its records and control markers are skipped.

A checkpoint is valid only if the changelog still holds it: the same topic (its topic id, kept
with the checkpoint) and an offset between the log start and the high watermark. Otherwise
(topic recreated, records deleted or truncated) the store is wiped and rebuilt.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from sagastream.core.state import decode_state
from sagastream.runtime.kafka_io import AUTHORIZATION_CODES, read_refused
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import TIMERS_HEADER, PartitionStore, timers_of

log = logging.getLogger("sagastream.orchestrator")

BATCH = 20_000
WATERMARK_WAIT_S = 60.0
# what a topic created a moment ago answers until its partitions have leaders
_NOT_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._UNKNOWN_PARTITION,
    }
)


@dataclass(frozen=True)
class Restored:
    partition: int
    records: int
    seconds: float
    from_offset: int | None


def restore(
    settings: Settings,
    topic: str,
    stores: Mapping[int, PartitionStore],
    timeout: float | None = None,
) -> list[Restored]:
    """Replay each partition's changelog from its store's checkpoint to the high watermark.

    Without a timeout it takes as long as the changelog needs (about 35,000 records/s here);
    a topic created a moment ago gets WATERMARK_WAIT_S to show its partitions.
    """
    if not stores:
        return []
    started = time.monotonic()
    consumer = Consumer(
        settings.consumer_config(
            f"{settings.group('orchestrator')}-restore",
            # the end of each partition is what restore waits for: say it at once
            **{"enable.partition.eof": True, "fetch.wait.max.ms": 10},
        )
    )
    deadline = started + timeout if timeout is not None else math.inf
    try:
        admin = AdminClient(settings.librdkafka())
        wait = min(deadline, started + WATERMARK_WAIT_S)
        ends = _ends(admin, topic, sorted(stores), wait)
        topic_id = _topic_id(admin, topic, wait)
        starts: dict[int, int] = {}
        empty: set[int] = set()  # stores with nothing in them: no old state to read
        for partition, store in stores.items():
            checkpoint = _valid_checkpoint(topic, partition, store, ends[partition], topic_id)
            low, high = ends[partition]
            if high > low and (checkpoint is None or checkpoint + 1 < high):
                starts[partition] = OFFSET_BEGINNING if checkpoint is None else checkpoint + 1
                if checkpoint is None:
                    empty.add(partition)
        counts = {p: 0 for p in stores}
        if starts:
            consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
            targets = {p: ends[p][1] for p in starts}
            try:
                _replay(consumer, stores, targets, empty, counts, deadline)
            except KafkaException as exc:
                group = f"{settings.group('orchestrator')}-restore"
                refusal = read_refused(settings, exc.args[0], topic, group, "orchestrator")
                if refusal is None:
                    raise
                raise refusal from None
        took = time.monotonic() - started
        return [Restored(p, counts[p], took, starts.get(p)) for p in stores]
    finally:
        consumer.close()


def _valid_checkpoint(
    topic: str, partition: int, store: PartitionStore, ends: tuple[int, int], topic_id: str
) -> int | None:
    """The store's checkpoint if the changelog still holds it, else None (the store is wiped).

    A store written before topic ids were kept has none: it adopts this topic's id if its
    checkpoint lies in the range, as stores always did.
    """
    checkpoint, low, high = store.checkpoint(), ends[0], ends[1]
    known = store.changelog_id()
    why = None
    if checkpoint is not None and known is not None and known != topic_id:
        why = f"was written from topic id {known}, the changelog is now topic id {topic_id}"
    elif checkpoint is not None and not low <= checkpoint + 1 <= high:
        why = f"is not in the changelog ({low}..{high})"
    if why is not None:
        log.warning(
            "%s[%d]: the store's checkpoint %d %s; rebuilding it from the changelog",
            *(topic, partition, checkpoint, why),
        )
        store.wipe()
        checkpoint = None
    if known != topic_id or why is not None:
        store.set_changelog_id(topic_id)
    return checkpoint


def _ends(
    admin: AdminClient, topic: str, partitions: list[int], deadline: float
) -> dict[int, tuple[int, int]]:
    """Each partition's log start and high watermark (not the LSO: see the module docstring)."""
    low = _retrying(
        topic, deadline, lambda: _offsets(admin, topic, partitions, OffsetSpec.earliest())
    )
    high = _retrying(
        topic, deadline, lambda: _offsets(admin, topic, partitions, OffsetSpec.latest())
    )
    return {p: (low[p], high[p]) for p in partitions}


def _offsets(
    admin: AdminClient, topic: str, partitions: list[int], spec: OffsetSpec
) -> dict[int, int]:
    asked = {TopicPartition(topic, p): spec for p in partitions}
    answers = admin.list_offsets(
        asked, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10
    )
    return {tp.partition: int(f.result().offset) for tp, f in answers.items()}


def _topic_id(admin: AdminClient, topic: str, deadline: float) -> str:
    """The changelog's topic id: a recreated topic of the same name has another."""
    described = _retrying(
        topic,
        deadline,
        lambda: admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(),
    )
    return str(described.topic_id)


def _retrying(topic: str, deadline: float, ask: Any) -> Any:
    """`ask()`, again while a topic created a moment ago has no leaders yet."""
    while True:
        try:
            return ask()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if time.monotonic() > deadline or not (err.retriable() or err.code() in _NOT_YET):
                raise
            log.info("waiting for %s: %s", topic, err)
            time.sleep(0.5)


def _replay(
    consumer: Consumer,
    stores: Mapping[int, PartitionStore],
    ends: Mapping[int, int],
    empty: set[int],
    counts: dict[int, int],
    deadline: float,
) -> None:
    """Apply changelog records in batches, each with the offset it reaches as checkpoint.

    A partition is done once the consumer's end of it reaches `ends` (its high watermark when
    restore began): a read_committed consumer first says "end" at the LSO, which an open
    transaction holds back, and again once that transaction is over.

    The armed timers of a state travel in the record's `timers` header, so restore need not
    parse states; and a store that started empty has no old state to read for a key this
    restore has not written yet.
    """
    open_partitions = set(ends)
    pending: dict[int, dict[bytes, bytes | None]] = {p: {} for p in open_partitions}
    timers: dict[int, dict[bytes, tuple[Mapping[str, int], Mapping[str, int]]]] = {
        p: {} for p in open_partitions
    }
    written: dict[int, set[bytes]] = {p: set() for p in empty}
    last: dict[int, int] = {}

    def flush(partition: int) -> None:
        if pending[partition]:
            stores[partition].apply(pending[partition], last[partition], timers[partition])
            pending[partition], timers[partition] = {}, {}

    while open_partitions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"restoring partitions {sorted(open_partitions)} took too long")
        first = consumer.poll(1.0)
        batch = [] if first is None else [first, *consumer.consume(5000, 0)]
        for msg in batch:
            partition = msg.partition() or 0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    flush(partition)
                    if (msg.offset() or 0) >= ends[partition]:
                        open_partitions.discard(partition)
                elif err.code() in AUTHORIZATION_CODES:
                    raise KafkaException(err)  # restore() names what is missing
                else:
                    log.warning("restore: %s", err)
                continue
            key = msg.key()
            if key is None:
                continue
            value = msg.value()
            known = timers[partition].get(key)
            if known is not None:  # earlier in this batch: the old timers are still its
                before: Mapping[str, int] = known[0]
            elif partition in written and key not in written[partition]:
                before = {}  # the store started empty and this restore has not written it
            else:
                old = stores[partition].get(key)
                before = timers_of(decode_state(old) if old else None)
            timers[partition][key] = (before, _header_timers(msg.headers(), value))
            if partition in written:
                written[partition].add(key)
            pending[partition][key] = value
            last[partition] = msg.offset() or 0
            counts[partition] += 1
            if len(pending[partition]) >= BATCH:
                flush(partition)


def _header_timers(headers: Any, value: bytes | None) -> dict[str, int]:
    """A changelog record's armed timers: from its header, else from the state itself."""
    if value is None:
        return {}
    for name, raw in headers or []:
        if name == TIMERS_HEADER:
            return dict(json.loads(raw))
    return timers_of(decode_state(value))
