"""Bringing partition stores up to date from the state changelog before they serve events.

Each store restores from its checkpoint (the changelog offset its states reach) to the end of
the changelog partition, reading committed records only; so restart costs what changed since
the last checkpoint, and an empty data directory rebuilds from the changelog alone. A checkpoint
the changelog does not have (topic recreated, records deleted) wipes the store first.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from sagastream.core.state import decode_state
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
    """Replay each partition's changelog from its store's checkpoint to the end.

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
        starts: dict[int, int] = {}
        empty: set[int] = set()  # stores with nothing in them: no old state to read
        for partition, store in stores.items():
            low, high = _watermarks(
                consumer,
                TopicPartition(topic, partition),
                min(deadline, started + WATERMARK_WAIT_S),
            )
            checkpoint = store.checkpoint()
            if checkpoint is not None and not (low <= checkpoint + 1 <= high):
                log.warning(
                    "%s[%d]: the store's checkpoint %d is not in the changelog (%d..%d); "
                    "rebuilding it from the changelog",
                    topic,
                    partition,
                    checkpoint,
                    low,
                    high,
                )
                store.wipe()
                checkpoint = None
            start = OFFSET_BEGINNING if checkpoint is None else checkpoint + 1
            if high > 0 and (checkpoint is None or checkpoint + 1 < high):
                starts[partition] = start
                if checkpoint is None:
                    empty.add(partition)
        counts = {p: 0 for p in stores}
        if starts:
            consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
            _replay(consumer, stores, set(starts), empty, counts, deadline)
        took = time.monotonic() - started
        return [Restored(p, counts[p], took, starts.get(p)) for p in stores]
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """The partition's low and high offsets; a topic created a moment ago may need a retry."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if time.monotonic() > deadline or not (err.retriable() or err.code() in _NOT_YET):
                raise
            log.info("waiting for %s[%d]: %s", tp.topic, tp.partition, exc.args[0])
            time.sleep(0.5)


def _replay(
    consumer: Consumer,
    stores: Mapping[int, PartitionStore],
    open_partitions: set[int],
    empty: set[int],
    counts: dict[int, int],
    deadline: float,
) -> None:
    """Apply changelog records in batches, each with the offset it reaches as checkpoint.

    The armed timers of a state travel in the record's `timers` header, so restore need not
    parse states; and a store that started empty has no old state to read for a key this
    restore has not written yet.
    """
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
                    open_partitions.discard(partition)
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
